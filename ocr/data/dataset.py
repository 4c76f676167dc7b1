"""Receipt text-detection dataset: image + polygons -> network input and DBNet targets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ocr.data.annotations import Sample, SplitReport, load_split, resolve_bad_image
from ocr.data.images import ImageReadError, read_image
from ocr.data.targets import TargetConfig, make_db_targets
from ocr.data.transforms import PolygonAugment, ResizeForEval
from ocr.geometry import NETWORK_MULTIPLE, ceil_to_multiple, exif_to_upright

__all__ = ["ImageReadError", "ReceiptDataset", "collate_receipts", "group_by_padded_size", "padded_size", "read_image"]

log = logging.getLogger(__name__)

TARGET_KEYS = ("shrink_map", "shrink_mask", "threshold_map", "threshold_mask")
OPTIONAL_TARGET_KEYS = ("gap_mask",)  # TargetConfig.word_gap_max > 0
# Maps that hold only 0 and 1 travel as uint8, a quarter of float32's bytes through the workers'
# shared memory, pinned memory and the copy to the GPU (exact: the loss converts them to float)
BINARY_TARGET_KEYS = ("shrink_map", "shrink_mask", "threshold_mask", "gap_mask")


class ReceiptDataset(Dataset):
    """One split of receipts.

    ``augment`` (training) or ``resize`` (evaluation) brings the image to network size;
    targets are built here so DataLoader workers carry the cost. Each item carries what is
    needed to map predictions back to the stored image frame and to score them.

    The split is checked when it is built (:func:`ocr.data.annotations.load_split`): ``report``
    says what was repaired or skipped. ``bad_image`` (``missing_image`` is its former name):
    ``"error"`` or ``"skip"`` for a missing or unreadable image; ``include_unlisted`` (predict)
    adds the folder's images the annotation does not list.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_path: str | Path | None = None,
        augment: PolygonAugment | None = None,
        resize: ResizeForEval | None = None,
        targets: TargetConfig | None = TargetConfig(),  # noqa: B008
        invalid_polygon: str = "skip",
        bad_image: str = "error",
        *,
        missing_image: str | None = None,
        split: str | None = None,
        include_unlisted: bool = False,
    ):
        if (augment is None) == (resize is None):
            raise ValueError("give exactly one of augment (training) or resize (evaluation)")
        bad_image = resolve_bad_image(bad_image, missing_image)
        loaded = load_split(image_dir, annotation_path, invalid_polygon, bad_image, split, include_unlisted)
        self.samples: list[Sample] = loaded.samples
        self.report: SplitReport = loaded.report
        self.augment, self.resize, self.targets = augment, resize, targets
        self.annotated = bool(self.samples) and all(s.annotated for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def read_upright(self, index: int) -> tuple[np.ndarray, list[np.ndarray], int, tuple[int, int]]:
        """Sample ``index``'s upright RGB page and its words' polygons in that frame, with the
        file's EXIF orientation and stored (width, height): the first stage of ``__getitem__``."""
        sample = self.samples[index]
        image, orientation, raw_size = read_image(sample.image_path)
        return image, [exif_to_upright(p, orientation, raw_size) for p in sample.polygons], orientation, raw_size

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, polygons, orientation, raw_size = self.read_upright(index)
        ignore = list(sample.ignore)
        scale = (1.0, 1.0)
        if self.augment is not None:
            image, polygons, ignore = self.augment(image, polygons, ignore)
        else:
            image, polygons, scale = self.resize(image, polygons)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # uint8; normalised on device
            "name": sample.name,
            "raw_size": raw_size,
            "orientation": orientation,
            "scale": scale,
            # ground truth in the stored frame, for metrics in original pixels
            "gt_polygons": sample.polygons,
            "gt_ignore": np.asarray(sample.ignore, dtype=bool),
            "gt_texts": sample.texts,
        }
        if sample.annotated and self.targets is not None:
            maps = make_db_targets(image.shape[:2], polygons, ignore, self.targets)
            for key, value in maps.items():
                item[key] = torch.from_numpy(value.astype(np.uint8) if key in BINARY_TARGET_KEYS else value)
        return item


def padded_size(height: int, width: int, multiple: int = NETWORK_MULTIPLE) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``multiple``."""
    return ceil_to_multiple(height, multiple), ceil_to_multiple(width, multiple)


def group_by_padded_size(valid_size: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int], list[int]]]:
    """The indices of a batch's images grouped by their own padded (height, width), in batch
    order; ``valid_size`` holds each image's (width, height) as ``collate_receipts`` gives it."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (width, height) in enumerate(valid_size):
        groups.setdefault(padded_size(height, width), []).append(i)
    return list(groups.items())


def collate_receipts(items: Sequence[dict[str, Any]], multiple: int = NETWORK_MULTIPLE) -> dict[str, Any]:
    """Pad images and maps to the batch's largest size (a multiple of 32) at the bottom/right.

    Padding is excluded from the loss (masks are 0 there) and ``valid_size`` tells
    post-processing where the real image ends.
    """
    heights = [item["image"].shape[1] for item in items]
    widths = [item["image"].shape[2] for item in items]
    pad_h, pad_w = padded_size(max(heights), max(widths), multiple)
    batch: dict[str, Any] = {"valid_size": [(w, h) for w, h in zip(widths, heights)]}
    if len(items) == 1 and (heights[0], widths[0]) == (pad_h, pad_w):
        batch["image"] = items[0]["image"][None]  # nothing to pad (eval sizes are multiples of 32): no copy
    else:
        batch["image"] = torch.zeros((len(items), 3, pad_h, pad_w), dtype=torch.uint8)
        for i, item in enumerate(items):
            batch["image"][i, :, : heights[i], : widths[i]] = item["image"]
    if all(key in item for item in items for key in TARGET_KEYS):
        optional = [key for key in OPTIONAL_TARGET_KEYS if all(key in item for item in items)]
        for key in (*TARGET_KEYS, *optional):
            maps = torch.zeros((len(items), pad_h, pad_w), dtype=items[0][key].dtype)
            for i, item in enumerate(items):
                maps[i, : heights[i], : widths[i]] = item[key]
            batch[key] = maps
    for key in ("name", "raw_size", "orientation", "scale", "gt_polygons", "gt_ignore", "gt_texts"):
        batch[key] = [item[key] for item in items]
    return batch
