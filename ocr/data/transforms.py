"""Image + polygon transforms.

Training augmentation runs through albumentations with every polygon vertex as a keypoint
(``remove_invisible=False`` so vertex order and count survive); afterwards each polygon is
clipped to the frame, or dropped when nothing of it is left. Vertices are tracked per polygon
by index, so no polygon ever borrows another's points.

Evaluation resizing is deterministic and invertible (``ResizeForEval``) so that predictions
map back to original pixels exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from ocr.geometry import NETWORK_MULTIPLE, clip_polygon_to_frame, round_to_multiple


def resize_scale(width: int, height: int, image_size: int, mode: str = "long_side", long_side_cap: int | None = None) -> float:
    """The factor that sizes an image for the network: the long side (``mode="long_side"``) or
    the short side (``"short_side"``, the long side capped at ``long_side_cap``) becomes
    ``image_size``. Shared by inference resizing and the training scale, so training sees text
    at the size inference gives it."""
    if mode == "long_side":
        return image_size / max(width, height)
    if mode == "short_side":
        scale = image_size / min(width, height)
        return min(scale, long_side_cap / max(width, height)) if long_side_cap else scale
    raise ValueError(f"resize mode must be 'long_side' or 'short_side', got {mode!r}")


@dataclass
class ResizeForEval:
    """Resize for inference, to sides that are multiples of ``multiple`` (32 for the FPN).

    ``mode="long_side"``: the long side becomes ``image_size``.
    ``mode="short_side"``: the short side becomes ``image_size`` unless that would push the
    long side past ``long_side_cap``; receipts are tall, so this keeps small text legible
    without exploding the page size.
    """

    image_size: int
    mode: str = "long_side"
    long_side_cap: int | None = None
    multiple: int = NETWORK_MULTIPLE

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        scale = resize_scale(width, height, self.image_size, self.mode, self.long_side_cap)
        return round_to_multiple(width * scale, self.multiple), round_to_multiple(height * scale, self.multiple)

    def __call__(
        self, image: np.ndarray, polygons: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray], tuple[float, float]]:
        height, width = image.shape[:2]
        new_w, new_h = self.target_size(width, height)
        scale = (new_w / width, new_h / height)
        interpolation = cv2.INTER_AREA if new_w < width else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        return resized, [p * np.asarray(scale) for p in polygons], scale


class PolygonAugment:
    """An albumentations pipeline applied to an image and its polygons.

    ``seed``: the same draws on every call sequence, in every process, as albumentations'
    ``Compose(seed=...)`` (a fixed perturbation of a benchmark set). ``None`` (training): the
    pipeline is seeded on its first call in each process from numpy's global generator, which
    ``seed_everything(seed, workers=True)`` and the DataLoader seed per run, worker and rank, so a
    run's crops repeat with its ``seed`` and differ between workers; albumentations' own
    generators are not reached by global seeding, and left unseeded they draw from the OS."""

    def __init__(self, transforms: Sequence[A.BasicTransform], min_area: float = 4.0, seed: int | None = None):
        self.pipeline = A.Compose(
            list(transforms), keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), seed=seed
        )
        self.min_area = min_area
        self.seed = seed
        self._seeded_in_process: int | None = None

    def _seed_once_per_process(self) -> None:
        if self.seed is not None or self._seeded_in_process == os.getpid():
            return
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        drawn = int(np.random.randint(0, 2**31 - 1))  # the process's seeded stream: worker-distinct
        self.pipeline.set_random_seed(int(np.random.SeedSequence([drawn, rank]).generate_state(1)[0]))
        self._seeded_in_process = os.getpid()

    def move(self, image: np.ndarray, polygons: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The transformed image and every polygon's vertices moved with it, in order, unclipped."""
        keypoints = np.concatenate(polygons, axis=0) if len(polygons) else np.zeros((0, 2))
        self._seed_once_per_process()
        out = self.pipeline(image=image, keypoints=keypoints)
        moved = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
        if len(moved) != len(keypoints):  # would mean vertices were dropped and mixed up
            raise RuntimeError("augmentation changed the number of polygon vertices; keep remove_invisible=False")
        ends = np.cumsum([len(polygon) for polygon in polygons])
        return out["image"], list(np.split(moved, ends[:-1])) if len(polygons) else []

    def __call__(
        self, image: np.ndarray, polygons: Sequence[np.ndarray], ignore: Sequence[bool]
    ) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
        image, moved = self.move(image, polygons)
        height, width = image.shape[:2]
        kept_polygons: list[np.ndarray] = []
        kept_ignore: list[bool] = []
        for points, ignored in zip(moved, ignore):
            clipped = clip_polygon_to_frame(points, width, height, self.min_area)
            if clipped is not None:
                kept_polygons.append(clipped)
                kept_ignore.append(bool(ignored))
        return image, kept_polygons, kept_ignore


class TextAwareRandomCrop(A.DualTransform):
    """Random ``height x width`` crop (padding first when the image is smaller) that, with
    probability ``text_prob``, is centred near a random text polygon so crops rarely come out
    empty. Receives the polygon vertices as keypoints."""

    def __init__(self, height: int, width: int, text_prob: float = 0.9, fill: int = 0, p: float = 1.0):
        super().__init__(p=p)
        self.height, self.width, self.text_prob, self.fill = int(height), int(width), text_prob, fill

    @property
    def targets_as_params(self) -> list[str]:
        return ["image", "keypoints"]

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image_h, image_w = params["shape"][:2]
        keypoints = np.asarray(data.get("keypoints", np.zeros((0, 2))))
        max_x, max_y = max(image_w - self.width, 0), max(image_h - self.height, 0)
        if len(keypoints) and self.py_random.random() < self.text_prob:
            anchor = keypoints[self.py_random.randrange(len(keypoints)), :2]
            x0 = anchor[0] - self.py_random.uniform(0.1, 0.9) * self.width
            y0 = anchor[1] - self.py_random.uniform(0.1, 0.9) * self.height
        else:
            x0, y0 = self.py_random.uniform(0, max_x), self.py_random.uniform(0, max_y)
        x0 = int(min(max(x0, 0), max_x))
        y0 = int(min(max(y0, 0), max_y))
        return {"x0": x0, "y0": y0}

    def apply(self, img: np.ndarray, x0: int = 0, y0: int = 0, **params) -> np.ndarray:
        crop = img[y0 : y0 + self.height, x0 : x0 + self.width]
        pad_h, pad_w = self.height - crop.shape[0], self.width - crop.shape[1]
        if pad_h or pad_w:
            crop = cv2.copyMakeBorder(crop, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.fill)
        return crop

    def apply_to_keypoints(self, keypoints: np.ndarray, x0: int = 0, y0: int = 0, **params) -> np.ndarray:
        keypoints = keypoints.copy()
        keypoints[:, 0] -= x0
        keypoints[:, 1] -= y0
        return keypoints

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "text_prob", "fill")


class RandomRescale(A.DualTransform):
    """Scale by the inference sizing rule (:func:`resize_scale`: ``mode``, ``image_size``,
    ``long_side_cap``) times a random factor from ``scale_range``; training then sees text at
    the scale ``ResizeForEval`` gives it at inference, give or take the jitter."""

    def __init__(
        self,
        image_size: int,
        scale_range: tuple[float, float] = (1.0, 1.0),
        mode: str = "long_side",
        long_side_cap: int | None = None,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        resize_scale(1, 1, image_size, mode, long_side_cap)  # fail on a bad mode at construction
        scale_range = tuple(scale_range)
        # a zero or negative factor would shrink every page to a pixel, not fail
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        self.image_size, self.scale_range, self.mode, self.long_side_cap = image_size, scale_range, mode, long_side_cap

    @property
    def targets_as_params(self) -> list[str]:
        return ["image"]

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image_h, image_w = params["shape"][:2]
        scale = resize_scale(image_w, image_h, self.image_size, self.mode, self.long_side_cap)
        scale *= self.py_random.uniform(*self.scale_range)
        size = (max(1, int(round(image_w * scale))), max(1, int(round(image_h * scale))))
        # keypoints use the factors of the rounded size so they stay on the resized pixels
        return {"size": size, "factors": (size[0] / image_w, size[1] / image_h)}

    def apply(self, img: np.ndarray, size: tuple[int, int] = (1, 1), factors=(1.0, 1.0), **params) -> np.ndarray:
        shrinking = size[0] < img.shape[1]
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    def apply_to_keypoints(self, keypoints: np.ndarray, size=(1, 1), factors=(1.0, 1.0), **params) -> np.ndarray:
        keypoints = keypoints.copy()
        keypoints[:, 0] *= factors[0]
        keypoints[:, 1] *= factors[1]
        return keypoints

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("image_size", "scale_range", "mode", "long_side_cap")
