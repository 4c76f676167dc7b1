"""Everything a run is made of, built from its Hydra config: the network, the LightningModule,
the data, the callbacks, the loggers and the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ocr.config import register_resolvers
from ocr.data.datamodule import ReceiptDataModule
from ocr.lightning_module import DBNetModule
from ocr.models.dbnet import DBNet

register_resolvers()  # the configs' ${multiple_of_32:...} and the like, before any is composed


def build_model(models_cfg: DictConfig) -> nn.Module:
    """``models.network``, a whole detector (e.g. ``ocr.models.ppocr.PPOCRDetector``), when set;
    otherwise a DBNet from ``models.encoder``/``decoder``/``head``."""
    if models_cfg.get("network") is not None:
        return instantiate(models_cfg.network)
    encoder = instantiate(models_cfg.encoder)
    return DBNet(encoder, instantiate(models_cfg.decoder), instantiate(models_cfg.head))


def build_module(cfg: DictConfig) -> DBNetModule:
    # instantiate() would turn dataclass arguments into configs: build a partial, then call it
    module = instantiate(cfg.lightning_module, _partial_=True)(
        model=build_model(cfg.models),
        loss=instantiate(cfg.models.loss),
        postprocess=instantiate(cfg.models.postprocess),
        optimizer=instantiate(cfg.models.optimizer),
        scheduler=instantiate(cfg.models.scheduler) if cfg.models.get("scheduler") else None,
        evaluator=instantiate(cfg.metrics),
    )
    # set after instantiate(): the config's own _target_ entries must not be instantiated
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def build_datamodule(cfg: DictConfig) -> ReceiptDataModule:
    return instantiate(cfg.datasets, _recursive_=True, _convert_="all")


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The config's ``callbacks`` (configs/callbacks/), in order; null entries are left out."""
    return [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec is not None]


def build_tracking_callbacks(cfg: DictConfig, job_type: str, job: dict[str, Any] | None = None) -> list[Callback]:
    """With ``wandb=true``: config + system info, best/summary (training) and validation/test media
    (configs/logger/wandb.yaml); none otherwise."""
    if not cfg.get("wandb"):
        return []
    from ocr.tracking.callbacks import WandbBestSummary, WandbEvaluationMedia, WandbHistoryJournal, WandbRunSetup

    options = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    callbacks: list[Callback] = [WandbRunSetup(job={"job_type": job_type, **(job or {})}, watch=options.get("watch") or {})]
    if job_type == "train":
        callbacks.append(WandbBestSummary(monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode))
        callbacks.append(WandbHistoryJournal())
    media = options.get("media") or {}
    if job_type in ("train", "test", "rescore"):
        callbacks.append(
            WandbEvaluationMedia(
                num_images=media.get("num_images", 8),
                max_side=media.get("max_side", 1024),
                table=media.get("table", True),
                test_prefix=str((job or {}).get("split", "test")),
            )
        )
    return callbacks


def build_loggers(cfg: DictConfig, job_type: str) -> list[Logger]:
    """W&B (``wandb=true``; configs/logger/wandb.yaml) or a local CSV logger under ``output_dir/logs``."""
    output_dir = Path(cfg.output_dir)
    if cfg.get("wandb"):
        from ocr.tracking.wandb_setup import build_wandb_logger

        options = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
        return [build_wandb_logger(options, job_type, save_dir=options.get("save_dir") or output_dir)]
    version = job_type
    if job_type == "train" and cfg.get("resume"):
        # CSVLogger deletes the metrics.csv it finds: a resumed run writes beside the first part's
        resumed = 1
        while (output_dir / "logs" / f"train-resumed-{resumed}").exists():
            resumed += 1
        version = f"train-resumed-{resumed}"
    return [CSVLogger(save_dir=str(output_dir), name="logs", version=version)]


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> L.Trainer:
    options = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    return L.Trainer(callbacks=callbacks, logger=loggers, default_root_dir=cfg.output_dir, **options)
