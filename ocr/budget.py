"""A wall-clock budget for training: a slower machine trains fewer epochs, on the same schedule shape.

A recipe measured on one machine (say 48 epochs in 80 minutes) can take hours on a slower one.
Cutting the run off at a deadline (``trainer.max_time``) would stop it mid-schedule, with the
learning rate still high and the last epochs unvalidated. :class:`TimeBudget` instead measures the
seconds per training step and per validation pass as the run goes, and plans the most whole epochs
that fit: ``max_epochs`` is lowered to that, the learning-rate schedule is stretched over the new
total so it still decays to its end, and the last epoch is validated (so the best checkpoint can
come from it). On a machine fast enough for the configured epochs only the last one's
validation can change: it is validated even when it falls off ``check_val_every_n_epoch``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from ocr.optim import optimizer_steps_per_epoch

log = logging.getLogger(__name__)


def validations_between(first_epoch: int, end_epoch: int, val_every: int) -> int:
    """Validation passes in epochs ``first_epoch .. end_epoch - 1`` (0-based) when every
    ``val_every``-th epoch is validated, and the last one always is."""
    if end_epoch <= first_epoch:
        return 0
    periodic = sum(1 for epoch in range(first_epoch, end_epoch) if (epoch + 1) % val_every == 0)
    return periodic + (0 if end_epoch % val_every == 0 else 1)


def plan_epochs(
    *,
    current_epoch: int,
    steps_done: int,
    max_epochs: int,
    steps_per_epoch: int,
    step_seconds: float,
    val_seconds: float,
    val_every: int,
    remaining_seconds: float,
) -> int:
    """The most epochs (at most ``max_epochs``, at least through ``current_epoch``, which has
    started) whose remaining training steps and validation passes fit in ``remaining_seconds``."""
    for epochs in range(max_epochs, current_epoch + 1, -1):
        steps_left = max(epochs * steps_per_epoch - steps_done, 0)
        cost = steps_left * step_seconds + validations_between(current_epoch, epochs, val_every) * val_seconds
        if cost <= remaining_seconds:
            return epochs
    return current_epoch + 1


class TimeBudget(Callback):
    """Plan ``fit`` to end within ``minutes`` of wall-clock time (from the start of ``fit``).

    Args:
        minutes: the budget for ``fit`` and the ``reserve_eval_passes`` after it.
        reserve_eval_passes: evaluation passes that follow ``fit`` in the same command (the test
            of the best checkpoint, and its predict unless the test pass makes the submission), each
            reckoned as long as a validation pass.
        calibration_steps: training steps timed before the first plan. The plan is then revised at
            the start of every epoch, with the times measured so far.

    The seconds per validation pass come from the sanity check (scaled to the whole validation
    set) until a real pass has been timed. Only whole epochs are planned, and at least the epoch
    under way is finished. Schedules built by :func:`ocr.optim.warmup_cosine` are stretched over
    the planned steps; another schedule keeps its length, with a warning.
    """

    def __init__(
        self,
        minutes: float,
        reserve_eval_passes: int = 0,
        calibration_steps: int = 20,
    ) -> None:
        if minutes <= 0:
            raise ValueError(f"time_budget.minutes must be positive, got {minutes}")
        self.budget_seconds = float(minutes) * 60
        self.reserve_eval_passes = int(reserve_eval_passes)
        self.calibration_steps = max(int(calibration_steps), 1)
        self._fit_start = 0.0
        self._train_start = 0.0
        self._first_step = 0
        self._steps_per_epoch = 1
        self._max_epochs: int | None = None  # as configured; None: nothing to plan
        self._val_start = 0.0
        self._val_seconds_total = 0.0
        self._val_passes = 0
        self._sanity_estimate: float | None = None
        self._val_every: int | None = None
        self._planned: int | None = None
        self._warned_schedule = False

    # -- timing -----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._fit_start = time.monotonic()

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.monotonic()

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checked, full = sum(trainer.num_sanity_val_batches), sum(trainer.num_val_batches)
        if checked and math.isfinite(full):
            self._sanity_estimate = (time.monotonic() - self._val_start) / checked * full

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start, self._first_step = time.monotonic(), trainer.global_step
        self._val_every = trainer.check_val_every_n_epoch
        self._max_epochs = trainer.fit_loop.max_epochs
        steps_per_epoch = optimizer_steps_per_epoch(trainer)
        if self._max_epochs is None or self._max_epochs < 1 or steps_per_epoch is None:
            log.warning("Time budget: no epoch count to shorten (max_epochs %s, endless data?); ignored", self._max_epochs)
            self._max_epochs = None
            return
        self._steps_per_epoch = steps_per_epoch
        if trainer.max_steps > 0:
            self._max_epochs = min(self._max_epochs, math.ceil(trainer.max_steps / self._steps_per_epoch))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_seconds_total += time.monotonic() - self._val_start
            self._val_passes += 1

    @property
    def val_seconds(self) -> float:
        """Seconds per validation pass: measured, else estimated from the sanity check, else 0."""
        if self._val_passes:
            return self._val_seconds_total / self._val_passes
        return self._sanity_estimate or 0.0

    # -- planning ---------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step - self._first_step == self.calibration_steps and self._planned is None:
            self._replan(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step - self._first_step >= self.calibration_steps:
            self._replan(trainer)

    def _replan(self, trainer: L.Trainer) -> None:
        if self._max_epochs is None:
            return
        steps_timed = trainer.global_step - self._first_step
        step_seconds = (time.monotonic() - self._train_start - self._val_seconds_total) / max(steps_timed, 1)
        val_seconds = self.val_seconds if trainer.enable_validation else 0.0
        remaining = self.budget_seconds - (time.monotonic() - self._fit_start) - self.reserve_eval_passes * self.val_seconds
        epochs = plan_epochs(
            current_epoch=trainer.current_epoch,
            steps_done=trainer.global_step,
            max_epochs=self._max_epochs,
            steps_per_epoch=self._steps_per_epoch,
            step_seconds=step_seconds,
            val_seconds=val_seconds,
            val_every=self._val_every or 1,  # None: validation by steps, reckoned once per epoch
            remaining_seconds=remaining,
        )
        # every rank must stop at the same epoch
        epochs = int(trainer.strategy.broadcast(epochs, src=0))
        trainer.fit_loop.max_epochs = epochs
        # the last planned epoch is validated even off the check_val_every_n_epoch cadence
        if self._val_every is not None:
            trainer.check_val_every_n_epoch = 1 if trainer.current_epoch == epochs - 1 else self._val_every
        total_steps = epochs * self._steps_per_epoch
        if trainer.max_steps > 0:
            total_steps = min(total_steps, trainer.max_steps)
        self._stretch_schedules(trainer, total_steps)
        if epochs != self._planned:
            log.info(
                "Time budget %.0f min: %.2f s per training step, %.0f s per validation pass%s -> %d of %d epochs "
                "(%d steps), %.0f min of it left",
                self.budget_seconds / 60, step_seconds, val_seconds,
                f" (+{self.reserve_eval_passes} evaluation passes after fit)" if self.reserve_eval_passes else "",
                epochs, self._max_epochs, total_steps, remaining / 60,
            )  # fmt: skip
        self._planned = epochs

    def _stretch_schedules(self, trainer: L.Trainer, total_steps: int) -> None:
        stretched = False
        for config in trainer.lr_scheduler_configs:
            for factor in getattr(config.scheduler, "lr_lambdas", []):
                if hasattr(factor, "total_steps"):
                    factor.total_steps = total_steps
                    stretched = True
        if trainer.lr_scheduler_configs and not stretched and not self._warned_schedule:
            log.warning("Time budget: the learning-rate schedule has no total_steps to re-plan; it keeps its length")
            self._warned_schedule = True
