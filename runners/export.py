"""Command-line entry: `python runners/export.py checkpoint_path=... [output=...]` (Hydra; configs/export.yaml).

Writes the checkpoint's network as an ONNX model (uint8 RGB in, text probabilities out) and its JSON
sidecar (sizing, post-processing, provenance): ocr/export.py."""

import hydra
from omegaconf import DictConfig

from ocr import export


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    export.export(cfg)


if __name__ == "__main__":
    main()
