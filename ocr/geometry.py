"""Plain geometry shared by the data pipeline, post-processing and submissions."""

from __future__ import annotations

import numpy as np
from shapely.geometry import MultiPolygon, Polygon, box

# The FPN halves the input five times: network input sides are multiples of this
NETWORK_MULTIPLE = 32


def round_to_multiple(value: float, multiple: int = NETWORK_MULTIPLE) -> int:
    """``value`` rounded to the nearest multiple of ``multiple``, at least ``multiple``."""
    return max(multiple, int(round(value / multiple)) * multiple)


def ceil_to_multiple(value: int, multiple: int = NETWORK_MULTIPLE) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (padding)."""
    return -(-value // multiple) * multiple

EXIF_ORIENTATION_TAG = 0x0112


def exif_to_upright(points: np.ndarray, orientation: int, raw_size: tuple[int, int]) -> np.ndarray:
    """Map points from the stored JPEG frame to the frame PIL's ``exif_transpose`` shows.

    ``raw_size`` is the stored (width, height); pixel centres sit on integer coordinates,
    so a flip maps ``x`` to ``width - 1 - x``.
    """
    if orientation not in (2, 3, 4, 5, 6, 7, 8):  # upright already (1, or no tag): the common case
        return np.array(points[..., :2], dtype=np.float64)
    w, h = raw_size
    x, y = points[..., 0], points[..., 1]
    # only the mapping asked for: this runs for every word of every training sample
    if orientation == 2:
        nx, ny = w - 1 - x, y
    elif orientation == 3:
        nx, ny = w - 1 - x, h - 1 - y
    elif orientation == 4:
        nx, ny = x, h - 1 - y
    elif orientation == 5:
        nx, ny = y, x
    elif orientation == 6:
        nx, ny = h - 1 - y, x
    elif orientation == 7:
        nx, ny = h - 1 - y, w - 1 - x
    else:
        nx, ny = y, w - 1 - x
    return np.stack([nx, ny], axis=-1).astype(np.float64)


# the orientation that undoes each EXIF orientation (6 and 8 are quarter turns of opposite sense;
# the flips and the half turn undo themselves)
INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def upright_to_exif(points: np.ndarray, orientation: int, raw_size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`exif_to_upright` (predictions back to the stored JPEG frame): the inverse
    orientation applied in the upright frame, whose size is ``upright_size(orientation, raw_size)``."""
    inverse = INVERSE_ORIENTATION.get(orientation, 1)
    return exif_to_upright(points, inverse, upright_size(orientation, raw_size))


def upright_size(orientation: int, raw_size: tuple[int, int]) -> tuple[int, int]:
    w, h = raw_size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def clip_polygon_to_frame(polygon: np.ndarray, width: int, height: int, min_area: float = 1.0) -> np.ndarray | None:
    """Clip a polygon to ``[0, width-1] x [0, height-1]``.

    Returns the polygon unchanged when it is inside, the clipped outline when it crosses the
    border, and ``None`` when nothing (or only a sliver under ``min_area``) is left. A polygon
    cut in several pieces keeps its largest piece.
    """
    xmax, ymax = width - 1, height - 1
    (low_x, low_y), (high_x, high_y) = polygon.min(axis=0), polygon.max(axis=0)
    if low_x >= 0 and low_y >= 0 and high_x <= xmax and high_y <= ymax:
        return polygon
    # bounds that share no area with the frame: nothing would be left (a crop drops most words so)
    if high_x <= 0 or high_y <= 0 or low_x >= xmax or low_y >= ymax:
        return None
    shape = Polygon(polygon)
    if not shape.is_valid:
        shape = shape.buffer(0)
    clipped = shape.intersection(box(0, 0, xmax, ymax))
    if isinstance(clipped, MultiPolygon):
        clipped = max(clipped.geoms, key=lambda g: g.area)
    if not isinstance(clipped, Polygon) or clipped.is_empty or clipped.area < min_area:
        return None
    return np.asarray(clipped.exterior.coords[:-1], dtype=np.float64)


def bounds_overlap(
    a: tuple[float, float, float, float] | np.ndarray, b: tuple[float, float, float, float] | np.ndarray
) -> bool | np.ndarray:
    """Whether axis-aligned bounding boxes touch or overlap, i.e. are not disjoint.

    ``a`` and ``b`` each unpack into ``minx, miny, maxx, maxy``: one box as four floats (a shapely
    ``bounds`` tuple, the fast form for one pair), or arrays whose first axis holds the four
    bounds, the rest broadcasting: ``bounds_overlap(ba.T[:, :, None], bb.T[:, None])`` is the dense
    ``(len(ba), len(bb))`` mask of two ``shapely.bounds`` arrays. Disjoint boxes cannot intersect,
    so geometry work is skipped for them. NaN bounds (an empty geometry) never overlap.
    """
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    return (ax0 <= bx1) & (bx0 <= ax1) & (ay0 <= by1) & (by0 <= ay1)
