"""DB head: probability, threshold and approximate binary maps, as logits."""

from __future__ import annotations

import torch
from torch import nn


def _branch(in_channels: int) -> nn.Sequential:
    mid = in_channels // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, mid, 2, stride=2),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, 1, 2, stride=2),
    )


class DBHead(nn.Module):
    """Upsamples the stride-4 features x4 to input resolution.

    The binary map is DB's approximate step ``1 / (1 + exp(-k (P - T)))``: its logit is
    ``k (P - T)``, returned as a logit so the loss can stay numerically safe.
    """

    def __init__(self, in_channels: int, k: float = 50.0):
        super().__init__()
        self.k = k
        self.probability = _branch(in_channels)
        self.threshold = _branch(in_channels)

    def forward(self, features: torch.Tensor, with_threshold: bool | None = None) -> dict[str, torch.Tensor]:
        prob_logits = self.probability(features)
        out = {"prob_logits": prob_logits}
        if with_threshold if with_threshold is not None else self.training:
            thresh_logits = self.threshold(features)
            out["thresh_logits"] = thresh_logits
            out["binary_logits"] = self.k * (torch.sigmoid(prob_logits.float()) - torch.sigmoid(thresh_logits.float()))
        return out
