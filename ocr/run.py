"""The four jobs of the runners (train, test, rescore, predict): each builds its parts from the
Hydra config (:mod:`ocr.factory`), runs them with Lightning and writes its outputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypeVar

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ocr.budget import TimeBudget
from ocr.callbacks import PredictionCollector
from ocr.checkpoints import load_checkpoint_into, load_weights_into, read_architecture_into
from ocr.config import float32_cpu_suggestion, hardware_note
from ocr.data.datamodule import ReceiptDataModule
from ocr.factory import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_module,
    build_tracking_callbacks,
    build_trainer,
)
from ocr.models.batch_norm import frozen_batch_norm_names
from ocr.pretrained import fetch_missing_files
from ocr.render import write_error_analysis
from ocr.submission import check_writable
from ocr.submission import write_submission as write_submission_files
from ocr.tracking.artifacts import (
    fetch_model_artifact,
    is_artifact_reference,
    log_predictions_artifact,
    model_reference,
    use_local_checkpoint,
)
from ocr.tracking.wandb_setup import active_run, finish_wandb
from ocr.validation import validate_settings

__all__ = ["build_datamodule", "build_model", "build_module", "predict", "rescore", "test", "train"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def submission_folder(cfg: DictConfig) -> Path:
    return Path(cfg.output_dir) / "submissions"


def write_submission(
    cfg: DictConfig,
    datamodule: ReceiptDataModule,
    predictions: list[dict],
    partial: bool = False,
    split: str = "predict",
    name: str | None = None,
) -> dict[str, Path]:
    """Write the JSON and the validated CSV of ``predictions`` (one row per image, as
    :class:`PredictionCollector` keeps them) under ``output_dir/submissions`` and return their
    paths; in a distributed run only the first process writes. ``partial`` (a fast_dev_run or a
    limited run) skips the every-image-present check, with a warning."""
    expected = [sample.name for sample in datamodule.datasets[split].samples]
    if partial:
        log.warning("Partial prediction run: the submission holds %d of %d images", len(predictions), len(expected))
        expected = None
    name = name or cfg.get("submission_name", "submission")
    folder = submission_folder(cfg)
    if rank_zero_only.rank != 0:  # every process holds all the rows (merged): one writes them
        return {"json": folder / f"{name}.json", "csv": folder / f"{name}.csv"}
    paths = write_submission_files(folder, name, predictions, expected_images=expected)
    log.info("Wrote %d predictions: %s and %s", len(predictions), paths["json"], paths["csv"])
    return paths


def _partial_run(cfg: DictConfig, trainer: L.Trainer, stage: str) -> bool:
    """Whether a test or predict pass saw only some of its images (fast_dev_run, limit_*_batches)."""
    return bool(trainer.fast_dev_run) or cfg.trainer.get(f"limit_{stage}_batches") is not None


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
    """With W&B: the submission files as a ``predictions-<run id>`` artifact, with what made them."""
    if not cfg.get("wandb"):
        return
    metadata = {
        "split": split,
        "num_images": len(predictions),
        "num_polygons": sum(len(p["polygons"]) for p in predictions),
        "postprocess": OmegaConf.to_container(cfg.models.postprocess, resolve=True),
        "image_size": cfg.image_size,
        "backbone": cfg.models.encoder.get("model_name"),
        **reference,
        **(metrics or {}),
    }
    log_predictions_artifact(active_run(loggers), paths, metadata, kind)


# -- train ------------------------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict[str, float]:
    validate_settings(cfg, "train")
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("resume"):
        # the run goes on with the network it started with; mmap: only the config is read here,
        # Lightning reads the weights and optimizer state
        checkpoint = read_architecture_into(cfg, cfg.resume, "checkpoint to resume from (resume=)")
        continue_wandb_run(cfg, checkpoint)
    start = _weights_to_start_from(cfg) if cfg.get("init_from") else None
    fetch_missing_files(cfg)  # pretrained files the network reads (fetch_if_missing)
    log.info("Hardware: %s", hardware_note(cfg))
    suggestion = float32_cpu_suggestion(cfg)
    if suggestion:
        log.warning("%s", suggestion)
    save_resolved_config(cfg, "config.yaml")
    if cfg.get("predict_after_fit"):
        check_writable(submission_folder(cfg))
    return _with_loggers(cfg, "train", lambda loggers: _train(cfg, loggers, start))


class StartingWeights(NamedTuple):
    """``init_from=``: the checkpoint a fine-tuning run starts from, and its W&B artifact if fetched."""

    path: str
    checkpoint: dict[str, Any]
    artifact: Any | None


def _weights_to_start_from(cfg: DictConfig) -> StartingWeights:
    """``init_from=``: the checkpoint's network put into ``cfg.models`` (its weights fit only that
    network, and the run's config and W&B record must name it) and the checkpoint; the optimizer,
    schedule and epoch start anew."""
    path, artifact = str(cfg.init_from), None
    if is_artifact_reference(path):
        # the run's loggers do not exist yet: the artifact is fetched through W&B's public API and
        # recorded as used once they do
        fetched, artifact = fetch_model_artifact(path, None, Path(cfg.output_dir) / "artifacts")
        path = str(fetched)
    checkpoint = read_architecture_into(cfg, path, "checkpoint to start from (init_from=)")
    epochs = checkpoint.get("epoch", -1) + 1
    log.info("Starting from the weights of %s (trained %d epochs); new optimizer and schedule", path, epochs)
    return StartingWeights(path, checkpoint, artifact)


def _record_starting_model(cfg: DictConfig, loggers: list[Logger], start: StartingWeights) -> None:
    """With W&B: the fine-tuning run used the model it started from (lineage), as test runs do."""
    run = active_run(loggers) if cfg.get("wandb") else None
    if run is None:
        return
    if start.artifact is None:
        use_local_checkpoint(run, start.path, start.checkpoint)
        return
    try:
        run.use_artifact(start.artifact)
    except Exception as error:  # noqa: BLE001  (lineage is a nice-to-have: never fail the run)
        log.warning("W&B: could not record model artifact %s as used: %s", cfg.init_from, error)


def continue_wandb_run(cfg: DictConfig, checkpoint: dict[str, Any]) -> None:
    """With ``wandb=true``, a resumed fit logs into the W&B run that wrote the checkpoint (its id is
    stored in the checkpoint), unless ``logger.wandb.id`` names another."""
    source = (checkpoint.get("tracking") or {}).get("wandb") or {}
    if not cfg.get("wandb") or not source.get("run_id"):
        return
    if cfg.logger.wandb.get("id"):
        if cfg.logger.wandb.id != source["run_id"]:
            log.info("W&B: logging into run %s (logger.wandb.id), not the checkpoint's %s", cfg.logger.wandb.id, source["run_id"])
        return
    cfg.logger.wandb.id = source["run_id"]
    log.info("W&B: resuming run %s, which wrote %s", source.get("run_path") or source["run_id"], cfg.resume)


def _best_checkpoint_callback(callbacks: list[Callback]) -> ModelCheckpoint | None:
    """The checkpoint callback with a monitor: its best checkpoint is tested and predicted after fit."""
    return next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)


def _train(cfg: DictConfig, loggers: list[Logger], start: StartingWeights | None = None) -> dict[str, float]:
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    frozen = frozen_batch_norm_names(module)
    if frozen:
        log.info("%d batch norm layer(s) stay in eval mode in training, on their pretrained statistics "
                 "(models.encoder.freeze_batch_norm): Lightning's warning about modules in eval mode means "
                 "these: %s", len(frozen), ", ".join(frozen[:4]) + (", ..." if len(frozen) > 4 else ""))
    if start:
        load_weights_into(module, start.checkpoint["state_dict"], start.path)
        _record_starting_model(cfg, loggers, start)
    callbacks = build_callbacks(cfg)
    checkpoint_callback = _best_checkpoint_callback(callbacks)
    collector = PredictionCollector()
    callbacks.append(collector)
    # when the submission is of the test images, the test pass's detections make it: one pass, not two
    submission_from_test = bool(cfg.get("test_after_fit")) and datamodule.split_paths("predict") == datamodule.split_paths("test")
    budget = cfg.get("time_budget") or {}
    if budget.get("minutes"):
        # the evaluation passes of the best checkpoint after fit run in the same budget
        after_fit = int(bool(cfg.get("test_after_fit"))) + int(bool(cfg.get("predict_after_fit")) and not submission_from_test)
        callbacks.append(TimeBudget(budget.minutes, after_fit, budget.calibration_steps))
    callbacks += build_tracking_callbacks(cfg, "train")
    trainer = build_trainer(cfg, callbacks, loggers)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    best = checkpoint_callback.best_model_path or None if checkpoint_callback else None
    if trainer.fast_dev_run:
        best = None  # fast_dev_run saves no checkpoint: evaluate the weights in memory
    score = checkpoint_callback.best_model_score if checkpoint_callback else None
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
            # predict covers every image of the folder, test only those its annotation lists
            datamodule.setup("predict")
            names = {sample.name for sample in datamodule.datasets["predict"].samples}
            submission_from_test = names == {sample.name for sample in datamodule.datasets["test"].samples}
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


# -- test, rescore, predict -------------------------------------------------------------------------
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
    fetch_missing_files(cfg)  # the checkpoint's network may read a pretrained file (its structure)
    if run is not None and artifact is None:
        artifact = use_local_checkpoint(run, cfg.checkpoint_path, checkpoint)
    return checkpoint, model_reference(cfg.checkpoint_path, checkpoint, artifact)


def _evaluation_parts(
    cfg: DictConfig, loggers: list[Logger], job_type: str, checkpoint: dict[str, Any], job: dict[str, Any]
) -> tuple[Any, PredictionCollector, L.Trainer]:
    """The module with the checkpoint's weights, a prediction collector and the trainer of an
    evaluation job (callbacks from configs/callbacks/eval.yaml); ``job``: what W&B records of it."""
    module = build_module(cfg)
    load_weights_into(module, checkpoint["state_dict"], cfg.checkpoint_path)
    collector = PredictionCollector()
    callbacks = [*build_callbacks(cfg), collector, *build_tracking_callbacks(cfg, job_type, job)]
    return module, collector, build_trainer(cfg, callbacks, loggers)


def test(cfg: DictConfig, split: str = "test", job_type: str = "test") -> dict[str, float]:
    """Score a checkpoint on ``split`` (the test split; ``rescore`` uses val). With W&B: its own
    run (job_type ``test``), linked to the model artifact, predictions uploaded as an artifact."""
    validate_settings(cfg, job_type)
    return _with_loggers(cfg, job_type, lambda loggers: _test(cfg, loggers, split, job_type))


def _test(cfg: DictConfig, loggers: list[Logger], split: str, job_type: str) -> dict[str, float]:
    checkpoint, reference = _load_for_evaluation(cfg, loggers)
    if cfg.get("save_predictions", True):
        check_writable(submission_folder(cfg))
    datamodule = build_datamodule(cfg)
    if split != "test":  # score another split through the test path
        datamodule.prepare_data()
        datamodule.datasets["test"] = datamodule.make_dataset(split)
    module, collector, trainer = _evaluation_parts(cfg, loggers, job_type, checkpoint, {"split": split, **reference})
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
    validate_settings(cfg, "predict")
    return _with_loggers(cfg, "predict", lambda loggers: _predict(cfg, loggers))


def _predict(cfg: DictConfig, loggers: list[Logger]) -> dict[str, Path]:
    checkpoint, reference = _load_for_evaluation(cfg, loggers)
    check_writable(submission_folder(cfg))
    datamodule = build_datamodule(cfg)
    module, collector, trainer = _evaluation_parts(cfg, loggers, "predict", checkpoint, reference)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    paths = write_submission(cfg, datamodule, collector.rows, partial=_partial_run(cfg, trainer, "predict"))
    _log_predictions(cfg, loggers, paths, collector.rows, "predict", "predict", reference)
    if rank_zero_only.rank == 0:
        paths.update(
            write_error_analysis(
                Path(cfg.output_dir), datamodule.datasets["predict"].samples, collector.rows, instantiate(cfg.metrics),
                render_all=bool(cfg.get("render")), render_worst=int(cfg.get("render_worst") or 0),
                max_side=int(cfg.get("render_max_side") or 0),
            )
        )  # fmt: skip
    return paths
