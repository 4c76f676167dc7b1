"""Straightforward reference for the DBNet threshold map: per polygon, per edge, in numpy.

This is the textbook way (as in the DBNet reference code's ``MakeBorderMap``): for every
polygon a distance field is computed over its (grown) bounding box once per edge, and the
minimum is taken. It is kept outside the package, for the equality tests and for
``benchmarks/speed.py`` to measure our compiled kernel against.
"""

from __future__ import annotations

import math

import numpy as np

from ocr.data.targets import TargetConfig, make_db_targets


def segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from each pixel centre (xs, ys) to the segment a-b."""
    ex, ey = b[0] - a[0], b[1] - a[1]
    dx, dy = xs - a[0], ys - a[1]
    length2 = ex * ex + ey * ey
    if length2 > 0:
        t = np.clip((dx * ex + dy * ey) / length2, 0.0, 1.0)
    else:
        t = np.zeros_like(dx)
    qx, qy = dx - t * ex, dy - t * ey
    return np.sqrt(qx * qx + qy * qy)


def reference_threshold_distance_map(shape: tuple[int, int], polygons: list[np.ndarray], distances: list[float]) -> np.ndarray:
    height, width = shape
    canvas = np.zeros(shape, dtype=np.float64)
    for polygon, distance in zip(polygons, distances):
        x0 = max(int(math.floor(polygon[:, 0].min() - distance)), 0)
        x1 = min(int(math.ceil(polygon[:, 0].max() + distance)), width - 1)
        y0 = max(int(math.floor(polygon[:, 1].min() - distance)), 0)
        y1 = min(int(math.ceil(polygon[:, 1].max() + distance)), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
        per_edge = np.stack([segment_distance(xs, ys, polygon[i], polygon[(i + 1) % len(polygon)]) for i in range(len(polygon))])
        value = 1.0 - np.clip(per_edge.min(axis=0) / distance, 0.0, 1.0)
        canvas[y0 : y1 + 1, x0 : x1 + 1] = np.fmax(canvas[y0 : y1 + 1, x0 : x1 + 1], value)
    return canvas


def reference_db_targets(shape, polygons, ignore=None, config: TargetConfig = TargetConfig()) -> dict[str, np.ndarray]:
    """``make_db_targets`` with the threshold map drawn by the reference loop above."""
    import ocr.data.targets as targets

    original = targets.threshold_distance_map
    targets.threshold_distance_map = reference_threshold_distance_map
    try:
        return make_db_targets(shape, polygons, ignore, config)
    finally:
        targets.threshold_distance_map = original
