"""Lightning callbacks for experiment tracking.

Logger-agnostic (they log through ``pl_module.log``, so the CSV logger gets them too):
:class:`ThroughputMonitor` (``train/grad_norm``, ``train/samples_per_sec``, ``train/epoch_time``),
:class:`CheckpointRunInfo` (run id and scores stored in each checkpoint).

W&B-specific (they act only when a W&B run is active, on rank zero): :class:`WandbRunSetup`
(resolved config, system info, parameter count, dataset sizes, ``define_metric``, ``wandb.watch``),
:class:`WandbBestSummary` (``best/val_hmean``, ``best/epoch``, ``total_training_time``),
:class:`WandbEvaluationMedia` (images with ground truth and predictions drawn, per-image table).
:class:`PredictionCollector` keeps the detections of a test or predict run, merged across processes,
so they can be written and uploaded.
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ocr.distributed import merge_across_ranks
from ocr.lightning_module import prediction_rows
from ocr.tracking.wandb_setup import active_run, find_wandb_logger, scrub_secrets

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# logged by DBNetModule once per validation epoch: plotted against `epoch`
VAL_METRICS = (
    "val/loss", "val/loss_prob", "val/loss_thresh", "val/loss_binary",
    "val/recall", "val/precision", "val/hmean", "val/iou_recall", "val/iou_precision", "val/iou_hmean",
)  # fmt: skip
TABLE_COLUMNS = (
    "image", "hmean", "recall", "precision", "iou_hmean", "iou_recall", "iou_precision",
    "num_gt", "num_det", "num_matched_iou", "num_merged", "num_split", "num_missed", "num_loose", "num_background",
)  # fmt: skip
GT_COLOUR, IGNORED_COLOUR, PRED_COLOUR = (0, 200, 0), (150, 150, 150), (230, 0, 0)


# -- system information ---------------------------------------------------------------------------
def git_info(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the source tree (read only: no index refresh is written)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(root), *args],
                capture_output=True, text=True, timeout=10, check=True, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = git("status", "--porcelain")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def system_info() -> dict[str, Any]:
    import lightning
    import timm

    try:
        import wandb

        wandb_version = wandb.__version__
    except ImportError:
        wandb_version = None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "wandb": wandb_version,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpu_count": __import__("os").cpu_count(),
    }
    info.update(git_info())
    return info


def dataset_sizes(trainer: L.Trainer) -> dict[str, int]:
    datasets = getattr(trainer.datamodule, "datasets", None) or {}
    return {split: len(dataset) for split, dataset in datasets.items()}


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu()) if value.numel() == 1 else None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None


def _never_fail(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """W&B extras must not stop training: a failure is logged as a warning."""

    def decorate(function: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            try:
                function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001
                log.warning("W&B: %s failed (%s: %s); training goes on", what, type(error).__name__, error, exc_info=True)

        return wrapper

    return decorate


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


# -- logger-agnostic ------------------------------------------------------------------------------
class ThroughputMonitor(Callback):
    """``train/grad_norm`` (total 2-norm of the gradients before clipping, unscaled under AMP),
    ``train/samples_per_sec`` (all processes, data loading included, averaged over the last
    ``log_every_n_steps`` steps) and ``train/epoch_time`` (seconds of a training epoch, its
    validation excluded)."""

    def __init__(self, window: int | None = None) -> None:
        self.window = window
        self._steps: deque[tuple[int, float]] = deque()
        self._last: float | None = None
        self._epoch_start: float | None = None
        self._epoch_time: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last = time.perf_counter()
        self._epoch_time = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            size = int(batch["image"].shape[0]) if isinstance(batch, dict) and "image" in batch else 0
            self._steps.append((size * trainer.world_size, now - self._last))
            window = self.window or max(1, trainer.log_every_n_steps)
            while len(self._steps) > window:
                self._steps.popleft()
            seconds = sum(s for _, s in self._steps)
            if seconds > 0:
                pl_module.log("train/samples_per_sec", sum(n for n, _ in self._steps) / seconds, on_step=True, on_epoch=False)
        self._last = now

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation inside fit runs at the end of the training epoch: stop the clock there
        in_fit = trainer.state.fn == "fit" and not trainer.sanity_checking
        if in_fit and self._epoch_start is not None and self._epoch_time is None:
            self._epoch_time = time.perf_counter() - self._epoch_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is None:
            return
        seconds = self._epoch_time if self._epoch_time is not None else time.perf_counter() - self._epoch_start
        pl_module.log("train/epoch_time", seconds, on_step=False, on_epoch=True)


class CheckpointRunInfo(Callback):
    """Store in every checkpoint the scores it was saved with and the W&B run that wrote it
    (``checkpoint["tracking"]``): model artifacts take their metadata from it, and test/predict use
    it to link a local checkpoint to the run and artifact it came from."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        info: dict[str, Any] = {"metrics": {k: v for k, v in metrics.items() if v is not None}, "wandb": None}
        logger = find_wandb_logger(trainer.loggers)
        run = logger._experiment if logger is not None and not getattr(logger, "is_disabled", False) else None
        if run is not None and getattr(run, "id", None):
            info["wandb"] = {
                "run_id": run.id,
                "project": run.project,
                "entity": run.entity or None,
                "run_path": "/".join(p for p in (run.entity, run.project, run.id) if p),
                "artifact": logger._checkpoint_name or f"model-{run.id}",
                "offline": bool(getattr(run.settings, "_offline", False)),
            }
        checkpoint["tracking"] = info


class PredictionCollector(Callback):
    """The detections of a test or predict run, one row per image as :func:`ocr.run.write_submission`
    writes them. At the end of the run the rows of all processes are merged, while the process
    group is still up, so that every process holds every image (each saw only its shard)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def _merge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = sorted(merge_across_ranks(self.rows, "name"), key=lambda row: row["name"])

    on_test_epoch_start = on_predict_epoch_start = _start
    on_test_epoch_end = on_predict_epoch_end = _merge

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if outputs:  # the module's Detections
            self.rows += prediction_rows(batch, outputs)

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if outputs:  # predict_step's rows
            self.rows += outputs


# -- W&B ------------------------------------------------------------------------------------------
class WandbRunSetup(Callback):
    """At the start of fit / test / predict: the fully resolved run config (secrets removed), system
    information, parameter counts and dataset sizes into the run config; ``define_metric`` so
    validation metrics plot against ``epoch`` and the summary keeps the max of ``val/hmean``;
    optionally ``wandb.watch``."""

    def __init__(self, job: dict[str, Any] | None = None, watch: dict[str, Any] | None = None) -> None:
        self.job = dict(job or {})
        self.watch = dict(watch or {})
        self._configured = False
        self._watching = False

    @_never_fail("logging the run config")
    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run = active_run(trainer.loggers)
        if run is None:
            return
        sizes = dataset_sizes(trainer)
        if not self._configured:
            self._configured = True
            config = dict(scrub_secrets(getattr(pl_module, "run_config", None) or {}))
            config["system"] = system_info()
            config["num_params"] = sum(p.numel() for p in pl_module.parameters())
            config["num_trainable_params"] = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
            config["job"] = scrub_secrets(self.job)
            run.config.update(config, allow_val_change=True)
            define_metrics(run)
        if sizes:
            run.config.update({"dataset_sizes": sizes}, allow_val_change=True)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)
        log_kind = self.watch.get("log")
        if log_kind and not self._watching and active_run(trainer.loggers) is not None:
            self._watching = True
            find_wandb_logger(trainer.loggers).watch(
                pl_module.model,
                log=str(log_kind),
                log_freq=int(self.watch.get("log_freq", 100)),
                log_graph=bool(self.watch.get("log_graph", False)),
            )

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)


def define_metrics(run: Any) -> None:
    """Validation metrics, media and epoch times against ``epoch``; summaries: max of
    ``val/hmean`` and ``val/iou_hmean``, min of ``val/loss``."""
    run.define_metric("epoch", hidden=False)
    run.define_metric("val/*", step_metric="epoch")
    for name in VAL_METRICS + ("val/examples", "val/per_image", "train/epoch_time"):
        run.define_metric(name, step_metric="epoch")
    run.define_metric("val/hmean", step_metric="epoch", summary="max,last")
    run.define_metric("val/iou_hmean", step_metric="epoch", summary="max,last")
    run.define_metric("val/loss", step_metric="epoch", summary="min,last")
    run.define_metric("best/*", step_metric="epoch")


class WandbBestSummary(Callback):
    """``best/val_hmean`` and ``best/epoch`` (history and summary: a sweep can optimise
    ``best/val_hmean``), ``total_training_time`` (seconds of ``fit``) in the run summary."""

    def __init__(self, monitor: str = "val/hmean", mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._fit_start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    @_never_fail("logging the best score")
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = _scalar(trainer.callback_metrics.get(self.monitor))
        run = active_run(trainer.loggers)
        if value is None or run is None:
            return
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.best_epoch = value, trainer.current_epoch
        key = "best/" + self.monitor.replace("/", "_")
        run.log({key: self.best, "best/epoch": self.best_epoch, "epoch": trainer.current_epoch})
        run.summary[key] = self.best
        run.summary["best/epoch"] = self.best_epoch

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run = active_run(trainer.loggers)
        if run is not None and self._fit_start is not None:
            run.summary["total_training_time"] = time.perf_counter() - self._fit_start


def draw_detections(
    image_path: str | Path,
    gt_polygons: list[np.ndarray],
    gt_ignore: Any,
    det_polygons: list[np.ndarray],
    max_side: int = 1024,
) -> Any:
    """The stored image (the frame the polygons are in) with ground truth in green (don't-care in
    grey) and predictions in red, scaled so its long side is at most ``max_side``."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as image:
        canvas = image.convert("RGB")
    scale = min(1.0, float(max_side) / max(canvas.size)) if max_side else 1.0
    if scale < 1.0:
        canvas = canvas.resize((max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale))))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 500))
    ignore = np.zeros(len(gt_polygons), bool) if gt_ignore is None else np.asarray(gt_ignore, bool).reshape(-1)

    def outline(polygon: np.ndarray, colour: tuple[int, int, int]) -> None:
        points = [(float(x) * scale, float(y) * scale) for x, y in np.asarray(polygon, float).reshape(-1, 2)]
        if len(points) >= 3:
            draw.polygon(points, outline=colour, width=width)

    for polygon, ignored in zip(gt_polygons, list(ignore) + [False] * (len(gt_polygons) - len(ignore))):
        outline(polygon, IGNORED_COLOUR if ignored else GT_COLOUR)
    for polygon in det_polygons:
        outline(polygon, PRED_COLOUR)
    return canvas


class WandbEvaluationMedia(Callback):
    """Each validation epoch (and once for a test run): ``num_images`` images (the first ones of
    the split, the same every epoch) with ground truth (green) and predictions (red) as
    ``<stage>/examples``, and a ``wandb.Table`` ``<stage>/per_image`` of per-image recall,
    precision, hmean and box counts for every scored image, worst first."""

    def __init__(self, num_images: int = 8, max_side: int = 1024, table: bool = True, test_prefix: str = "test") -> None:
        self.test_prefix = test_prefix  # rescore scores the val split through the test loop: "val"
        self.num_images = int(num_images)
        self.max_side = int(max_side)
        self.table = bool(table)
        self._samples: list[tuple[str, list[np.ndarray], Any, list[np.ndarray]]] = []

    def _reset(self, trainer: L.Trainer, *_: Any) -> None:
        self._samples = []

    on_validation_epoch_start = _reset
    on_test_epoch_start = _reset

    def _collect(self, trainer: L.Trainer, outputs: Any, batch: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not outputs or "gt_polygons" not in batch:
            return
        for name, gts, ignore, found in zip(batch["name"], batch["gt_polygons"], batch["gt_ignore"], outputs):
            if len(self._samples) >= self.num_images:
                return
            self._samples.append((name, list(gts), ignore, list(found.polygons)))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(trainer, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(trainer, outputs, batch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val", "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, self.test_prefix, "test")

    @_never_fail("logging evaluation media")
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, split: str) -> None:
        run = active_run(trainer.loggers)
        if run is None:
            return
        import wandb

        rows = pl_module.evaluator.per_image() if getattr(pl_module, "evaluator", None) is not None else []
        by_id = {row["image_id"]: row for row in rows}
        data: dict[str, Any] = {}
        dataset = (getattr(trainer.datamodule, "datasets", None) or {}).get(split)
        paths = {sample.name: sample.image_path for sample in dataset.samples} if dataset is not None else {}
        images = []
        for name, gts, ignore, found in self._samples:
            if name not in paths:
                continue
            try:
                picture = draw_detections(paths[name], gts, ignore, found, self.max_side)
            except OSError as error:
                log.warning("W&B media: cannot draw %s: %s", name, error)
                continue
            row = by_id.get(name, {})
            score = row.get("hmean", float("nan"))
            caption = f"{name}: hmean {score:.3f}, GT {len(gts)}, predicted {len(found)} (green GT, red predictions)"
            images.append(wandb.Image(picture, caption=caption))
        if images:
            data[f"{stage}/examples"] = images
        if self.table and rows:
            table = wandb.Table(columns=list(TABLE_COLUMNS))
            for row in rows:  # per_image() is worst first
                table.add_data(str(row["image_id"]), *(_plain(row.get(column)) for column in TABLE_COLUMNS[1:]))
            data[f"{stage}/per_image"] = table
        if data:
            data.update({"epoch": trainer.current_epoch})
            run.log(data)
        self._samples = []
