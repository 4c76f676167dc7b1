"""The LightningModule: wires model, loss, post-processor and metrics together."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F

from ocr.metrics.detection import DetectionEvaluator
from ocr.models.dbnet import DBNet
from ocr.models.loss import DBLoss
from ocr.postprocess import DBPostProcessor, Detections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DBNetModule(L.LightningModule):
    def __init__(
        self,
        model: DBNet,
        loss: DBLoss,
        postprocess: DBPostProcessor,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        evaluator: DetectionEvaluator | None = None,
        channels_last: bool = False,
        tta_scales: list[float] | None = None,
    ):
        super().__init__()
        self.run_config: dict[str, Any] = {}  # the resolved run config, set by the runner
        self.model, self.loss, self.postprocess = model, loss, postprocess
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.evaluator = evaluator or DetectionEvaluator()
        self.channels_last = channels_last
        self.tta_scales = [float(scale) for scale in tta_scales or []]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

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
                size = (max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32))
                scaled = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
                logits = self(scaled, with_threshold=False)["prob_logits"].float()
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities.append(torch.sigmoid(logits.float()))
        return torch.logit(torch.stack(probabilities).mean(dim=0), eps=1e-6)

    def decode(self, prob_logits: torch.Tensor, batch: dict[str, Any]) -> list[Detections]:
        """Post-process a batch of probability logits into polygons in original pixels."""
        probabilities = torch.sigmoid(prob_logits.float()).squeeze(1).cpu().numpy()
        detections = []
        for i, (width, height) in enumerate(batch["valid_size"]):
            detections.append(
                self.postprocess(
                    probabilities[i, :height, :width],
                    scale=batch["scale"][i],
                    raw_size=batch["raw_size"][i],
                    orientation=batch["orientation"][i],
                )
            )
        return detections

    # -- steps --------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.loss(self(batch["image"], with_threshold=True), batch)
        batch_size = batch["image"].shape[0]
        parts = {f"train/{k}": v for k, v in losses.items() if k != "loss"}
        self.log_dict(parts, batch_size=batch_size)
        self.log("train/loss", losses["loss"], batch_size=batch_size, prog_bar=True)
        return losses["loss"]

    def _evaluation_step(self, batch: dict[str, Any], stage: str) -> list[Detections]:
        has_targets = "shrink_map" in batch
        outputs = self(batch["image"], with_threshold=has_targets)
        batch_size = batch["image"].shape[0]
        if has_targets:
            losses = self.loss(outputs, batch)
            self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=batch_size, sync_dist=True)
        # named profiler sections: `trainer.profiler=simple` shows what post-processing and
        # metrics cost next to the network
        with self._profile("postprocess"):
            detections = self.decode(self.prob_logits(batch["image"], outputs), batch)
        if has_targets:
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
        detections = self.decode(self.prob_logits(batch["image"]), batch)
        return [
            {"name": name, "raw_size": size, "polygons": found.polygons, "scores": found.scores}
            for name, size, found in zip(batch["name"], batch["raw_size"], detections)
        ]

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
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["total_steps"] = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
