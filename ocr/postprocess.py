"""DBNet post-processing: probability map -> text polygons in original image pixels.

One implementation, used by validation, test, predict and the benchmarks. The per-contour
loop only calls OpenCV/pyclipper; everything that can be done for all boxes at once
(ordering, scaling back, clipping, EXIF frame) is vectorised after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import pyclipper

from ocr.data.geometry import upright_size, upright_to_exif


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


@dataclass
class DBPostProcessor:
    thresh: float = 0.3
    box_thresh: float = 0.6
    max_candidates: int = 1000
    use_polygon: bool = False
    box_unclip_ratio: float = 1.5
    polygon_unclip_ratio: float = 2.0
    min_size: float = 3.0

    def __call__(
        self,
        prob_map: np.ndarray,
        scale: tuple[float, float] = (1.0, 1.0),
        raw_size: tuple[int, int] | None = None,
        orientation: int = 1,
    ) -> Detections:
        """``prob_map``: (H, W) probabilities of the valid (unpadded) network input.

        ``scale`` is network pixels per original pixel along x and y; ``raw_size`` the stored
        image's (width, height) and ``orientation`` its EXIF tag: polygons come back in the
        stored image's frame, clipped to it.
        """
        prob_map = np.asarray(prob_map, dtype=np.float32)
        bitmap = (prob_map > self.thresh).astype(np.uint8)
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
        shapes, scores = [], []
        for score, contour in candidates:
            polygon = self._polygon(contour) if self.use_polygon else self._quad(contour)
            if polygon is not None:
                shapes.append(polygon)
                scores.append(float(score))
        if not shapes:
            return Detections()
        if not self.use_polygon:
            shapes = list(order_quads(np.stack(shapes)))
        return Detections(self._to_original([np.asarray(s, np.float64) for s in shapes], scale, raw_size, orientation), scores)

    @staticmethod
    def _to_original(polygons: list[np.ndarray], scale, raw_size, orientation) -> list[np.ndarray]:
        """Network pixels -> upright original pixels (clipped) -> stored image frame."""
        up_w, up_h = upright_size(orientation, raw_size)
        points = np.concatenate(polygons) / np.asarray(scale, dtype=np.float64)
        points[:, 0] = np.clip(points[:, 0], 0, up_w - 1)
        points[:, 1] = np.clip(points[:, 1], 0, up_h - 1)
        points = upright_to_exif(points, orientation, raw_size)
        return np.split(points, np.cumsum([len(p) for p in polygons])[:-1])

    def _quad(self, contour: np.ndarray) -> np.ndarray | None:
        rect = cv2.minAreaRect(contour.reshape(-1, 2).astype(np.float32))
        if min(rect[1]) < self.min_size:
            return None
        # boxPoints is float32, exactly what unclip measures the area of: no conversions
        grown = unclip(cv2.boxPoints(rect), self.box_unclip_ratio)
        if grown is None:
            return None
        rect = cv2.minAreaRect(grown)
        if min(rect[1]) < self.min_size + 2:
            return None
        return cv2.boxPoints(rect).astype(np.float64)

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
