"""Batch norm that keeps its pretrained running statistics while the rest of a module trains."""

from __future__ import annotations

from torch import nn


def keep_batch_norm_statistics(module: nn.Module) -> None:
    """Put every batch norm in ``module`` in eval mode: it normalises with (and no longer updates) its
    running statistics, which fine-tuning at a small batch of crops would replace with the crops'
    own; its scale and shift still train."""
    for submodule in module.modules():
        if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
            submodule.eval()


def frozen_batch_norm_names(module: nn.Module) -> list[str]:
    """The batch norm layers of ``module`` in eval mode while ``module`` itself is in training mode:
    those ``freeze_batch_norm`` holds on their pretrained statistics. Lightning warns at the start of
    fit about every submodule found in eval mode; the runner names these so that the warning reads
    as intended."""
    if not module.training:
        return []
    return [name for name, submodule in module.named_modules()
            if isinstance(submodule, nn.modules.batchnorm._BatchNorm) and not submodule.training]


class FreezableBatchNorm(nn.Module):
    """A module whose batch norm stays in eval mode in training when ``freeze_batch_norm`` is set.

    Subclasses set ``freeze_batch_norm`` and call ``self.train(self.training)`` once built. Both
    are needed: ``train()`` re-freezes after anything sets training mode, and the call at
    construction matters because Lightning does not call ``train()`` when fitting starts; it records
    every submodule's mode before each validation pass and sets those flags back afterwards.
    """

    freeze_batch_norm: bool = False

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_batch_norm:
            keep_batch_norm_statistics(self)
        return self
