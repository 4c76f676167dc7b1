"""What the runners do: build everything from the Hydra config, then fit / test / predict."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from ocr.data.datamodule import ReceiptDataModule
from ocr.lightning_module import DBNetModule
from ocr.models.dbnet import DBNet
from ocr.submission import write_predictions_json, write_submission_csv

log = logging.getLogger(__name__)

# Parts of the config that define the network's weights: a checkpoint carries them so test
# and predict rebuild the same architecture whatever the command line says.
ARCHITECTURE_KEYS = ("encoder", "decoder", "head")


def build_model(models_cfg: DictConfig) -> DBNet:
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


def build_loggers(cfg: DictConfig, job_type: str) -> list[Logger]:
    output_dir = Path(cfg.output_dir)
    if cfg.get("wandb"):
        from lightning.pytorch.loggers import WandbLogger

        options = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
        mode = options.pop("mode", None)
        if mode:
            os.environ["WANDB_MODE"] = str(mode)
        return [WandbLogger(save_dir=str(output_dir), job_type=job_type, **options)]
    return [CSVLogger(save_dir=str(output_dir), name="logs", version=job_type)]


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> L.Trainer:
    options = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    return L.Trainer(callbacks=callbacks, logger=loggers, default_root_dir=cfg.output_dir, **options)


def load_checkpoint_into(cfg: DictConfig) -> dict[str, Any]:
    """Read ``cfg.checkpoint_path``; put its architecture into ``cfg.models`` (the weights
    only fit the network they were trained with) and return the checkpoint."""
    path = Path(cfg.checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    stored = (checkpoint.get("ocr_config") or {}).get("models", {})
    for key in ARCHITECTURE_KEYS:
        if key in stored:
            if OmegaConf.to_container(cfg.models[key], resolve=True) != stored[key]:
                log.info("Using the checkpoint's models.%s settings: %s", key, stored[key])
            cfg.models[key] = stored[key]
    return checkpoint


def _checkpoint_callback(cfg: DictConfig) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=Path(cfg.output_dir) / "checkpoints",
        # no "=" or "/" in names: easier to pass on the command line
        filename="epoch{epoch:03d}-hmean{val/hmean:.4f}",
        auto_insert_metric_name=False,
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_top_k=cfg.checkpoint.save_top_k,
        save_last=cfg.checkpoint.save_last,
    )


def save_resolved_config(cfg: DictConfig, name: str) -> Path:
    path = Path(cfg.output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path


def train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    save_resolved_config(cfg, "config.yaml")
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    checkpoint_callback = _checkpoint_callback(cfg)
    callbacks: list[Callback] = [checkpoint_callback, LearningRateMonitor(logging_interval="step"), RichProgressBar()]
    trainer = build_trainer(cfg, callbacks, build_loggers(cfg, "train"))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    best = checkpoint_callback.best_model_path or None
    if trainer.fast_dev_run:
        best = None  # fast_dev_run saves no checkpoint: evaluate the weights in memory
    log.info("Best checkpoint: %s (val/hmean %s)", best, checkpoint_callback.best_model_score)
    if cfg.get("test_after_fit"):
        datamodule.setup("test")
        if datamodule.datasets["test"].annotated:
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best)
            metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
        else:
            log.info("Test split has no annotations: skipping scoring")
    if cfg.get("predict_after_fit"):
        predictions = trainer.predict(module, datamodule=datamodule, ckpt_path=best)
        write_submission(cfg, datamodule, predictions, partial=bool(trainer.fast_dev_run))
    return metrics


def test(cfg: DictConfig) -> dict[str, float]:
    checkpoint = load_checkpoint_into(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = build_trainer(cfg, [RichProgressBar()], build_loggers(cfg, "test"))
    datamodule.setup("test")
    if not datamodule.datasets["test"].annotated:
        raise ValueError("the test split has no annotations to score against; use runners/predict.py")
    results = trainer.test(module, datamodule=datamodule)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def predict(cfg: DictConfig) -> dict[str, Path]:
    checkpoint = load_checkpoint_into(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = build_trainer(cfg, [RichProgressBar()], build_loggers(cfg, "predict"))
    predictions = trainer.predict(module, datamodule=datamodule)
    partial = bool(trainer.fast_dev_run) or cfg.trainer.get("limit_predict_batches") is not None
    return write_submission(cfg, datamodule, predictions, partial=partial)


def write_submission(
    cfg: DictConfig, datamodule: ReceiptDataModule, batches: list[list[dict]], partial: bool = False
) -> dict[str, Path]:
    """Write the JSON and the validated CSV. ``partial`` (a fast_dev_run or a limited run)
    skips the every-image-present check, with a warning."""
    predictions = [item for batch in batches for item in batch]
    expected = [sample.name for sample in datamodule.datasets["predict"].samples]
    if partial:
        log.warning("Partial prediction run: the submission holds %d of %d images", len(predictions), len(expected))
        expected = None
    folder = Path(cfg.output_dir) / "submissions"
    name = cfg.get("submission_name", "submission")
    paths = {
        "json": write_predictions_json(folder / f"{name}.json", predictions),
        "csv": write_submission_csv(folder / f"{name}.csv", predictions, expected_images=expected),
    }
    log.info("Wrote %d predictions: %s and %s", len(predictions), paths["json"], paths["csv"])
    return paths
