"""FPN decoder (the receipt baseline's "UNet") with optional DBNet++ adaptive scale fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AdaptiveScaleFusion(nn.Module):
    """DBNet++ ASF (Liao et al., TPAMI 2022): spatial attention that weights each scale."""

    def __init__(self, channels: int, num_scales: int):
        super().__init__()
        self.num_scales = num_scales
        self.conv = nn.Conv2d(channels * num_scales, channels, 3, padding=1)
        self.spatial = nn.Sequential(
            nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(1, 1, 1, bias=False), nn.Sigmoid()
        )
        self.scale_weights = nn.Sequential(nn.Conv2d(channels, num_scales, 1, bias=False), nn.Sigmoid())

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        fused = self.conv(torch.cat(features, dim=1))
        attended = fused + self.spatial(fused.mean(dim=1, keepdim=True))
        weights = self.scale_weights(attended)
        return torch.cat([feature * weights[:, i : i + 1] for i, feature in enumerate(features)], dim=1)


class SelfAttentionLayer(nn.Module):
    """A pre-norm transformer encoder layer written out (torch's own takes a fused path in
    inference that ONNX cannot export)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.attention_out = nn.Linear(channels, channels)
        self.mlp_norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, channels = tokens.shape
        qkv = self.qkv(self.attention_norm(tokens)).reshape(batch, length, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).reshape(batch, length, channels)
        tokens = tokens + self.attention_out(attended)
        return tokens + self.mlp(self.mlp_norm(tokens))


class PageContext(nn.Module):
    """Self-attention over every position of the coarsest level, so that each place sees the whole
    input's layout (columns, where lines end) before the top-down pass; a depthwise convolution
    gives the tokens their position, so any input size works."""

    def __init__(self, channels: int, num_layers: int, num_heads: int = 4):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"inner_channels ({channels}) must be divisible by the {num_heads} attention heads")
        self.position = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.layers = nn.ModuleList(SelfAttentionLayer(channels, num_heads) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = (x + self.position(x)).flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class FPNDecoder(nn.Module):
    """Top-down FPN; every level is reduced to ``inner_channels // num_levels`` channels,
    upsampled to the finest level (stride 4) and concatenated to ``inner_channels``.
    ``context_layers`` > 0 puts that many :class:`PageContext` layers on the coarsest level."""

    def __init__(self, in_channels: list[int], inner_channels: int = 256, use_asf: bool = False, context_layers: int = 0):
        super().__init__()
        num_levels = len(in_channels)
        if inner_channels % num_levels:
            raise ValueError(f"inner_channels ({inner_channels}) must be divisible by the {num_levels} levels")
        if context_layers < 0:
            raise ValueError(f"context_layers ({context_layers}) must be 0 (off) or a positive number of layers")
        level_channels = inner_channels // num_levels
        self.lateral = nn.ModuleList(nn.Conv2d(c, inner_channels, 1, bias=False) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(inner_channels, level_channels) for _ in in_channels)
        self.asf = AdaptiveScaleFusion(level_channels, num_levels) if use_asf else None
        self.context = PageContext(inner_channels, context_layers) if context_layers > 0 else None
        self.out_channels = inner_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        if self.context is not None:
            laterals[-1] = self.context(laterals[-1])
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        size = laterals[0].shape[-2:]
        outputs = [smooth(x) for smooth, x in zip(self.smooth, laterals)]
        outputs = [outputs[0]] + [F.interpolate(x, size=size, mode="nearest") for x in outputs[1:]]
        if self.asf is not None:
            return self.asf(outputs)
        return torch.cat(outputs, dim=1)
