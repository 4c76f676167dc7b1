"""Why the IoU matching leaves words and boxes unmatched: one error class per polygon.

The ICDAR 2015 score (:func:`ocr.metrics.iou.iou_match`) only counts matches. To know what to fix,
each unmatched care word is put in one class, from the intersection areas of every word and box:

* ``merged``: the box covering most of the word covers at least half of it and at least half of
  another care word, i.e. one box over several words (the same line read as one segment);
* ``split``: two or more boxes lie mostly (over half their area) inside the word and each covers at
  least ``MIN_COVER`` of it, i.e. the word broken into pieces;
* ``missed``: no box covers ``MIN_COVER`` of the word;
* ``loose``: the rest, overlapped but at IoU <= the threshold: a box too large, too small or shifted.

Each unmatched care box is ``background`` when less than ``MIN_COVER`` of its area lies on care
words (a stain, logo or unannotated print), else ``on_text`` (a merged, split or loose box).
Matched polygons are ``matched``, don't-care ones ``dont_care`` (the matcher's own decision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from ocr.metrics.common import as_polygons, dont_care_flags, intersection_areas, shapely_polygons
from ocr.metrics.iou import IoUCounts, iou_match

__all__ = ["DET_CLASSES", "GT_CLASSES", "MIN_COVER", "MatchErrors", "match_errors"]

GT_CLASSES = ("matched", "merged", "split", "missed", "loose", "dont_care")
DET_CLASSES = ("matched", "on_text", "background", "dont_care")

# Below a tenth of its area a contact is a touch at the edges (boxes grown by unclipping reach into
# the next line), not a detection of the word.
MIN_COVER = 0.1
# "Most of": more than half, as the matcher's don't-care rule.
MOSTLY = 0.5


@dataclass(frozen=True)
class MatchErrors:
    """Per-polygon classes, in the order of the GT and detections given to :func:`match_errors`,
    and the matcher's counts they come from."""

    gt: tuple[str, ...]
    det: tuple[str, ...]
    counts: IoUCounts


def match_errors(
    gt_polys: Sequence[np.ndarray] | np.ndarray | None,
    det_polys: Sequence[np.ndarray] | np.ndarray | None,
    gt_ignore: Sequence[bool] | np.ndarray | None = None,
    iou_threshold: float = 0.5,
) -> MatchErrors:
    """Classify every GT word and detected box of one image (see the module doc)."""
    gts, dets = as_polygons(gt_polys), as_polygons(det_polys)
    counts = iou_match(gts, dets, gt_ignore, iou_threshold=iou_threshold)
    care_gt = ~dont_care_flags(len(gts), gt_ignore)
    care_det = np.ones(len(dets), dtype=bool)
    care_det[list(counts.dont_care_det)] = False
    gt_class = np.where(care_gt, "", "dont_care").astype(object)
    det_class = np.where(care_det, "", "dont_care").astype(object)
    gt_class[list(counts.matched_gt)] = "matched"
    det_class[list(counts.matched_det)] = "matched"

    gt_geoms, det_geoms = shapely_polygons(gts), shapely_polygons(dets)
    inter = intersection_areas(gt_geoms, det_geoms)
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate polygons have no area
        cover = np.nan_to_num(inter / shapely.area(gt_geoms)[:, None])  # share of word i under box j
        inside = np.nan_to_num(inter / shapely.area(det_geoms)[None, :])  # share of box j on word i
    cover[:, ~care_det] = 0.0  # a don't-care box detects nothing

    for i in np.flatnonzero(gt_class == ""):
        if not len(dets) or cover[i].max() < MIN_COVER:
            gt_class[i] = "missed"
            continue
        j = int(cover[i].argmax())  # the box over most of the word
        other_words = (cover[:, j] >= MOSTLY) & care_gt
        other_words[i] = False
        pieces = (inside[i] > MOSTLY) & (cover[i] >= MIN_COVER)
        if cover[i, j] >= MOSTLY and other_words.any():
            gt_class[i] = "merged"
        elif np.count_nonzero(pieces) >= 2:
            gt_class[i] = "split"
        else:
            gt_class[i] = "loose"

    on_care_text = inside[care_gt].sum(axis=0)
    unmatched = det_class == ""
    det_class[unmatched] = np.where(on_care_text[unmatched] >= MIN_COVER, "on_text", "background")
    return MatchErrors(gt=tuple(gt_class), det=tuple(det_class), counts=counts)
