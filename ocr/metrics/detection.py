"""Per-image detection scores and their data-set aggregation, used every validation epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ocr.distributed import merge_across_ranks
from ocr.metrics.cleval import cleval_image_scores
from ocr.metrics.common import as_polygons, dont_care_flags
from ocr.metrics.errors import match_errors
from ocr.metrics.iou import IoUCounts, pooled_scores

__all__ = ["DetectionEvaluator"]

_SCORE_KEYS = ("recall", "precision", "hmean")


class DetectionEvaluator:
    """Per-image CLEval and IoU scores; the dataset score is the mean of per-image scores over the
    images actually seen (competition leaderboard rule), never counting unseen images as zero.

    ``recall/precision/hmean`` are CLEval (see :mod:`ocr.metrics.cleval`); ``iou_*`` are ICDAR 2015
    one-to-one IoU scores (:mod:`ocr.metrics.iou`): per image in rows, pooled counts in
    :meth:`compute`. With ``use_cleval=False`` (fast mode) the CLEval columns hold the per-image IoU
    scores instead, so the same keys can still be monitored.

    ``use_text_lengths``: CLEval's GT character counts come from the transcriptions where the
    annotation has them (CLEval as designed; a word without one falls back to the pseudo count).
    Off by default, as the competition's evaluator, which never sees transcriptions and counts from
    each box's shape; on annotations without transcriptions both give the same scores.
    """

    def __init__(self, use_cleval: bool = True, iou_threshold: float = 0.5, use_text_lengths: bool = False) -> None:
        self.use_cleval = use_cleval
        self.iou_threshold = iou_threshold
        self.use_text_lengths = use_text_lengths
        self._rows: dict[str, dict[str, Any]] = {}

    def update(
        self,
        image_id: str,
        gt_polys: Sequence[np.ndarray] | np.ndarray | None,
        det_polys: Sequence[np.ndarray] | np.ndarray | None,
        gt_ignore: Sequence[bool] | np.ndarray | None = None,
        gt_texts: Sequence[str | None] | None = None,
    ) -> dict[str, Any]:
        """Score one image now, store its row (replacing an earlier one of the same id), return it."""
        gts = as_polygons(gt_polys)
        # Fewer than 3 points enclose nothing; dropped before both metrics so their counts agree.
        dets = [d for d in as_polygons(det_polys) if len(d) >= 3]
        ignore = dont_care_flags(len(gts), gt_ignore, gt_texts)

        errors = match_errors(gts, dets, ignore, iou_threshold=self.iou_threshold)
        counts = errors.counts
        if self.use_cleval:
            scores = cleval_image_scores(gts, dets, ignore, gt_texts, use_text_lengths=self.use_text_lengths)
        else:
            scores = {"recall": counts.recall, "precision": counts.precision, "hmean": counts.hmean}
        row = {
            "image_id": str(image_id),
            **scores,
            "iou_recall": counts.recall,
            "iou_precision": counts.precision,
            "iou_hmean": counts.hmean,
            "num_gt": counts.num_gt,
            "num_det": counts.num_det,
            "num_matched_iou": counts.num_matched,
            # why the rest went unmatched (ocr.metrics.errors), so the worst images say what is wrong
            **{f"num_{kind}": errors.gt.count(kind) for kind in ("merged", "split", "missed", "loose")},
            "num_background": errors.det.count("background"),
        }
        self._rows.pop(row["image_id"], None)  # last wins
        self._rows[row["image_id"]] = row
        return dict(row)

    def compute(self) -> dict[str, float]:
        """Means of per-image CLEval scores, pooled ICDAR15 IoU scores, and ``num_images``."""
        rows = list(self._rows.values())
        out: dict[str, float] = {}
        for key in _SCORE_KEYS:
            out[key] = float(np.mean([r[key] for r in rows])) if rows else 0.0
        pooled = pooled_scores(
            IoUCounts(r["num_gt"], r["num_det"], r["num_matched_iou"]) for r in rows
        )
        for key in _SCORE_KEYS:
            out[f"iou_{key}"] = pooled[key]
        out["num_images"] = len(rows)
        return out

    def per_image(self) -> list[dict[str, Any]]:
        """Rows, worst CLEval hmean first (ties: more GT first, then image id)."""
        return sorted(
            (dict(r) for r in self._rows.values()),
            key=lambda r: (r["hmean"], -r["num_gt"], r["image_id"]),
        )

    def reset(self) -> None:
        self._rows.clear()

    def sync(self) -> None:
        """Gather rows from all ranks (when distributed with world size > 1) and merge by image id.

        DistributedSampler pads the last batch with repeated samples; they carry the same image id and
        so count once.
        """
        self._rows = {row["image_id"]: row for row in merge_across_ranks(list(self._rows.values()), "image_id")}

    def __len__(self) -> int:
        return len(self._rows)
