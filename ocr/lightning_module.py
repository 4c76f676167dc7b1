"""The LightningModule: wires model, loss, post-processor and metrics together."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ocr.data.dataset import OPTIONAL_TARGET_KEYS, TARGET_KEYS, group_by_padded_size
from ocr.geometry import round_to_multiple
from ocr.metrics.detection import DetectionEvaluator
from ocr.models.dbnet import DBNet
from ocr.models.loss import DBLoss
from ocr.models.postprocess import DBPostProcessor, Detections
from ocr.optim import optimizer_steps_per_epoch, parameters_by_feature_level

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def probability_maps(prob_logits: torch.Tensor) -> np.ndarray:
    """(N, H, W) float32 probabilities on the CPU from (N, 1, H, W) probability logits."""
    return torch.sigmoid(prob_logits.float()).squeeze(1).cpu().numpy()


def decode_probabilities(
    postprocess: DBPostProcessor,
    probabilities: np.ndarray,
    batch: dict[str, Any],
    index: Sequence[int] | None = None,
    thresh_maps: np.ndarray | None = None,
) -> list[Detections]:
    """Post-process (N, H, W) probability maps into polygons in original pixels: row k belongs to
    the batch's image ``index[k]`` (by default, to image k), cut to its valid (unpadded) size.
    Shared by the LightningModule and :class:`ocr.detector.Detector` (ONNX Runtime gives
    probabilities). ``thresh_maps``: (N, H, W) per-pixel thresholds, see :class:`DBPostProcessor`."""
    detections = []
    for row, i in enumerate(range(len(probabilities)) if index is None else index):
        width, height = batch["valid_size"][i]
        detections.append(
            postprocess(
                probabilities[row, :height, :width],
                scale=batch["scale"][i],
                raw_size=batch["raw_size"][i],
                orientation=batch["orientation"][i],
                thresh_map=None if thresh_maps is None else thresh_maps[row, :height, :width],
            )
        )
    return detections


def size_groups(batch: dict[str, Any]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The batch's images cut back to their own padded size, those of one size stacked together.

    The network then sees every image exactly as in a batch of one: the zeros that pad an image
    up to a larger neighbour would otherwise reach its right and bottom edges through the
    receptive field, and what it predicts would depend on the batch it came in (validation,
    test, predict, ``benchmarks/accuracy.py`` and :class:`ocr.detector.Detector` would disagree)."""
    images = batch["image"]
    for (height, width), index in group_by_padded_size(batch["valid_size"]):
        if index == list(range(len(images))) and tuple(images.shape[-2:]) == (height, width):
            yield index, images  # one size, already cut to it (a batch of one, mostly): no copy
        else:
            yield index, images[index, :, :height, :width]


def prediction_rows(batch: dict[str, Any], detections: Sequence[Detections]) -> list[dict[str, Any]]:
    """One row per image of ``batch``, as submissions are written from: its name, its size on disk
    (width, height), and its polygons (in that image's pixels) with their scores."""
    return [
        {"name": name, "raw_size": size, "polygons": found.polygons, "scores": found.scores}
        for name, size, found in zip(batch["name"], batch["raw_size"], detections)
    ]


class DBNetModule(L.LightningModule):
    def __init__(
        self,
        model: DBNet | torch.nn.Module,
        loss: DBLoss,
        postprocess: DBPostProcessor,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        evaluator: DetectionEvaluator | None = None,
        channels_last: bool = False,
        tta_scales: list[float] | None = None,
        encoder_lr_scale: float = 1.0,
        encoder_frozen_epochs: int = 0,
        compile: bool = False,
        encoder_lr_decay: float = 1.0,
    ):
        super().__init__()
        self.run_config: dict[str, Any] = {}  # the resolved run config, set by the runner
        self.model, self.loss, self.postprocess = model, loss, postprocess
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.evaluator = evaluator if evaluator is not None else DetectionEvaluator()  # an empty one is falsy (len 0)
        self.channels_last = channels_last
        self.tta_scales = [float(scale) for scale in tta_scales or []]
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.encoder_frozen_epochs = int(encoder_frozen_epochs)
        self.encoder_lr_decay = float(encoder_lr_decay)
        self.compile_network = bool(compile)
        # a network may say how it was trained to see images (PPOCRDetector: 0.5, 0.5); else ImageNet's
        mean, std = getattr(model, "input_mean", IMAGENET_MEAN), getattr(model, "input_std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        # compiled for training only, in place (state_dict keys unchanged): test, predict, export
        # and the Detector run the plain network
        if stage == "fit" and self.compile_network:
            self.model.compile()

    # -- forward ------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images arrive as they left the DataLoader; normalise on the device."""
        images = (images.float() - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward(self, images: torch.Tensor, with_threshold: bool | None = None) -> dict[str, torch.Tensor]:
        return self.model(self.normalize(images), with_threshold=with_threshold)

    def prob_logits(self, images: torch.Tensor, outputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The probability logits post-processing decodes: the network's at the input size or, with
        ``tta_scales`` (test-time augmentation), the mean probability of the network run on the
        input rescaled by each factor, resized back to the input size. ``outputs``: the forward
        pass at the input size when the caller already has it."""
        if outputs is None:
            outputs = self(images, with_threshold=False)
        if not self.tta_scales:
            return outputs["prob_logits"]
        height, width = images.shape[-2:]
        probabilities = []
        for scale in self.tta_scales:
            if scale == 1.0:
                logits = outputs["prob_logits"]
            else:
                # sides stay multiples of 32 for the FPN
                size = (round_to_multiple(height * scale), round_to_multiple(width * scale))
                scaled = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
                logits = self(scaled, with_threshold=False)["prob_logits"].float()
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities.append(torch.sigmoid(logits.float()))
        return torch.logit(torch.stack(probabilities).mean(dim=0), eps=1e-6)

    def decode(self, prob_logits: torch.Tensor, batch: dict[str, Any], index: Sequence[int] | None = None) -> list[Detections]:
        """Post-process probability logits into polygons in original pixels: row k belongs to the
        batch's image ``index[k]`` (by default, to image k)."""
        return decode_probabilities(self.postprocess, probability_maps(prob_logits), batch, index)

    def size_groups(self, batch: dict[str, Any]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """:func:`size_groups`: the batch's images by their own padded size."""
        return size_groups(batch)

    # -- steps --------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.loss(self(batch["image"], with_threshold=True), batch)
        batch_size = batch["image"].shape[0]
        parts = {f"train/{k}": v for k, v in losses.items() if k != "loss"}
        self.log_dict(parts, batch_size=batch_size)
        self.log("train/loss", losses["loss"], batch_size=batch_size, prog_bar=True)
        return losses["loss"]

    def detect(self, batch: dict[str, Any], with_loss: bool = False) -> tuple[list[Detections], dict[str, torch.Tensor]]:
        """The detections of every image of a collated batch, in batch order, and with ``with_loss``
        the loss on the batch's target maps (that of each size group on its own maps, weighted by
        its share of the batch)."""
        batch_size = batch["image"].shape[0]
        detections: list[Detections] = [None] * batch_size  # type: ignore[list-item]
        losses: dict[str, torch.Tensor] = {}
        for index, images in self.size_groups(batch):
            outputs = self(images, with_threshold=with_loss)
            if with_loss:
                height, width = images.shape[-2:]
                maps = {key: batch[key][index, :height, :width] for key in (*TARGET_KEYS, *OPTIONAL_TARGET_KEYS) if key in batch}
                for key, value in self.loss(outputs, maps).items():
                    losses[key] = losses.get(key, 0) + value * (len(index) / batch_size)
            # named profiler sections: `trainer.profiler=simple` shows what post-processing and
            # metrics cost next to the network
            with self._profile("postprocess"):
                for i, found in zip(index, self.decode(self.prob_logits(images, outputs), batch, index)):
                    detections[i] = found
        return detections, losses

    def _evaluation_step(self, batch: dict[str, Any], stage: str) -> list[Detections]:
        has_targets = "shrink_map" in batch
        detections, losses = self.detect(batch, with_loss=has_targets)
        if has_targets:
            self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=len(detections), sync_dist=True)
            with self._profile("metrics"):
                for i, found in enumerate(detections):
                    self.evaluator.update(
                        batch["name"][i], batch["gt_polygons"][i], found.polygons, batch["gt_ignore"][i], batch["gt_texts"][i]
                    )
        return detections

    def _profile(self, action: str):
        trainer = self._trainer
        return trainer.profiler.profile(f"[DBNetModule]{action}") if trainer is not None else contextlib.nullcontext()

    # detections are returned so callbacks (e.g. W&B media) see them in on_*_batch_end
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> list[Detections]:
        return self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[Detections]:
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        detections, _ = self.detect(batch)
        return prediction_rows(batch, detections)

    # -- metrics ------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def _log_metrics(self, stage: str) -> None:
        self.evaluator.sync()
        scores = self.evaluator.compute()
        if scores.get("num_images", 0) == 0:
            return
        names = ("recall", "precision", "hmean", "iou_recall", "iou_precision", "iou_hmean")
        # every rank holds the same merged scores after sync(), so no further reduction
        self.log_dict({f"{stage}/{name}": float(scores[name]) for name in names if name != "hmean"})
        self.log(f"{stage}/hmean", float(scores["hmean"]), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the resolved run config travels with the weights: test/predict rebuild the
        # architecture from it
        checkpoint["ocr_config"] = self.run_config

    # -- optimisation -------------------------------------------------------------------
    def parameter_groups(self) -> Any:
        """All parameters at the optimizer's learning rate or, with ``encoder_lr_scale`` != 1,
        ``encoder_frozen_epochs`` > 0 or ``encoder_lr_decay`` < 1, two groups: the rest, then the
        encoder at that fraction of the rate (a pretrained backbone under a head trained from
        scratch). With ``encoder_lr_decay`` < 1 the encoder is one group per feature level instead,
        the deepest at ``encoder_lr_scale`` and each finer one at ``encoder_lr_decay`` times the next
        (layer-wise rates: the generic early features move least). The scheduler scales every group
        alike, and holds the encoder's at 0 for its frozen epochs."""
        encoder = getattr(self.model, "encoder", None)
        if self.encoder_lr_scale == 1.0 and self.encoder_frozen_epochs == 0 and self.encoder_lr_decay == 1.0:
            return self.parameters()
        base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if encoder is None or base_lr is None:
            asked = [f"lightning_module.encoder_lr_scale={self.encoder_lr_scale}"] if self.encoder_lr_scale != 1.0 else []
            if self.encoder_frozen_epochs:
                asked.append(f"lightning_module.encoder_frozen_epochs={self.encoder_frozen_epochs}")
            if self.encoder_lr_decay != 1.0:
                asked.append(f"lightning_module.encoder_lr_decay={self.encoder_lr_decay}")
            raise ValueError(
                f"{' and '.join(asked)} {'need' if len(asked) > 1 else 'needs'} a network with an encoder "
                f"(got {type(self.model).__name__}) and an optimizer partial with lr set (models.optimizer.lr)"
            )
        encoder_ids = {id(parameter) for parameter in encoder.parameters()}
        rest = {"params": [p for p in self.parameters() if id(p) not in encoder_ids]}
        if self.encoder_lr_decay == 1.0:
            return [rest, {"params": list(encoder.parameters()), "lr": base_lr * self.encoder_lr_scale}]
        levels = parameters_by_feature_level(encoder)
        deepest = len(levels) - 1
        scales = [self.encoder_lr_scale * self.encoder_lr_decay ** (deepest - level) for level in range(len(levels))]
        return [rest] + [{"params": params, "lr": base_lr * scale} for params, scale in zip(levels, scales) if params]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        if self.scheduler_factory is None:
            if self.encoder_frozen_epochs:
                raise ValueError("lightning_module.encoder_frozen_epochs needs a learning-rate schedule (models.scheduler)")
            return optimizer
        kwargs = {}
        parameters = inspect.signature(self.scheduler_factory).parameters
        if self.encoder_frozen_epochs and "start_steps" not in parameters:
            raise ValueError(
                "lightning_module.encoder_frozen_epochs needs a schedule that takes start_steps "
                f"(ocr.optim.warmup_cosine); models.scheduler is {self.scheduler_factory}"
            )
        if "total_steps" in parameters or self.encoder_frozen_epochs:
            # also sets up the training data, so its batches per epoch are known
            total_steps = self.trainer.estimated_stepping_batches
            if "total_steps" in parameters:
                kwargs["total_steps"] = total_steps
        if self.encoder_frozen_epochs:
            steps_per_epoch = optimizer_steps_per_epoch(self.trainer)
            if steps_per_epoch is None:
                raise ValueError("lightning_module.encoder_frozen_epochs needs training data with a length (epochs to count)")
            # the first group is the decoder and head's; every other one the encoder's
            kwargs["start_steps"] = [0] + [self.encoder_frozen_epochs * steps_per_epoch] * (len(optimizer.param_groups) - 1)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
