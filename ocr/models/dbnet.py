"""DBNet: encoder -> decoder -> DB head, assembled from parts built by Hydra."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class DBNet(nn.Module):
    """``decoder`` and ``head`` are given as partials that still need the channel counts,
    which come from the encoder: swapping the backbone needs no other setting."""

    def __init__(self, encoder: nn.Module, decoder: Callable[..., nn.Module], head: Callable[..., nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder(in_channels=list(encoder.channels))
        self.head = head(in_channels=self.decoder.out_channels)
        # a pretrained encoder may say how its images were normalised (PPOCRBackbone: 0.5, 0.5);
        # the LightningModule reads it from here, else uses ImageNet's
        for name in ("input_mean", "input_std"):
            if hasattr(encoder, name):
                setattr(self, name, tuple(getattr(encoder, name)))

    def forward(self, images: torch.Tensor, with_threshold: bool | None = None) -> dict[str, torch.Tensor]:
        return self.head(self.decoder(self.encoder(images)), with_threshold=with_threshold)
