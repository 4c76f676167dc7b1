"""Command-line entry: `python runners/test.py [overrides]` (Hydra; configs/test.yaml)."""

import hydra
from omegaconf import DictConfig

from ocr import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="test")
def main(cfg: DictConfig) -> None:
    run.test(cfg)


if __name__ == "__main__":
    main()
