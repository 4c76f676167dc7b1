"""DB loss: balanced BCE (3:1 hard negatives) on the probability map, masked L1 on the
threshold map and dice on the binary map. Computed in float32 from logits so it is safe
under mixed precision.

``prob_map_loss="dice"`` puts dice on the probability map instead of the balanced BCE, as
PaddleOCR trains its DB detectors (the pretrained backbones' own training loss): a loss over
whole regions that needs no hard-negative mining.

Optionally the background between neighbouring words of a line (the targets' ``gap_mask``)
weighs ``gap_negative_weight`` times as much as other negatives in the probability loss, both
when the hard negatives are picked and in their sum: merging such words is the detector's
largest error class on receipts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def balanced_bce_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    negative_ratio: float,
    eps: float,
    negative_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    positive = target * mask
    negative = (1.0 - target) * mask
    positive_count = int(positive.sum().item())
    negative_count = min(int(negative.sum().item()), int(positive_count * negative_ratio))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    positive_loss = (loss * positive).sum()
    negative_loss = loss * negative
    if negative_weight is not None:
        negative_loss = negative_loss * negative_weight
    if negative_count > 0:
        negative_loss = torch.topk(negative_loss.flatten(), negative_count).values.sum()
    else:
        negative_loss = negative_loss.sum() * 0.0
    return (positive_loss + negative_loss) / (positive_count + negative_count + eps)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    return (torch.abs(prediction - target) * mask).sum() / (mask.sum() + eps)


def dice_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    intersection = (prediction * target * mask).sum()
    union = (prediction * mask).sum() + (target * mask).sum() + eps
    return 1.0 - 2.0 * intersection / union


class DBLoss(nn.Module):
    def __init__(
        self,
        prob_map_loss_weight: float = 5.0,
        thresh_map_loss_weight: float = 10.0,
        binary_map_loss_weight: float = 1.0,
        negative_ratio: float = 3.0,
        gap_negative_weight: float = 1.0,
        prob_map_loss: str = "bce",
        eps: float = 1e-6,
    ):
        super().__init__()
        if prob_map_loss not in ("bce", "dice"):
            raise ValueError(f"models.loss.prob_map_loss must be 'bce' or 'dice', got {prob_map_loss!r}")
        if prob_map_loss == "dice" and gap_negative_weight != 1.0:
            raise ValueError("models.loss.gap_negative_weight weighs the BCE's negatives: it needs prob_map_loss='bce'")
        self.prob_map_loss = prob_map_loss
        self.prob_weight = prob_map_loss_weight
        self.thresh_weight = thresh_map_loss_weight
        self.binary_weight = binary_map_loss_weight
        self.negative_ratio = negative_ratio
        self.gap_negative_weight = gap_negative_weight
        self.eps = eps

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        shrink_map, shrink_mask = batch["shrink_map"].float(), batch["shrink_mask"].float()
        prob_logits = outputs["prob_logits"].float().squeeze(1)
        negative_weight = None
        if self.gap_negative_weight != 1.0:
            if "gap_mask" not in batch:
                raise KeyError("gap_negative_weight needs the targets' gap_mask: set datasets.targets.word_gap_max > 0")
            negative_weight = 1.0 + (self.gap_negative_weight - 1.0) * batch["gap_mask"].float()
        if self.prob_map_loss == "dice":
            loss_prob = dice_loss(torch.sigmoid(prob_logits), shrink_map, shrink_mask, self.eps)
        else:
            loss_prob = balanced_bce_with_logits(
                prob_logits, shrink_map, shrink_mask, self.negative_ratio, self.eps, negative_weight
            )
        losses = {"loss_prob": loss_prob}
        total = self.prob_weight * loss_prob
        if "thresh_logits" in outputs:
            threshold = torch.sigmoid(outputs["thresh_logits"].float().squeeze(1))
            loss_thresh = masked_l1(threshold, batch["threshold_map"].float(), batch["threshold_mask"].float(), self.eps)
            binary = torch.sigmoid(outputs["binary_logits"].float().squeeze(1))
            loss_binary = dice_loss(binary, shrink_map, shrink_mask, self.eps)
            losses.update(loss_thresh=loss_thresh, loss_binary=loss_binary)
            total = total + self.thresh_weight * loss_thresh + self.binary_weight * loss_binary
        losses["loss"] = total
        return losses
