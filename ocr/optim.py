"""Learning-rate schedules that need the run's total step count."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class WarmupCosine:
    """The lr factor at a step: linear warm-up for ``warmup_steps``, then cosine decay to
    ``min_lr_ratio`` at ``total_steps``.

    A callable object rather than a closure: ``LambdaLR`` saves its attributes in checkpoints, and
    :class:`ocr.budget.TimeBudget` may set ``total_steps`` during a run (the schedule then still
    decays to its end when the run is shortened).
    """

    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01

    def __call__(self, step: int) -> float:
        total_steps = max(int(self.total_steps), 1)
        warmup_steps = min(int(self.warmup_steps), total_steps - 1) if total_steps > 1 else 0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.01):
    """Linear warm-up for ``warmup_steps`` then cosine decay to ``min_lr_ratio`` x the base lr."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(int(total_steps), warmup_steps, min_lr_ratio))
