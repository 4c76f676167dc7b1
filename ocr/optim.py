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


def parameters_by_feature_level(encoder: torch.nn.Module, image_size: int = 64) -> list[list[torch.nn.Parameter]]:
    """The encoder's parameters grouped by the first of its feature maps (finest first) that depends
    on them, found from the autograd graph of one forward pass on a blank ``image_size`` image: the
    stem and first stage, then each deeper stage, for any encoder that returns a list of feature maps
    (a timm model or a converted ONNX graph alike). Parameters no feature map reaches go with the
    deepest. The encoder's train / eval modes are left as they were, and no ``.grad`` is written."""
    parameters = list(encoder.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    modes = {module: module.training for module in encoder.modules()}
    encoder.eval()  # batch norm keeps its running statistics
    try:
        with torch.enable_grad():
            first = parameters[0]
            blank = torch.zeros(1, 3, image_size, image_size, device=first.device, dtype=first.dtype)
            features = encoder(blank)
            level_of: dict[int, int] = {}
            for level, feature in enumerate(features):
                grads = torch.autograd.grad(feature.float().sum(), trainable, allow_unused=True, retain_graph=True)
                for parameter, grad in zip(trainable, grads):
                    if grad is not None:
                        level_of.setdefault(id(parameter), level)
    finally:
        for module, training in modes.items():
            module.training = training
    levels: list[list[torch.nn.Parameter]] = [[] for _ in features]
    for parameter in parameters:
        levels[level_of.get(id(parameter), len(features) - 1)].append(parameter)
    return levels
