"""Command-line entry: `python runners/train.py [overrides]` (Hydra; configs/train.yaml)."""

import hydra
from omegaconf import DictConfig

from ocr import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run.train(cfg)


if __name__ == "__main__":
    main()
