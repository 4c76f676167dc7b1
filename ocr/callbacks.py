"""Logger-agnostic Lightning callbacks: they log through ``pl_module.log`` (the CSV logger gets
them too) or keep what a run needs to write its outputs.

:class:`ThroughputMonitor` (``train/grad_norm``, ``train/samples_per_sec``, ``train/epoch_time``),
:class:`CheckpointRunInfo` (run id and scores stored in each checkpoint), :class:`PredictionCollector`
(the detections of a test or predict run, merged across processes, for the submission).
W&B-only callbacks are in :mod:`ocr.tracking.callbacks`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ocr.distributed import merge_across_ranks
from ocr.lightning_module import prediction_rows
from ocr.tracking.wandb_setup import find_wandb_logger


def scalar(value: Any) -> float | None:
    """A Python float of a one-element tensor or a number; None otherwise."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu()) if value.numel() == 1 else None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None



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
        metrics = {k: scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
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
    """The detections of a test or predict run, one row per image as
    :func:`ocr.submission.write_submission` writes them. At the end of the run the rows of all processes
    are merged, while the process group is still up, so that every process holds every image (each saw
    only its shard)."""

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
