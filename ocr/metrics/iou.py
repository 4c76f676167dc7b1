"""ICDAR 2015 style one-to-one IoU matching for text polygons.

Mirrors ``evaluate_method`` of the ICDAR 2015 Challenge 4 (Task 4.1) evaluation script
(``script.py`` on rrc.cvc.uab.es), detection only, without confidences:

* A GT is don't-care when flagged in ``gt_ignore`` (transcription ``"###"``).
* A detection is don't-care when, for some don't-care GT, ``area(gt & det) / area(det)`` is
  strictly greater than ``dont_care_overlap`` (script: ``precision > AREA_PRECISION_CONSTRAINT``).
  Don't-care GT and detections are excluded from the counts and never matched.
* Matching is greedy in index order (``for gt i: for det j``): a pair matches when both are still
  unmatched, neither is don't-care and ``IoU > iou_threshold`` (strict ``>``, as the script).
* Per image (script's per-sample rule): with no care GT, recall = 1 and precision = 0 if there is a
  care detection else 1; otherwise recall = matched / gt and precision = matched / det (0 without
  detections); hmean = 0 when recall + precision = 0.
* Over a data set (script's method rule, :func:`pooled_scores`): counts are summed over images;
  recall = 0 without GT and precision = 0 without detections.

Geometry uses shapely (invalid polygons are repaired with ``shapely.make_valid``); an axis-aligned
bounding-box test skips the pairs that cannot intersect, and a bound on the IoU (intersection <= the
smaller area and the boxes' overlap) the pairs that cannot reach the threshold, so 100 x 100
polygons take ~2 ms on a 2-core CPU. ``tests/test_metrics_fast.py`` checks the counts against a
plain pair-by-pair loop of the ICDAR15 rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely

from ocr.geometry import bounds_overlap
from ocr.metrics.common import as_polygons, dont_care_flags, intersection_areas, shapely_polygons

__all__ = ["IoUCounts", "iou_match", "pooled_scores"]


def _hmean(recall: float, precision: float) -> float:
    return 0.0 if recall + precision == 0 else 2.0 * recall * precision / (recall + precision)


@dataclass(frozen=True)
class IoUCounts:
    """Care counts of one image (or of several, pooled) and the matches between them."""

    num_gt: int
    num_det: int
    num_matched: int
    # Indices into the polygons given to iou_match, for breakdowns such as recall by text size or
    # the error classes of ocr.metrics.errors: matched_gt[k] was matched to matched_det[k]. Not
    # part of equality, so counts compare as counts.
    matched_gt: tuple[int, ...] = field(default=(), compare=False)
    matched_det: tuple[int, ...] = field(default=(), compare=False)
    dont_care_det: tuple[int, ...] = field(default=(), compare=False)

    @property
    def recall(self) -> float:
        """Per-image recall (ICDAR15 per-sample rule: 1.0 when the image has no care GT)."""
        return 1.0 if self.num_gt == 0 else self.num_matched / self.num_gt

    @property
    def precision(self) -> float:
        """Per-image precision (no care GT: 0.0 with detections, 1.0 without)."""
        if self.num_gt == 0:
            return 0.0 if self.num_det > 0 else 1.0
        return 0.0 if self.num_det == 0 else self.num_matched / self.num_det

    @property
    def hmean(self) -> float:
        return _hmean(self.recall, self.precision)


def pooled_scores(counts: Iterable[IoUCounts]) -> dict[str, float]:
    """Data-set scores from per-image counts, as the ICDAR15 script's method-level result."""
    num_gt = num_det = num_matched = 0
    for c in counts:
        num_gt += c.num_gt
        num_det += c.num_det
        num_matched += c.num_matched
    recall = 0.0 if num_gt == 0 else num_matched / num_gt
    precision = 0.0 if num_det == 0 else num_matched / num_det
    return {"recall": recall, "precision": precision, "hmean": _hmean(recall, precision)}


def iou_match(
    gt_polys: Sequence[np.ndarray] | np.ndarray | None,
    det_polys: Sequence[np.ndarray] | np.ndarray | None,
    gt_ignore: Sequence[bool] | np.ndarray | None = None,
    iou_threshold: float = 0.5,
    dont_care_overlap: float = 0.5,
) -> IoUCounts:
    """Match detections to GT one-to-one for one image (ICDAR 2015 rules, see module doc)."""
    gts = shapely_polygons(as_polygons(gt_polys))
    dets = shapely_polygons(as_polygons(det_polys))
    gt_dc = dont_care_flags(len(gts), gt_ignore)

    det_dc = np.zeros(len(dets), dtype=bool)
    if gt_dc.any() and len(dets):
        det_area = shapely.area(dets)
        inter_dc = intersection_areas(gts[gt_dc], dets)  # (num_dc_gt, num_det)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(det_area[None, :] > 0, inter_dc / det_area[None, :], 0.0)
        det_dc = (frac > dont_care_overlap).any(axis=0)

    num_gt = int((~gt_dc).sum())
    num_det = int((~det_dc).sum())
    matched_gt: list[int] = []
    matched_det: list[int] = []
    if num_gt and num_det:
        gt_area, det_area = shapely.area(gts), shapely.area(dets)
        gb, db = shapely.bounds(gts), shapely.bounds(dets)  # NaN for empty geometries
        cand = ~gt_dc[:, None] & ~det_dc[None, :]
        if iou_threshold >= 0:  # (a negative threshold also accepts IoU 0, i.e. disjoint pairs)
            cand &= bounds_overlap(gb.T[:, :, None], db.T[:, None])
        # The boxes' overlap (width w, height h) bounds the intersection.
        w = np.minimum(gb[:, None, 2], db[None, :, 2]) - np.maximum(gb[:, None, 0], db[None, :, 0])
        h = np.minimum(gb[:, None, 3], db[None, :, 3]) - np.maximum(gb[:, None, 1], db[None, :, 1])
        # Skip pairs whose IoU cannot reach the threshold: the intersection is at most the smaller
        # area and the boxes' overlap. The margin (1e-3, union >= 1 px^2) is far above float error,
        # so skipped pairs are exactly those the full computation would reject.
        with np.errstate(invalid="ignore", divide="ignore"):
            best = np.minimum(np.minimum(gt_area[:, None], det_area[None, :]), w * h)
            union_lo = gt_area[:, None] + det_area[None, :] - best
            hopeless = (union_lo >= 1.0) & (best / union_lo < iou_threshold - 1e-3)
        ii, jj = np.nonzero(cand & ~hopeless)
        inter = shapely.area(shapely.intersection(gts[ii], dets[jj]))
        union = gt_area[ii] + det_area[jj] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        ok = np.zeros((len(gts), len(dets)), dtype=bool)
        hit = iou > iou_threshold
        ok[ii[hit], jj[hit]] = True
        det_used = np.zeros(len(dets), dtype=bool)
        # Same outcome as the script's double loop: row i takes its first free candidate j.
        for i in np.flatnonzero(ok.any(axis=1)):
            for j in np.flatnonzero(ok[i]):
                if not det_used[j]:
                    det_used[j] = True
                    matched_gt.append(int(i))
                    matched_det.append(int(j))
                    break
    return IoUCounts(
        num_gt=num_gt,
        num_det=num_det,
        num_matched=len(matched_gt),
        matched_gt=tuple(matched_gt),
        matched_det=tuple(matched_det),
        dont_care_det=tuple(int(j) for j in np.flatnonzero(det_dc)),
    )
