"""Inputs every metric shares: polygons as arrays and shapely geometries, don't-care flags, overlaps.

The metrics (:mod:`ocr.metrics.iou`, :mod:`ocr.metrics.errors`, :mod:`ocr.metrics.cleval_reference`,
:mod:`ocr.metrics.fast_cleval`) all import from here and never from each other's internals, so a GT
counts as don't-care, and a polygon is read, the same way in each of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from ocr.data.annotations import DONT_CARE
from ocr.geometry import bounds_overlap

__all__ = ["as_polygons", "dont_care_flags", "intersection_areas", "shapely_polygons"]


def as_polygons(polys: Sequence[np.ndarray] | np.ndarray | None) -> list[np.ndarray]:
    """Normalise polygons to a list of float64 ``(N, 2)`` arrays."""
    if polys is None:
        return []
    return [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys]


def dont_care_flags(
    num_gt: int,
    gt_ignore: Sequence[bool] | np.ndarray | None = None,
    gt_texts: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Don't-care GT as a bool array of ``num_gt``: flagged in ``gt_ignore`` or transcribed ``DONT_CARE``.

    Either source may be ``None``; a given one must have one entry per GT (``ValueError`` otherwise),
    so a flag never lands on the wrong word.
    """
    flags = np.zeros(num_gt, dtype=bool) if gt_ignore is None else np.asarray(gt_ignore, dtype=bool).reshape(-1)
    if flags.shape[0] != num_gt:
        raise ValueError(f"expected {num_gt} don't-care flags, got {flags.shape[0]}")
    if gt_texts is not None:
        if len(gt_texts) != num_gt:
            raise ValueError(f"expected {num_gt} GT texts, got {len(gt_texts)}")
        flags = flags | np.array([t == DONT_CARE for t in gt_texts], dtype=bool)
    return flags


def shapely_polygons(polys: list[np.ndarray]) -> np.ndarray:
    """``shapely.Polygon(p)`` per polygon (built in one vectorised call), invalid ones made valid."""
    arr = np.empty(len(polys), dtype=object)
    if len(arr) == 0:
        return arr
    # Fewer than 3 points cannot enclose area; an empty polygon keeps indices aligned.
    ok = np.fromiter((len(p) >= 3 for p in polys), dtype=bool, count=len(polys))
    for k in np.flatnonzero(~ok):
        arr[k] = shapely.Polygon()
    if ok.any():
        sel = [p for p, keep in zip(polys, ok) if keep]
        counts = np.fromiter((len(p) for p in sel), dtype=np.intp, count=len(sel))
        # Same rings as shapely.Polygon(p): linearrings closes each ring the same way.
        rings = shapely.linearrings(np.concatenate(sel), indices=np.repeat(np.arange(len(sel)), counts))
        arr[ok] = shapely.polygons(rings)
    invalid = ~shapely.is_valid(arr)
    if invalid.any():
        arr[invalid] = shapely.make_valid(arr[invalid])
    return arr


def intersection_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense ``(len(a), len(b))`` intersection areas of two geometry arrays, computed only where
    bounding boxes overlap (elsewhere 0)."""
    inter = np.zeros((len(a), len(b)), dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return inter
    ii, jj = np.nonzero(bounds_overlap(shapely.bounds(a).T[:, :, None], shapely.bounds(b).T[:, None]))
    if len(ii):
        inter[ii, jj] = shapely.area(shapely.intersection(a[ii], b[jj]))
    return inter
