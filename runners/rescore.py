"""Command-line entry: `python runners/rescore.py checkpoint_path=... [overrides]` (Hydra;
configs/rescore.yaml). Scores one checkpoint on the validation split with the post-processing
settings given (models.postprocess.*), without retraining; used by configs/sweep/postprocess.yaml."""

import hydra
from omegaconf import DictConfig

from ocr import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="rescore")
def main(cfg: DictConfig) -> None:
    run.rescore(cfg)


if __name__ == "__main__":
    main()
