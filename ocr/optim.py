"""Learning-rate schedules that need the run's total step count."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class WarmupCosine:
    """The lr factor at a step: linear warm-up for ``warmup_steps``, then cosine decay to
    ``min_lr_ratio`` at ``total_steps``. With ``start_step`` > 0 the factor is 0 until that step
    and the warm-up starts there, under the same cosine as a group that started at step 0 (a
    pretrained encoder held still while a new head learns).

    A callable object rather than a closure: ``LambdaLR`` saves its attributes in checkpoints, and
    :class:`ocr.budget.TimeBudget` may set ``total_steps`` during a run (the schedule then still
    decays to its end when the run is shortened).
    """

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    start_step: int = 0

    def __call__(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        total_steps = max(int(self.total_steps), 1)
        warmup_steps = min(int(self.warmup_steps), total_steps - 1) if total_steps > 1 else 0
        since_start = step - int(self.start_step)
        ramp = (since_start + 1) / warmup_steps if since_start < warmup_steps else 1.0
        progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
        return ramp * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_steps_per_epoch(trainer: Any) -> int | None:
    """Optimizer steps in one training epoch of a Lightning trainer whose training data is set up
    (its batches over gradient accumulation); None when the data has no length (endless)."""
    batches = trainer.num_training_batches
    return math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.01,
    start_steps: list[int] | None = None,
):
    """Linear warm-up for ``warmup_steps`` then cosine decay to ``min_lr_ratio`` x the base lr.
    ``start_steps``: one per parameter group, the step before which that group's lr is 0."""
    if start_steps is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(int(total_steps), warmup_steps, min_lr_ratio))
    if len(start_steps) != len(optimizer.param_groups):
        raise ValueError(f"start_steps has {len(start_steps)} entries for {len(optimizer.param_groups)} parameter groups")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [WarmupCosine(int(total_steps), warmup_steps, min_lr_ratio, int(start)) for start in start_steps]
    )
