"""DBNet post-processing: probability map -> text polygons in original image pixels.

One implementation, used by validation, test, predict and the benchmarks. The per-contour
loops only call OpenCV/pyclipper; everything that can be done for all boxes at once (the
unclip distances, rounding for pyclipper, ordering, scaling back, clipping, EXIF frame) is
vectorised between them. Every vectorised step computes bit-for-bit what the OpenCV call it
replaces computes (tests/test_postprocess.py holds it to the first version's output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import pyclipper

from ocr.geometry import upright_size, upright_to_exif


@dataclass
class Detections:
    polygons: list[np.ndarray] = field(default_factory=list)  # (N, 2) float64, original pixels
    scores: list[float] = field(default_factory=list)


def unclip(polygon: np.ndarray, unclip_ratio: float) -> np.ndarray | None:
    """Grow a polygon by ``D = A * unclip_ratio / L`` (DBNet's inverse of the shrink)."""
    points = polygon if polygon.dtype == np.float32 else polygon.astype(np.float32)
    area = cv2.contourArea(points)
    length = cv2.arcLength(points, True)
    if area <= 0 or length <= 0:
        return None
    offsetter = pyclipper.PyclipperOffset()
    offsetter.AddPath(np.round(polygon).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    paths = offsetter.Execute(area * unclip_ratio / length)
    if len(paths) != 1:
        return None
    return np.asarray(paths[0], dtype=np.float32)


def rectangle_area_and_length(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.contourArea`` and ``cv2.arcLength(closed=True)`` of (N, 4, 2) float32 corners, for all
    N at once, with OpenCV's arithmetic: the shoelace terms in float64 summed in point order,
    the edge lengths in float32 summed in float64. Same bits as the OpenCV calls, so the unclip
    distance (and pyclipper's integer output) cannot move."""
    previous = np.roll(corners, 1, axis=1)
    x0, y0 = previous[..., 0].astype(np.float64), previous[..., 1].astype(np.float64)
    x1, y1 = corners[..., 0].astype(np.float64), corners[..., 1].astype(np.float64)
    terms = x0 * y1 - y0 * x1
    area = np.abs((((terms[:, 0] + terms[:, 1]) + terms[:, 2]) + terms[:, 3]) * 0.5)
    edges = corners - previous
    edge = np.sqrt(edges[..., 0] * edges[..., 0] + edges[..., 1] * edges[..., 1]).astype(np.float64)
    return area, ((edge[:, 0] + edge[:, 1]) + edge[:, 2]) + edge[:, 3]


def box_score(prob_map: np.ndarray, contour: np.ndarray) -> float:
    """Mean probability inside an integer ``contour`` ((N, 1, 2) int32), over its bounding box."""
    x, y, w, h = cv2.boundingRect(contour)
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [contour], 1, offset=(-x, -y))
    return cv2.mean(prob_map[y : y + h, x : x + w], mask)[0]


def order_quads(quads: np.ndarray) -> np.ndarray:
    """Order each of (N, 4, 2) quads clockwise on screen from the top-left, like the annotations:
    the two leftmost points (stable by x) are top-left/bottom-left by y, the others right."""
    by_x = np.take_along_axis(quads, np.argsort(quads[..., 0], axis=1, kind="stable")[..., None], axis=1)
    left, right = by_x[:, :2], by_x[:, 2:]
    swap_left = left[:, 1, 1] < left[:, 0, 1]
    swap_right = right[:, 1, 1] < right[:, 0, 1]
    left = np.where(swap_left[:, None, None], left[:, ::-1], left)
    right = np.where(swap_right[:, None, None], right[:, ::-1], right)
    return np.stack([left[:, 0], right[:, 0], right[:, 1], left[:, 1]], axis=1)


def split_at_cores(bitmap: np.ndarray, cores: np.ndarray, min_core_area: float) -> np.ndarray:
    """Cut each region of ``bitmap`` that contains two or more ``cores`` (connected parts of the
    higher-threshold mask of at least ``min_core_area`` pixels) along the line where the nearest
    of its cores changes; regions with fewer cores are returned untouched.

    Within a region every pixel is given its nearest core (OpenCV's labelled distance transform);
    pixels with a 4-neighbour of another core's are cleared, which leaves no 8-connected path
    across the cut, so ``cv2.findContours`` sees the parts as separate contours.
    """
    core_count, core_labels, core_stats, _ = cv2.connectedComponentsWithStats(cores.view(np.uint8), connectivity=8)
    big = np.flatnonzero(core_stats[1:, cv2.CC_STAT_AREA] >= min_core_area) + 1
    if len(big) < 2:
        return bitmap
    region_count, region_labels, region_stats, _ = cv2.connectedComponentsWithStats(bitmap, connectivity=8)
    # the region of every core (cores lie inside the bitmap, as split_thresh > thresh)
    core_region = np.zeros(core_count, dtype=np.int64)
    core_region[core_labels[cores]] = region_labels[cores]
    to_split = np.flatnonzero(np.bincount(core_region[big], minlength=region_count) >= 2)
    if not len(to_split):
        return bitmap
    is_big = np.zeros(core_count, dtype=bool)
    is_big[big] = True
    cut = bitmap.copy()
    for region in to_split:
        x, y, w, h = region_stats[region, :4]
        window = np.s_[y : y + h, x : x + w]
        inside = region_labels[window] == region
        own_cores = inside & is_big[core_labels[window]]
        # zero pixels are the sources: every pixel gets the label of its nearest own core
        _, nearest = cv2.distanceTransformWithLabels(
            (~own_cores).view(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP
        )
        boundary = np.zeros_like(inside)
        horizontal = nearest[:, 1:] != nearest[:, :-1]
        vertical = nearest[1:, :] != nearest[:-1, :]
        boundary[:, 1:] |= horizontal
        boundary[:, :-1] |= horizontal
        boundary[1:, :] |= vertical
        boundary[:-1, :] |= vertical
        cut[window][inside & boundary] = 0
    return cut


@dataclass
class DBPostProcessor:
    thresh: float = 0.3
    box_thresh: float = 0.6
    max_candidates: int = 1000
    use_polygon: bool = False
    box_unclip_ratio: float = 1.5
    polygon_unclip_ratio: float = 2.0
    min_size: float = 3.0
    # Cut a region found at ``thresh`` where it holds two or more separate cores above
    # ``split_thresh`` (None: off). Neighbouring words of a line often touch at a low threshold
    # while each keeps its own core at a higher one; faint small print has no core there and
    # stays as it is, which a plain higher ``thresh`` would lose. On SROIE, whose labels keep some
    # lines whole, it scored below leaving regions whole (docs/experiments.md): off there.
    split_thresh: float | None = None

    def __post_init__(self) -> None:
        if self.split_thresh is not None and not self.thresh < self.split_thresh < 1:
            raise ValueError(f"split_thresh must lie between thresh ({self.thresh}) and 1, got {self.split_thresh}")

    def __call__(
        self,
        prob_map: np.ndarray,
        scale: tuple[float, float] = (1.0, 1.0),
        raw_size: tuple[int, int] | None = None,
        orientation: int = 1,
        thresh_map: np.ndarray | None = None,
    ) -> Detections:
        """``prob_map``: (H, W) probabilities of the valid (unpadded) network input.

        ``scale`` is network pixels per original pixel along x and y; ``raw_size`` the stored
        image's (width, height) and ``orientation`` its EXIF tag: polygons come back in the
        stored image's frame, clipped to it. ``thresh_map``: a per-pixel threshold of the same
        shape (the network's threshold branch: DB's binary map at inference); a pixel is text
        where its probability is above both it and ``thresh``.
        """
        prob_map = np.asarray(prob_map, dtype=np.float32)
        threshold = self.thresh if thresh_map is None else np.maximum(np.asarray(thresh_map, dtype=np.float32), self.thresh)
        # the bool mask's bytes are 0/1 already: view them as uint8 rather than copy a page-sized map
        bitmap = (prob_map > threshold).view(np.uint8)
        if self.split_thresh is not None:
            bitmap = split_at_cores(bitmap, prob_map > self.split_thresh, min_core_area=self.min_size**2)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        candidates: list[tuple[float, np.ndarray]] = []
        for contour in contours:
            if len(contour) < 3:
                continue
            score = box_score(prob_map, contour)
            if score >= self.box_thresh:
                candidates.append((score, contour))
        # the best candidates, not the first ones found, when there are too many
        candidates.sort(key=lambda item: -item[0])
        candidates = candidates[: self.max_candidates]

        if raw_size is None:
            raw_size = (int(round(prob_map.shape[1] / scale[0])), int(round(prob_map.shape[0] / scale[1])))
        if self.use_polygon:
            shapes, scores = [], []
            for score, contour in candidates:
                polygon = self._polygon(contour)
                if polygon is not None:
                    shapes.append(polygon)
                    scores.append(float(score))
        else:
            shapes, scores = self._quads(candidates)
        if not len(shapes):
            return Detections()
        return Detections(self._to_original(shapes, scale, raw_size, orientation), scores)

    @staticmethod
    def _to_original(polygons: np.ndarray | list[np.ndarray], scale, raw_size, orientation) -> list[np.ndarray]:
        """Network pixels -> upright original pixels (clipped) -> stored image frame, for (N, 4, 2)
        quads or a list of polygons, all points at once."""
        up_w, up_h = upright_size(orientation, raw_size)
        points = np.concatenate(polygons, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
        points[:, 0] = np.clip(points[:, 0], 0, up_w - 1)
        points[:, 1] = np.clip(points[:, 1], 0, up_h - 1)
        points = upright_to_exif(points, orientation, raw_size)
        if isinstance(polygons, np.ndarray):
            return list(points.reshape(-1, 4, 2))
        return np.split(points, np.cumsum([len(p) for p in polygons])[:-1])

    def _quads(self, candidates: list[tuple[float, np.ndarray]]) -> tuple[np.ndarray, list[float]]:
        """Boxes of all candidates: min-area rectangle, unclipped, min-area rectangle again.

        The three per-box OpenCV/pyclipper calls stay in the loops; their inputs (the unclip
        distance, pyclipper's integer path) are computed for all boxes at once in between.
        """
        # minAreaRect takes the int32 contour as is: it converts the hull to float32 itself
        rects = [cv2.minAreaRect(contour) for _, contour in candidates]
        kept = [i for i, rect in enumerate(rects) if min(rect[1]) >= self.min_size]
        if not kept:
            return np.empty((0, 4, 2)), []
        corners = np.stack([cv2.boxPoints(rects[i]) for i in kept])  # float32, as unclip measures them
        area, length = rectangle_area_and_length(corners)
        distances = (area * self.box_unclip_ratio / np.where(length > 0, length, 1.0)).tolist()
        paths = np.round(corners).astype(np.int64).tolist()
        offsetter = pyclipper.PyclipperOffset()
        quads, scores = [], []
        for i, path, distance, positive in zip(kept, paths, distances, ((area > 0) & (length > 0)).tolist()):
            if not positive:
                continue
            offsetter.Clear()
            offsetter.AddPath(path, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
            grown = offsetter.Execute(distance)
            if len(grown) != 1:
                continue
            rect = cv2.minAreaRect(np.asarray(grown[0], dtype=np.int32))
            if min(rect[1]) < self.min_size + 2:
                continue
            quads.append(cv2.boxPoints(rect))
            scores.append(float(candidates[i][0]))
        if not quads:
            return np.empty((0, 4, 2)), []
        return order_quads(np.stack(quads).astype(np.float64)), scores

    def _polygon(self, contour: np.ndarray) -> np.ndarray | None:
        points = contour.reshape(-1, 2).astype(np.float32)
        epsilon = 0.002 * cv2.arcLength(points, True)
        approx = cv2.approxPolyDP(points, epsilon, True).reshape(-1, 2).astype(np.float64)
        if len(approx) < 4:
            approx = points.astype(np.float64)
        grown = unclip(approx, self.polygon_unclip_ratio)
        if grown is None:
            return None
        rect = cv2.minAreaRect(grown)
        if min(rect[1]) < self.min_size + 2:
            return None
        return grown.astype(np.float64)
