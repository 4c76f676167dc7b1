"""The post-processor as it was before it was optimised (kept to assert identical output).

A verbatim copy of ``ocr/models/postprocess.py`` as first released: one contour at a time, with
numpy per box. ``tests/test_postprocess.py`` checks the optimised version against it and
``benchmarks/speed.py`` reports both.
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
    area = cv2.contourArea(polygon.astype(np.float32))
    length = cv2.arcLength(polygon.astype(np.float32), True)
    if area <= 0 or length <= 0:
        return None
    offsetter = pyclipper.PyclipperOffset()
    offsetter.AddPath(np.round(polygon).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    paths = offsetter.Execute(area * unclip_ratio / length)
    if len(paths) != 1:
        return None
    return np.asarray(paths[0], dtype=np.float64)


def box_score(prob_map: np.ndarray, contour: np.ndarray) -> float:
    """Mean probability inside ``contour``, computed over its bounding box only."""
    height, width = prob_map.shape
    x0, y0 = np.clip(np.floor(contour.min(axis=0)).astype(int), 0, [width - 1, height - 1])
    x1, y1 = np.clip(np.ceil(contour.max(axis=0)).astype(int), 0, [width - 1, height - 1])
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(contour - [x0, y0]).astype(np.int32)], 1)
    return float(cv2.mean(prob_map[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


@dataclass
class ReferenceDBPostProcessor:
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
            contour = contour.reshape(-1, 2).astype(np.float64)
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
        up_w, up_h = upright_size(orientation, raw_size)
        detections = Detections()
        for score, contour in candidates:
            polygon = self._to_polygon(contour)
            if polygon is None:
                continue
            polygon = polygon / np.asarray(scale, dtype=np.float64)
            polygon[:, 0] = np.clip(polygon[:, 0], 0, up_w - 1)
            polygon[:, 1] = np.clip(polygon[:, 1], 0, up_h - 1)
            detections.polygons.append(upright_to_exif(polygon, orientation, raw_size))
            detections.scores.append(score)
        return detections

    def _to_polygon(self, contour: np.ndarray) -> np.ndarray | None:
        if self.use_polygon:
            epsilon = 0.002 * cv2.arcLength(contour.astype(np.float32), True)
            approx = cv2.approxPolyDP(contour.astype(np.float32), epsilon, True).reshape(-1, 2).astype(np.float64)
            if len(approx) < 4:
                approx = contour
            grown = unclip(approx, self.polygon_unclip_ratio)
            if grown is None:
                return None
            rect = cv2.minAreaRect(grown.astype(np.float32))
            if min(rect[1]) < self.min_size + 2:
                return None
            return grown
        rect = cv2.minAreaRect(contour.astype(np.float32))
        if min(rect[1]) < self.min_size:
            return None
        grown = unclip(cv2.boxPoints(rect).astype(np.float64), self.box_unclip_ratio)
        if grown is None:
            return None
        rect = cv2.minAreaRect(grown.astype(np.float32))
        if min(rect[1]) < self.min_size + 2:
            return None
        return order_quad(cv2.boxPoints(rect).astype(np.float64))


def order_quad(points: np.ndarray) -> np.ndarray:
    """Order 4 points clockwise on screen starting at the top-left, like the annotations."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    top_left, bottom_left = left[np.argsort(left[:, 1], kind="stable")]
    top_right, bottom_right = right[np.argsort(right[:, 1], kind="stable")]
    return np.stack([top_left, top_right, bottom_right, bottom_left])
