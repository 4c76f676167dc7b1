"""timm backbone as a multi-scale feature extractor."""

from __future__ import annotations

import os
from typing import Sequence

import timm
import torch

from ocr.models.batch_norm import FreezableBatchNorm


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched; the message says what to do instead."""


class TimmEncoder(FreezableBatchNorm):
    """Any timm model that supports ``features_only``.

    Keeps the (up to) four deepest feature levels with stride >= 4, so ResNets, ConvNeXts,
    MobileNets and EfficientNets all give strides 4, 8, 16, 32. Channels and strides are read
    from timm's ``feature_info``: swapping ``model_name`` needs no other setting.
    ``freeze_batch_norm`` keeps batch norm on its (pretrained) running statistics in training.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool = False,
        num_levels: int = 4,
        freeze_batch_norm: bool = False,
        **timm_kwargs,
    ):
        super().__init__()
        self.freeze_batch_norm = freeze_batch_norm
        # null in a config: the model's own default (timm_backbone.yaml lists channels: null)
        timm_kwargs = {key: value for key, value in timm_kwargs.items() if value is not None}
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, features_only=True, **timm_kwargs)
        except TypeError as error:
            if not timm_kwargs:
                raise
            raise TypeError(
                f"timm model {model_name!r} does not take the models.encoder settings "
                f"{', '.join(f'{k}={v}' for k, v in timm_kwargs.items())}: {error}. Set them to null for this model "
                "(e.g. channels, which ResNets take: preset=sroie_fp32cpu halves them)."
            ) from error
        except Exception as error:  # hub/network errors come in many types
            if not pretrained:
                raise
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise PretrainedWeightsError(
                f"could not load pretrained weights for timm model {model_name!r}{offline}: {error}. "
                "Train from scratch with models.encoder.pretrained=false, or make the weights available "
                "in the Hugging Face cache (see the timm docs)."
            ) from error
        reductions = self.model.feature_info.reduction()
        usable = [i for i, r in enumerate(reductions) if r >= 4]
        self.indices = usable[-num_levels:]
        self.channels = [self.model.feature_info.channels()[i] for i in self.indices]
        self.strides = [reductions[i] for i in self.indices]
        self.train(self.training)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(images)
        return [features[i] for i in self.indices]


class ConcatEncoder(torch.nn.Module):
    """Several encoders side by side on the same images: each feature level is their maps of that
    level concatenated along the channels, so the decoder sees what every backbone learnt (two
    pretrained backbones trained on different data, say). They must agree on the strides and on the
    input normalisation (``input_mean``/``input_std``, which DBNet passes on to the LightningModule);
    ``model_name`` names the combination in run names and logs."""

    def __init__(self, encoders: Sequence[torch.nn.Module], model_name: str | None = None):
        super().__init__()
        encoders = list(encoders)
        if len(encoders) < 2:
            raise ValueError(f"ConcatEncoder needs at least two encoders, got {len(encoders)}")
        strides = [list(encoder.strides) for encoder in encoders]
        if any(s != strides[0] for s in strides):
            raise ValueError(f"ConcatEncoder: the encoders' feature strides differ ({strides}); they must be equal")
        normalisations = {(tuple(getattr(e, "input_mean", ())), tuple(getattr(e, "input_std", ()))) for e in encoders}
        if len(normalisations) > 1:
            raise ValueError(
                f"ConcatEncoder: the encoders expect different input normalisations {sorted(normalisations)}; "
                "they see the same images, so give them the same input_mean/input_std"
            )
        self.encoders = torch.nn.ModuleList(encoders)
        self.strides = strides[0]
        self.channels = [sum(int(encoder.channels[level]) for encoder in encoders) for level in range(len(self.strides))]
        self.model_name = model_name or "+".join(str(getattr(e, "model_name", type(e).__name__)) for e in encoders)
        mean, std = normalisations.pop()
        if mean:
            self.input_mean, self.input_std = mean, std

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        per_encoder = [encoder(images) for encoder in self.encoders]
        return [torch.cat(level, dim=1) for level in zip(*per_encoder)]
