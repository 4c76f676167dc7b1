"""Command-line entry: `python runners/predict.py [overrides]` (Hydra; configs/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from ocr import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run.predict(cfg)


if __name__ == "__main__":
    main()
