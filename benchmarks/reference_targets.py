"""Straightforward reference for the DBNet target maps: per polygon, per edge, in numpy.

The textbook way (the DBNet reference code's ``MakeShrinkMap`` / ``MakeBorderMap`` loop): for
every polygon, measure it with shapely, then compute a distance field over its grown bounding
box once per edge and take the minimum. It defines the same maps as
``ocr.data.targets.make_db_targets`` (see that module's docstring) with the same arithmetic,
and is kept outside the package for the equality tests and for ``benchmarks/speed.py``.
"""

from __future__ import annotations

import math

import numpy as np
from shapely.geometry import Polygon

from ocr.data.targets import OUTLINE_TOLERANCE, TargetConfig


def segment_distance2(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance from each pixel centre (xs, ys) to the segment a-b."""
    ex, ey = b[0] - a[0], b[1] - a[1]
    length2 = ex * ex + ey * ey
    inv = 1.0 / length2 if length2 > 0 else 0.0
    dx, dy = xs - a[0], ys - a[1]
    t = np.clip((dx * ex + dy * ey) * inv, 0.0, 1.0)
    qx, qy = dx - t * ex, dy - t * ey
    return qx * qx + qy * qy


def inside_polygon(xs: np.ndarray, ys: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd crossing test of each pixel centre, edge by edge."""
    inside = np.zeros(xs.shape, dtype=bool)
    for i in range(len(polygon)):
        (ax, ay), (bx, by) = polygon[i], polygon[(i + 1) % len(polygon)]
        if by == ay:
            continue
        crosses = (ay > ys) != (by > ys)
        x_cross = ax + (ys - ay) * ((bx - ax) / (by - ay))
        inside ^= crosses & (xs < x_cross)
    return inside


def reference_db_targets(shape, polygons, ignore=None, config: TargetConfig = TargetConfig()) -> dict[str, np.ndarray]:  # noqa: B008
    height, width = shape
    shrink_map = np.zeros(shape, dtype=np.float32)
    shrink_mask = np.ones(shape, dtype=np.float32)
    threshold_dist = np.zeros(shape, dtype=np.float64)
    threshold_mask = np.zeros(shape, dtype=np.float32)
    ignore = [False] * len(polygons) if ignore is None else list(ignore)
    for polygon, ignored in zip(polygons, ignore):
        polygon = np.asarray(polygon, dtype=np.float64)
        if polygon.ndim != 2 or len(polygon) < 3 or polygon.shape[1] != 2 or not np.isfinite(polygon).all():
            continue
        shape_ = Polygon(polygon)
        if not shape_.is_valid:
            shape_ = shape_.buffer(0)
        area, length = shape_.area, shape_.length
        distance = area * (1 - config.shrink_ratio**2) / length if area > 0 and length > 0 else 0.0
        extent = polygon.max(axis=0) - polygon.min(axis=0)
        text = not ignored and extent.min() >= config.min_text_size and distance > 0
        tolerance = OUTLINE_TOLERANCE
        grow = (distance if text else 0.0) + tolerance
        x0 = max(int(math.floor(polygon[:, 0].min() - grow)), 0)
        x1 = min(int(math.ceil(polygon[:, 0].max() + grow)), width - 1)
        y0 = max(int(math.floor(polygon[:, 1].min() - grow)), 0)
        y1 = min(int(math.ceil(polygon[:, 1].max() + grow)), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
        inside = inside_polygon(xs, ys, polygon)
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        per_edge = [segment_distance2(xs, ys, polygon[i], polygon[(i + 1) % len(polygon)]) for i in range(len(polygon))]
        d = np.sqrt(np.min(per_edge, axis=0))
        kernel = inside & (d >= distance - tolerance)
        if not text or not kernel.any():
            shrink_mask[window][inside | (d <= tolerance)] = 0
            continue
        shrink_map[window][kernel] = 1
        threshold_mask[window][inside | (d <= distance + tolerance)] = 1
        threshold_dist[window] = np.fmax(threshold_dist[window], 1.0 - np.minimum(d / distance, 1.0))
    threshold_map = (config.thresh_min + (config.thresh_max - config.thresh_min) * threshold_dist).astype(np.float32)
    return {
        "shrink_map": shrink_map,
        "shrink_mask": shrink_mask,
        "threshold_map": threshold_map,
        "threshold_mask": threshold_mask,
    }
