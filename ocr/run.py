"""What the runners do: build everything from the Hydra config, then fit / test / predict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import nn

from ocr.budget import TimeBudget
from ocr.data.datamodule import ReceiptDataModule
from ocr.lightning_module import DBNetModule
from ocr.models.dbnet import DBNet
from ocr.submission import write_predictions_json, write_submission_csv
from ocr.tracking.artifacts import (
    fetch_model_artifact,
    is_artifact_reference,
    log_predictions_artifact,
    model_reference,
    use_local_checkpoint,
)
from ocr.tracking.callbacks import (
    CheckpointRunInfo,
    PredictionCollector,
    ThroughputMonitor,
    WandbBestSummary,
    WandbEvaluationMedia,
    WandbRunSetup,
)
from ocr.tracking.wandb_setup import active_run, finish_wandb

log = logging.getLogger(__name__)
T = TypeVar("T")

# Parts of the config that define the network's weights: a checkpoint carries them so test
# and predict rebuild the same architecture whatever the command line says.
ARCHITECTURE_KEYS = ("network", "encoder", "decoder", "head")
# How a checkpoint was validated while it trained: test, predict and the benchmarks infer the same
# way (a receipt checkpoint trained at long side 1600 is not scored at the default 640) unless the
# command line names the setting. A preset alone does not count: `checkpoint_path=` is enough.
INFERENCE_KEYS = ("image_size", "datasets.eval_resize", "models.postprocess", "lightning_module.tta_scales")
# a setting that follows another one: `image_size=...` on the command line sizes evaluation too
FOLLOWS = {"datasets.eval_resize.image_size": "image_size"}
_ABSENT = object()


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


def build_loggers(cfg: DictConfig, job_type: str) -> list[Logger]:
    """W&B (``wandb=true``; configs/logger/wandb.yaml) or a local CSV logger."""
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


def tracking_callbacks(cfg: DictConfig, job_type: str, job: dict[str, Any] | None = None) -> list[Callback]:
    """Throughput / gradient norm and run info in checkpoints (training, any logger); with
    ``wandb=true`` also config + system info, best/summary and validation/test media."""
    callbacks: list[Callback] = [ThroughputMonitor(), CheckpointRunInfo()] if job_type == "train" else []
    if not cfg.get("wandb"):
        return callbacks
    options = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    callbacks.append(WandbRunSetup(job={"job_type": job_type, **(job or {})}, watch=options.get("watch") or {}))
    if job_type == "train":
        callbacks.append(WandbBestSummary(monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode))
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


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> L.Trainer:
    options = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    return L.Trainer(callbacks=callbacks, logger=loggers, default_root_dir=cfg.output_dir, **options)


def load_checkpoint_into(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read ``cfg.checkpoint_path``; put its architecture into ``cfg.models`` (the weights
    only fit the network they were trained with) and its inference settings (``INFERENCE_KEYS``)
    into ``cfg`` except those named in ``overrides`` (by default the Hydra command line), and
    return the checkpoint."""
    checkpoint = read_checkpoint(cfg.checkpoint_path)
    run_config = checkpoint.get("ocr_config") or {}
    adopt_architecture(cfg, run_config)
    adopt_inference_settings(cfg, run_config, command_line_keys(overrides))
    return checkpoint


def read_checkpoint(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, or raise FileNotFoundError naming the file and ``what`` it was
    for. ``mmap``: tensors stay on disk until touched (for reading only its config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


def adopt_architecture(cfg: DictConfig, run_config: dict[str, Any]) -> None:
    """Put the checkpoint's network (``ARCHITECTURE_KEYS`` of its resolved ``run_config``) into
    ``cfg.models``: its weights fit only that network, whatever this machine's config resolves to
    (``preset=sroie`` builds a narrower ResNet18 on float32 CPUs)."""
    stored = run_config.get("models", {})
    if stored and "network" not in stored:  # saved before models.network existed: a DBNet
        stored = {**stored, "network": None}
    for key in ARCHITECTURE_KEYS:
        if key in stored:
            current = cfg.models.get(key)
            if (OmegaConf.to_container(current, resolve=True) if isinstance(current, DictConfig) else current) != stored[key]:
                log.info("Using the checkpoint's models.%s settings: %s", key, stored[key])
            with open_dict(cfg.models):
                cfg.models[key] = stored[key]


def command_line_keys(overrides: list[str] | None = None) -> set[str]:
    """The config keys set by ``overrides`` (``key=value``, ``+key=value``...); by default
    the command line of the running Hydra app, none outside one."""
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides}


def _leaves(value: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, f"{prefix}.{key}")]
    return [(prefix, value)]


def _nested(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def adopt_inference_settings(cfg: DictConfig, run_config: dict[str, Any], named: set[str]) -> dict[str, Any]:
    """Put the checkpoint's ``INFERENCE_KEYS`` (from its resolved ``run_config``) into ``cfg``,
    leaf by leaf, except the leaves ``named`` (or under a named key) on the command line;
    returns what changed."""

    def is_named(leaf: str) -> bool:
        keys = [leaf, FOLLOWS.get(leaf, leaf)]
        return any(k == name or k.startswith(name + ".") for k in keys for name in named)

    changed = {}
    for key in INFERENCE_KEYS:
        for leaf, value in _leaves(_nested(run_config, key), key):
            if value is _ABSENT or is_named(leaf):
                continue
            current = OmegaConf.select(cfg, leaf, default=_ABSENT)
            if current is _ABSENT:  # a setting this version no longer has
                continue
            if isinstance(current, (DictConfig, ListConfig)):
                current = OmegaConf.to_container(current, resolve=True)
            if current != value:
                OmegaConf.update(cfg, leaf, value, merge=False)
                changed[leaf] = value
    if changed:
        log.info(
            "Inferring as the checkpoint was validated (name a setting on the command line to change it): %s",
            ", ".join(f"{k}={v}" for k, v in changed.items()),
        )
    return changed


def _checkpoint_callbacks(cfg: DictConfig) -> list[ModelCheckpoint]:
    """The best checkpoint by ``checkpoint.monitor`` (first: the test and predict after fit take
    its ``best_model_path``) and, with ``checkpoint.save_last``, ``last.ckpt``: the state at the
    end of the latest epoch, to resume from.

    ``last.ckpt`` has its own callback because Lightning (>= 2.6) writes ``save_last``'s copy only
    when a top-k checkpoint is written: with ``save_top_k: 1`` it is the best epoch again, and
    ``resume=`` from it would silently repeat every epoch since.
    """
    directory = Path(cfg.output_dir) / "checkpoints"
    best = ModelCheckpoint(
        dirpath=directory,
        # no "=" or "/" in names: easier to pass on the command line
        filename="epoch{epoch:03d}-hmean{val/hmean:.4f}",
        auto_insert_metric_name=False,
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_top_k=cfg.checkpoint.save_top_k,
    )
    if not cfg.checkpoint.save_last:
        return [best]
    # no monitor, one kept: every epoch overwrites it
    latest = ModelCheckpoint(dirpath=directory, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    return [best, latest]


def save_resolved_config(cfg: DictConfig, name: str) -> Path:
    path = Path(cfg.output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path


def _with_loggers(cfg: DictConfig, job_type: str, work: Callable[[list[Logger]], T]) -> T:
    """``work(loggers)`` with this job's loggers; a W&B run is always finished, with exit code 1
    when ``work`` raised (so the run shows as failed, and an offline run's sync command is printed)."""
    loggers = build_loggers(cfg, job_type)
    status = 1
    try:
        result = work(loggers)
        status = 0
        return result
    finally:
        finish_wandb(loggers, exit_code=status)


def train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("resume"):
        # the run goes on with the network it started with, even on another kind of machine;
        # mmap: only the config is read here, Lightning reads the weights and optimizer state
        checkpoint = read_checkpoint(cfg.resume, "checkpoint to resume from", mmap=True)
        adopt_architecture(cfg, checkpoint.get("ocr_config") or {})
    save_resolved_config(cfg, "config.yaml")
    return _with_loggers(cfg, "train", lambda loggers: _train(cfg, loggers))


def _train(cfg: DictConfig, loggers: list[Logger]) -> dict[str, float]:
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    checkpoint_callbacks = _checkpoint_callbacks(cfg)
    checkpoint_callback = checkpoint_callbacks[0]
    callbacks: list[Callback] = [*checkpoint_callbacks, LearningRateMonitor(logging_interval="step"), RichProgressBar()]
    if cfg.get("weight_averaging"):
        callbacks.append(instantiate(cfg.weight_averaging))
    collector = PredictionCollector()
    callbacks.append(collector)
    # when the submission is of the test images, the test pass's detections make it: one pass, not two
    submission_from_test = bool(cfg.get("test_after_fit")) and datamodule.split_paths("predict") == datamodule.split_paths("test")
    budget = cfg.get("time_budget") or {}
    if budget.get("minutes"):
        # the evaluation passes of the best checkpoint after fit run in the same budget
        after_fit = int(bool(cfg.get("test_after_fit"))) + int(bool(cfg.get("predict_after_fit")) and not submission_from_test)
        callbacks.append(TimeBudget(budget.minutes, after_fit, budget.calibration_steps))
    callbacks += tracking_callbacks(cfg, "train")
    trainer = build_trainer(cfg, callbacks, loggers)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    best = checkpoint_callback.best_model_path or None
    if trainer.fast_dev_run:
        best = None  # fast_dev_run saves no checkpoint: evaluate the weights in memory
    score = checkpoint_callback.best_model_score
    log.info("Best checkpoint: %s (%s %s)", best, cfg.checkpoint.monitor, f"{float(score):.4f}" if score is not None else "n/a")
    tested = False
    if cfg.get("test_after_fit"):
        datamodule.setup("test")
        if datamodule.datasets["test"].annotated:
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best)
            metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
            tested = True
        else:
            log.info("Test split has no annotations: skipping scoring")
    if cfg.get("predict_after_fit"):
        if tested and submission_from_test:
            split = "test"
            log.info("The submission is of the test images: written from the test pass's detections")
        else:
            split = "predict"
            trainer.predict(module, datamodule=datamodule, ckpt_path=best, return_predictions=False)
        paths = write_submission(cfg, datamodule, collector.rows, partial=_partial_run(cfg, trainer, split), split=split)
        reference = {"checkpoint_path": str(best) if best else "in-memory weights (fast_dev_run)"}
        _log_predictions(cfg, loggers, paths, collector.rows, "predict", "predict", reference)
    return metrics


def _partial_run(cfg: DictConfig, trainer: L.Trainer, stage: str) -> bool:
    """Whether a test or predict pass saw only some of its images (fast_dev_run, limit_*_batches)."""
    return bool(trainer.fast_dev_run) or cfg.trainer.get(f"limit_{stage}_batches") is not None


def _load_for_evaluation(cfg: DictConfig, loggers: list[Logger]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint of ``cfg.checkpoint_path`` (a file, or ``wandb:<entity>/<project>/<name>:<alias>``
    fetched from W&B) with its architecture put into ``cfg.models``, and what the run records
    about it. With W&B the run is linked to the model artifact it used."""
    run = active_run(loggers) if cfg.get("wandb") else None
    artifact = None
    if is_artifact_reference(cfg.checkpoint_path):
        path, artifact = fetch_model_artifact(str(cfg.checkpoint_path), run, Path(cfg.output_dir) / "artifacts")
        cfg.checkpoint_path = str(path)
    checkpoint = load_checkpoint_into(cfg)
    if run is not None and artifact is None:
        artifact = use_local_checkpoint(run, cfg.checkpoint_path, checkpoint)
    return checkpoint, model_reference(cfg.checkpoint_path, checkpoint, artifact)


def _log_predictions(
    cfg: DictConfig,
    loggers: list[Logger],
    paths: dict[str, Path],
    predictions: list[dict],
    split: str,
    kind: str,
    reference: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    if not cfg.get("wandb"):
        return
    metadata = {
        "split": split,
        "num_images": len(predictions),
        "num_polygons": sum(len(p["polygons"]) for p in predictions),
        "postprocess": OmegaConf.to_container(cfg.models.postprocess, resolve=True),
        "image_size": cfg.image_size,
        "backbone": cfg.models.encoder.model_name,
        **reference,
        **(metrics or {}),
    }
    log_predictions_artifact(active_run(loggers), paths, metadata, kind)


def test(cfg: DictConfig, split: str = "test", job_type: str = "test") -> dict[str, float]:
    """Score a checkpoint on ``split`` (the test split; ``rescore`` uses val). With W&B: its own
    run (job_type ``test``), linked to the model artifact, predictions uploaded as an artifact."""
    return _with_loggers(cfg, job_type, lambda loggers: _test(cfg, loggers, split, job_type))


def _test(cfg: DictConfig, loggers: list[Logger], split: str, job_type: str) -> dict[str, float]:
    checkpoint, reference = _load_for_evaluation(cfg, loggers)
    datamodule = build_datamodule(cfg)
    if split != "test":  # score another split through the test path
        datamodule.prepare_data()
        datamodule.datasets["test"] = datamodule.make_dataset(split)
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    collector = PredictionCollector()
    callbacks = [RichProgressBar(), collector, *tracking_callbacks(cfg, job_type, {"split": split, **reference})]
    trainer = build_trainer(cfg, callbacks, loggers)
    datamodule.setup("test")
    if not datamodule.datasets["test"].annotated:
        image_dir, annotation_path = datamodule.split_paths(split)
        where = f"{image_dir}" + (f" + {annotation_path} (no image has any word)" if annotation_path else " (no annotation file)")
        raise ValueError(f"the {split} split has no annotations to score against: {where}; use runners/predict.py")
    results = trainer.test(module, datamodule=datamodule)
    scores = {k: float(v) for k, v in (results[0] if results else {}).items()}
    run = active_run(loggers) if cfg.get("wandb") else None
    if split != "test" and run is not None:
        # the scores are of `split`: name them so in the summary too (a sweep optimises val/hmean)
        run.summary.update({f"{split}/{k.split('/', 1)[1]}": v for k, v in scores.items() if k.startswith("test/")})
    if cfg.get("save_predictions", True):
        partial = _partial_run(cfg, trainer, "test")
        paths = write_submission(cfg, datamodule, collector.rows, partial=partial, split="test", name=f"{split}_predictions")
        _log_predictions(cfg, loggers, paths, collector.rows, split, job_type, reference, scores)
    return scores


def rescore(cfg: DictConfig) -> dict[str, float]:
    """Re-score one checkpoint on the validation split (``cfg.split``) with the post-processing
    settings of the command line, without retraining: one W&B run (job_type ``rescore``) per call,
    so a W&B sweep can search thresh / box_thresh / unclip ratios / use_polygon."""
    return test(cfg, split=cfg.get("split", "val"), job_type="rescore")


def predict(cfg: DictConfig) -> dict[str, Path]:
    return _with_loggers(cfg, "predict", lambda loggers: _predict(cfg, loggers))


def _predict(cfg: DictConfig, loggers: list[Logger]) -> dict[str, Path]:
    checkpoint, reference = _load_for_evaluation(cfg, loggers)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    collector = PredictionCollector()
    callbacks = [RichProgressBar(), collector, *tracking_callbacks(cfg, "predict", reference)]
    trainer = build_trainer(cfg, callbacks, loggers)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    paths = write_submission(cfg, datamodule, collector.rows, partial=_partial_run(cfg, trainer, "predict"))
    _log_predictions(cfg, loggers, paths, collector.rows, "predict", "predict", reference)
    return paths


def write_submission(
    cfg: DictConfig,
    datamodule: ReceiptDataModule,
    predictions: list[dict],
    partial: bool = False,
    split: str = "predict",
    name: str | None = None,
) -> dict[str, Path]:
    """Write the JSON and the validated CSV of ``predictions`` (one row per image, as
    :class:`PredictionCollector` keeps them) and return their paths; in a distributed run only
    the first process writes. ``partial`` (a fast_dev_run or a limited run) skips the
    every-image-present check, with a warning."""
    expected = [sample.name for sample in datamodule.datasets[split].samples]
    if partial:
        log.warning("Partial prediction run: the submission holds %d of %d images", len(predictions), len(expected))
        expected = None
    folder = Path(cfg.output_dir) / "submissions"
    name = name or cfg.get("submission_name", "submission")
    paths = {"json": folder / f"{name}.json", "csv": folder / f"{name}.csv"}
    if rank_zero_only.rank != 0:  # every process holds all the rows (merged): one writes them
        return paths
    write_predictions_json(paths["json"], predictions)
    write_submission_csv(paths["csv"], predictions, expected_images=expected)
    log.info("Wrote %d predictions: %s and %s", len(predictions), paths["json"], paths["csv"])
    return paths
