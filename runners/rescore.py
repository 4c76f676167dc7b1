"""Command-line entry: `python runners/rescore.py checkpoint_path=... [overrides]` (Hydra;
configs/rescore.yaml). Scores one checkpoint on the validation split with the post-processing
settings given (models.postprocess.*), without retraining; used by configs/sweep/postprocess.yaml."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import ocr  # noqa: E402,F401  (applies the torchvision import workaround first)
from ocr import run  # noqa: E402
from ocr.config import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../configs", config_name="rescore")
def main(cfg: DictConfig) -> None:
    run.rescore(cfg)


if __name__ == "__main__":
    main()
