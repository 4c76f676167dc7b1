"""Command-line entry: `python runners/test.py [overrides]` (Hydra; configs/test.yaml)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import ocr  # noqa: E402,F401  (applies the torchvision import workaround first)
from ocr import run  # noqa: E402
from ocr.config import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../configs", config_name="test")
def main(cfg: DictConfig) -> None:
    run.test(cfg)


if __name__ == "__main__":
    main()
