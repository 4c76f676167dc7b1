"""Lightning callbacks for Weights & Biases; they act only when a W&B run is active, on rank zero.

:class:`WandbRunSetup` (resolved config, system info, parameter count, dataset sizes,
``define_metric``, ``wandb.watch``), :class:`WandbBestSummary` (``best/val_hmean``, ``best/<monitor>``,
``best/epoch``, ``total_training_time``), :class:`WandbHistoryJournal` (history rows a killed process
never uploaded, sent again on resume), :class:`WandbEvaluationMedia` (images with ground truth
and predictions drawn, per-image table). Logger-agnostic callbacks are in :mod:`ocr.callbacks`.
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ocr.callbacks import scalar
from ocr.render import PER_IMAGE_COLUMNS, draw_detections
from ocr.tracking.wandb_setup import active_run, find_wandb_logger, scrub_secrets

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# logged by DBNetModule once per validation epoch: plotted against `epoch`
VAL_METRICS = (
    "val/loss", "val/loss_prob", "val/loss_thresh", "val/loss_binary",
    "val/recall", "val/precision", "val/hmean", "val/iou_recall", "val/iou_precision", "val/iou_hmean",
)  # fmt: skip
TABLE_COLUMNS = PER_IMAGE_COLUMNS  # the per-image table: the same columns as predict's per_image.csv


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


def best_key(metric: str) -> str:
    """The history/summary key of a metric's best value so far: ``val/hmean`` -> ``best/val_hmean``."""
    return "best/" + metric.replace("/", "_")


class WandbBestSummary(Callback):
    """The best values so far, in history and summary: ``best/val_hmean`` under every preset (the
    key sweeps optimise), ``best/<monitor>`` as well when the checkpoint monitor is another metric
    (``best/val_iou_hmean`` under the sroie presets), ``best/epoch`` (the monitor's best epoch), and
    ``total_training_time`` (seconds of ``fit``) in the summary."""

    def __init__(self, monitor: str = "val/hmean", mode: str = "max") -> None:
        self.monitor = monitor
        # metric -> (mode, best so far)
        self.best: dict[str, list] = {"val/hmean": ["max", None], monitor: [mode, None]}
        self.best_epoch: int | None = None
        self._fit_start: float | None = None
        self._trained_before = 0.0  # seconds of fit in the run's earlier parts (resume=)

    def training_time(self) -> float:
        """Seconds of ``fit`` so far, the earlier parts of a resumed run included."""
        running = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self._trained_before + running

    # kept in checkpoints: a resumed run carries its best values and training time on
    def state_dict(self) -> dict[str, Any]:
        return {
            "best": {k: list(v) for k, v in self.best.items()},
            "best_epoch": self.best_epoch,
            "training_time": self.training_time(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for metric, (_mode, best) in (state_dict.get("best") or {}).items():
            if metric in self.best:
                self.best[metric][1] = best
        self.best_epoch = state_dict.get("best_epoch")
        self._trained_before = float(state_dict.get("training_time") or 0.0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    @_never_fail("logging the best score")
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        run = active_run(trainer.loggers)
        if run is None:
            return
        logger = find_wandb_logger(trainer.loggers)
        record: dict[str, Any] = {}
        for metric, state in self.best.items():
            mode, best = state
            value = scalar(trainer.callback_metrics.get(metric))
            if value is None:
                continue
            if best is None or (value > best if mode == "max" else value < best):
                state[1] = value
                if metric == self.monitor:
                    self.best_epoch = trainer.current_epoch
            record[best_key(metric)] = state[1]
        if not record:
            return
        record["best/epoch"] = self.best_epoch
        history = {key: value for key, value in record.items() if value is not None}
        # through the logger where there is one: the row is journaled with the others (WandbHistoryJournal)
        if logger is not None:
            logger.log_metrics({**history, "epoch": trainer.current_epoch}, step=trainer.global_step)
        else:
            run.log({**history, "epoch": trainer.current_epoch})
        run.summary.update(record)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run = active_run(trainer.loggers)
        if run is not None and self._fit_start is not None:
            run.summary["total_training_time"] = self.training_time()


class WandbHistoryJournal(Callback):
    """History that survives kill -9. W&B uploads history every few seconds, so a killed process
    loses its last rows, and on resume the server's history ends before the checkpoint. Checkpoints
    keep the latest scalar rows the logger sent (``TrackedWandbLogger.journal``, with their W&B
    steps); when a resumed run starts, the rows at or after the server's history length are sent
    again at their own steps, in order, before training goes on. Rows the server has are not sent
    twice; a run the server never saw (offline) sends nothing."""

    def __init__(self) -> None:
        self._logger: Any = None
        self._restored: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._logger = find_wandb_logger(trainer.loggers)

    def state_dict(self) -> dict[str, Any]:
        run = getattr(self._logger, "_experiment", None)
        return {"run_id": getattr(run, "id", None), "rows": list(getattr(self._logger, "journal", None) or [])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    @_never_fail("re-sending history")
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restored, self._restored = self._restored, {}
        rows = [list(entry) for entry in restored.get("rows") or []]
        run = active_run(trainer.loggers)
        # only into the run that logged them (resume= continues it unless logger.wandb.id names another)
        if run is None or not rows or getattr(run, "id", None) != restored.get("run_id"):
            return
        if self._logger is not None:  # this part's checkpoints keep the earlier part's rows too
            self._logger.journal = rows + self._logger.journal
        if getattr(run.settings, "_offline", False):
            return
        server_rows = int(run.step)  # a resumed run starts at the server's history length
        missing = [(step, row) for step, row in rows if step >= server_rows]
        for step, row in missing:
            run.log(row, step=step)
        if missing:
            log.info("W&B: sent %d history rows (steps %d-%d) the interrupted run had not uploaded",
                     len(missing), missing[0][0], missing[-1][0])  # fmt: skip


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
