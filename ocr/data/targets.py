"""DBNet training targets: shrink (probability) map + mask and threshold map + mask.

Plain numpy/numba functions, computed in the Dataset so DataLoader workers carry the cost.
Follows Liao et al., "Real-time Scene Text Detection with Differentiable Binarization"
(AAAI 2020), section 3.3, with every map sampled exactly at pixel centres:

* ``D = A (1 - r^2) / L`` for a polygon of area ``A``, perimeter ``L``, shrink ratio ``r``;
* ``d`` = distance from the pixel centre to the nearest polygon edge (segment);
* shrink map: pixels inside the polygon with ``d >= D - 1/2`` (the polygon shrunk by ``D``);
* threshold map: ``thresh_min + (thresh_max - thresh_min) * (1 - min(d / D, 1))``, the
  maximum over polygons; threshold mask: pixels inside the polygon or within ``D + 1/2`` of it
  (the polygon grown by ``D``, round corners included);
* shrink mask: 0 inside "don't care" words and inside polygons that are too small
  (``min_text_size``), degenerate or unshrinkable (no shrink pixel): they are ignored by the
  loss, never a division by zero.
* gap mask (optional, ``word_gap_max > 0``): the background between the kernels of two
  neighbouring words of one line, where a detector that merges them goes wrong; the loss can
  weight these negatives up (``DBLoss.gap_negative_weight``).

The half-pixel tolerance makes a region include the pixels its outline passes through, as
OpenCV's ``fillPoly`` (used by the DBNet reference code) does; the usual unclip ratios
(1.5 for boxes) assume kernels drawn that way.

One compiled pass per polygon computes ``d`` and inside/outside for the pixels of its
bounding box grown by ``D`` (farther pixels have ``d > D`` and change nothing).
``benchmarks/reference_targets.py`` computes the same maps the straightforward way (per
polygon, per edge, in numpy); the tests assert both agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from numba import njit


@dataclass(frozen=True)
class TargetConfig:
    shrink_ratio: float = 0.4
    thresh_min: float = 0.3
    thresh_max: float = 0.7
    # Polygons whose bounding box is thinner than this (pixels, at target resolution) are
    # ignored: their shrunk kernel would vanish and they would teach the model noise.
    min_text_size: float = 8.0
    # Gap mask: neighbouring words of one line at most this many text heights apart
    # (0: no gap mask).
    word_gap_max: float = 0.0


TEXT, IGNORED = 1, 0
# pixel centres within half a pixel of a region's outline belong to it (see module docstring)
OUTLINE_TOLERANCE = 0.5


def usable_polygons(polygons: list[np.ndarray]) -> list[np.ndarray]:
    """float64 copies; ``None`` for anything that is not >= 3 finite (x, y) points."""
    out = []
    for polygon in polygons:
        polygon = np.asarray(polygon, dtype=np.float64)
        ok = polygon.ndim == 2 and polygon.shape[0] >= 3 and polygon.shape[1] == 2 and bool(np.isfinite(polygon).all())
        out.append(polygon if ok else None)
    return out


def offset_distances(polygons: list[np.ndarray], shrink_ratio: float) -> np.ndarray:
    """DBNet's ``D = A (1 - r^2) / L`` for each polygon (vectorised shapely); 0 if degenerate.

    A self-intersecting polygon is measured after ``buffer(0)`` repairs it.
    """
    if not polygons:
        return np.zeros(0)
    counts = np.array([len(p) for p in polygons])
    coords = np.concatenate([np.vstack([p, p[:1]]) for p in polygons])  # closed rings
    rings = shapely.linearrings(coords, indices=np.repeat(np.arange(len(polygons)), counts + 1))
    shapes = shapely.polygons(rings)
    invalid = ~shapely.is_valid(shapes)
    if invalid.any():
        shapes[invalid] = shapely.buffer(shapes[invalid], 0)
    area, length = shapely.area(shapes), shapely.length(shapes)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where((area > 0) & (length > 0), area * (1.0 - shrink_ratio**2) / length, 0.0)
    return distance


@njit(cache=True, nogil=True)
def _rasterize(  # pragma: no cover
    points, starts, distances, kinds, tolerance, thresh_min, thresh_span, shrink_map, shrink_mask, threshold_map, threshold_mask
):
    height, width = shrink_map.shape
    for p in range(distances.shape[0]):
        begin, count = starts[p], starts[p + 1] - starts[p]
        distance = distances[p]
        text = kinds[p] == 1
        grow = (distance if text else 0.0) + tolerance
        # per-edge constants: segment vector, 1/|e|^2, and the x-crossing slope
        ax = np.empty(count)
        ay = np.empty(count)
        bx = np.empty(count)
        by = np.empty(count)
        ex = np.empty(count)
        ey = np.empty(count)
        inv = np.empty(count)
        slope = np.empty(count)
        for e in range(count):
            nxt = begin + (e + 1) % count
            ax[e], ay[e] = points[begin + e, 0], points[begin + e, 1]
            bx[e], by[e] = points[nxt, 0], points[nxt, 1]
            ex[e], ey[e] = bx[e] - ax[e], by[e] - ay[e]
            length2 = ex[e] * ex[e] + ey[e] * ey[e]
            inv[e] = 1.0 / length2 if length2 > 0.0 else 0.0
            slope[e] = ex[e] / ey[e] if ey[e] != 0.0 else 0.0
        x0 = max(int(math.floor(ax.min() - grow)), 0)
        x1 = min(int(math.ceil(ax.max() + grow)), width - 1)
        y0 = max(int(math.floor(ay.min() - grow)), 0)
        y1 = min(int(math.ceil(ay.max() + grow)), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        box_w, box_h = x1 - x0 + 1, y1 - y0 + 1
        inside = np.zeros((box_h, box_w), dtype=np.bool_)
        crossings = np.empty(count)
        for row in range(box_h):
            py = float(y0 + row)
            found = 0
            for e in range(count):
                if (ay[e] > py) != (by[e] > py):
                    crossings[found] = ax[e] + (py - ay[e]) * slope[e]
                    found += 1
            # even-odd rule: a pixel centre px is inside when an odd number of crossings
            # lie right of it (px < c), i.e. px in [c1, c2) U [c3, c4) ... once sorted
            crossings[:found].sort()
            for k in range(0, found - 1, 2):
                start = max(int(math.ceil(crossings[k])) - x0, 0)
                stop = min(int(math.ceil(crossings[k + 1])) - x0, box_w)
                for col in range(start, stop):
                    inside[row, col] = True
        best = np.full((box_h, box_w), np.inf)
        for row in range(box_h):
            py = float(y0 + row)
            best_row = best[row]
            for e in range(count):
                # loop-invariant edge terms hoisted so the pixel loop is plain arithmetic
                edge_x, edge_y, edge_inv, start_x = ex[e], ey[e], inv[e], ax[e]
                dy = py - ay[e]
                for col in range(box_w):
                    dx = float(x0 + col) - start_x
                    t = min(max((dx * edge_x + dy * edge_y) * edge_inv, 0.0), 1.0)
                    qx = dx - t * edge_x
                    qy = dy - t * edge_y
                    best_row[col] = min(best_row[col], qx * qx + qy * qy)
        # squared distance -> distance, once per pixel
        for row in range(box_h):
            best_row = best[row]
            for col in range(box_w):
                best_row[col] = math.sqrt(best_row[col])
        if not text:  # don't care / too small / degenerate: out of the loss
            for row in range(box_h):
                for col in range(box_w):
                    if inside[row, col] or best[row, col] <= tolerance:
                        shrink_mask[y0 + row, x0 + col] = 0.0
            continue
        has_kernel = False
        for row in range(box_h):
            for col in range(box_w):
                if inside[row, col] and best[row, col] >= distance - tolerance:
                    has_kernel = True
                    break
            if has_kernel:
                break
        if not has_kernel:  # unshrinkable: ignore it rather than teach an empty word
            for row in range(box_h):
                for col in range(box_w):
                    if inside[row, col] or best[row, col] <= tolerance:
                        shrink_mask[y0 + row, x0 + col] = 0.0
            continue
        kernel_from, mask_to = distance - tolerance, distance + tolerance
        for row in range(box_h):
            # row views of this polygon's box: the pixel loop indexes 1-D arrays only
            inside_row, d_row = inside[row], best[row]
            shrink_row = shrink_map[y0 + row, x0 : x0 + box_w]
            mask_row = threshold_mask[y0 + row, x0 : x0 + box_w]
            threshold_row = threshold_map[y0 + row, x0 : x0 + box_w]
            for col in range(box_w):
                d = d_row[col]
                if inside_row[col] and d >= kernel_from:
                    shrink_row[col] = 1.0
                if inside_row[col] or d <= mask_to:
                    mask_row[col] = 1.0
                # computed in float64 and rounded once: float32 rounding is monotonic, so the
                # max of rounded values is the rounded max (the same bits as a float64 map)
                value = np.float32(thresh_min + thresh_span * (1.0 - min(d / distance, 1.0)))
                if value > threshold_row[col]:
                    threshold_row[col] = value


def classify(
    polygons: list[np.ndarray | None], ignore: np.ndarray, config: TargetConfig
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Usable polygons, their offset ``D`` and kind (TEXT or IGNORED)."""
    kept = [(p, bool(i)) for p, i in zip(polygons, ignore) if p is not None]
    shapes = [p for p, _ in kept]
    distances = offset_distances(shapes, config.shrink_ratio)
    if not shapes:
        return shapes, distances, np.empty(0, dtype=np.int64)
    # bounding-box extents of all polygons at once (one reduceat over the stacked points)
    points = np.concatenate(shapes)
    starts = np.cumsum([0] + [len(p) for p in shapes[:-1]])
    extent = np.maximum.reduceat(points, starts) - np.minimum.reduceat(points, starts)
    small = extent.min(axis=1) < config.min_text_size
    ignored = np.array([i for _, i in kept], dtype=bool)
    kinds = np.where(ignored | small | (distances <= 0), IGNORED, TEXT).astype(np.int64)
    return shapes, distances, kinds


def line_neighbours(polygons: list[np.ndarray], max_gap: float) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``: ``j`` is the nearest word right of ``i`` on the same line, at most
    ``max_gap`` times the lower word's height from it.

    Same line: the bounding boxes share at least half the lower one's height. Upright text is
    assumed (receipts are scanned upright; training rotates by a few degrees at most).
    """
    if len(polygons) < 2 or max_gap <= 0:
        return []
    boxes = np.array([[*p.min(axis=0), *p.max(axis=0)] for p in polygons])
    left, top, right, bottom = boxes.T
    height = bottom - top
    shared = np.minimum(bottom[:, None], bottom[None]) - np.maximum(top[:, None], top[None])
    lower = np.minimum(height[:, None], height[None])
    gap = left[None, :] - right[:, None]  # gap[i, j]: from i's right edge to j's left edge
    # a slight overlap of touching boxes still counts as neighbours
    candidate = (shared >= 0.5 * lower) & (left[None, :] > left[:, None]) & (gap > -0.25 * lower) & (gap <= max_gap * lower)
    gap = np.where(candidate, gap, np.inf)
    nearest = gap.argmin(axis=1)
    return [(i, int(j)) for i, j in enumerate(nearest) if np.isfinite(gap[i, j])]


def gap_polygons(shapes: list[np.ndarray], distances: np.ndarray, kinds: np.ndarray, max_gap: float) -> list[np.ndarray]:
    """The convex hull of each same-line neighbour pair's two kernels (shrunk polygons).

    Minus the kernels themselves (done by the caller with the shrink map), that is the
    background a merged detection of the two words would cover.
    """
    text = np.flatnonzero(kinds == TEXT)
    pairs = line_neighbours([shapes[t] for t in text], max_gap)
    if not pairs:
        return []
    first, second = (text[[pair[k] for pair in pairs]] for k in (0, 1))
    # one at a time: clipped polygons have different point counts
    words = np.array([shapely.Polygon(shapes[t]) for t in text])
    kernels = dict(zip(text, shapely.buffer(words, -distances[text], join_style="mitre")))
    hulls = shapely.convex_hull(shapely.union([kernels[i] for i in first], [kernels[j] for j in second]))
    # only pixel centres well inside: the hull's top and bottom edges run along the kernels'
    # outlines, and the pixels on them are kernel border, not gap
    hulls = shapely.buffer(hulls, -OUTLINE_TOLERANCE, join_style="mitre")
    return [np.asarray(hull.exterior.coords) for hull in hulls if isinstance(hull, shapely.Polygon) and not hull.is_empty]


def make_db_targets(
    shape: tuple[int, int],
    polygons: list[np.ndarray],
    ignore: list[bool] | np.ndarray | None = None,
    config: TargetConfig = TargetConfig(),
) -> dict[str, np.ndarray]:
    """Build DBNet targets for one image of ``shape`` (H, W).

    Returns float32 maps: ``shrink_map``, ``shrink_mask`` (0 where ignored), ``threshold_map``,
    ``threshold_mask``, and ``gap_mask`` when ``config.word_gap_max > 0``. Polygons
    may extend past the image; unusable ones (< 3 points, NaN) are skipped (annotations are
    validated before this point).
    """
    ignore = np.zeros(len(polygons), dtype=bool) if ignore is None else np.asarray(ignore, dtype=bool)
    shapes, distances, kinds = classify(usable_polygons(polygons), ignore, config)
    shrink_map = np.zeros(shape, dtype=np.float32)
    shrink_mask = np.ones(shape, dtype=np.float32)
    # written in float32 directly: full-size float64 scratch maps cost more in page faults
    # (fresh memory on every call) than the rasterisation itself
    threshold_map = np.full(shape, config.thresh_min, dtype=np.float32)
    threshold_mask = np.zeros(shape, dtype=np.float32)
    if shapes:
        points = np.ascontiguousarray(np.concatenate(shapes), dtype=np.float64)
        starts = np.concatenate([[0], np.cumsum([len(s) for s in shapes])]).astype(np.int64)
        _rasterize(
            points, starts, distances.astype(np.float64), kinds, OUTLINE_TOLERANCE,
            config.thresh_min, config.thresh_max - config.thresh_min,
            shrink_map, shrink_mask, threshold_map, threshold_mask,
        )
    maps = {
        "shrink_map": shrink_map,
        "shrink_mask": shrink_mask,
        "threshold_map": threshold_map,
        "threshold_mask": threshold_mask,
    }
    if config.word_gap_max > 0:  # off: no map at all, nothing to collate or move to the device
        gap_mask = np.zeros(shape, dtype=np.float32)
        hulls = gap_polygons(shapes, distances, kinds, config.word_gap_max) if shapes else []
        if hulls:
            # pixel centres: fillPoly samples at integer coordinates, 1/16 px fixed point
            cv2.fillPoly(gap_mask, [np.round(h * 16).astype(np.int32) for h in hulls], 1.0, lineType=cv2.LINE_8, shift=4)
            gap_mask *= (shrink_map == 0) * shrink_mask
        maps["gap_mask"] = gap_mask
    return maps
