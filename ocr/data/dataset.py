"""Receipt text-detection dataset: image + polygons -> network input and DBNet targets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from ocr.data.annotations import Sample, load_samples
from ocr.data.geometry import EXIF_ORIENTATION_TAG, exif_to_upright
from ocr.data.targets import TargetConfig, make_db_targets
from ocr.data.transforms import PolygonAugment, ResizeForEval

log = logging.getLogger(__name__)

TARGET_KEYS = ("shrink_map", "shrink_mask", "threshold_map", "threshold_mask")
OPTIONAL_TARGET_KEYS = ("gap_mask",)  # TargetConfig.word_gap_max > 0


class ImageReadError(OSError):
    """An image file that cannot be read; the message names the file."""


def read_image(path: Path) -> tuple[np.ndarray, int, tuple[int, int]]:
    """RGB uint8 array with EXIF orientation applied, the orientation and the stored (w, h)."""
    try:
        with Image.open(path) as image:
            orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            raw_size = image.size
            upright = ImageOps.exif_transpose(image).convert("RGB")
            return np.asarray(upright), orientation, raw_size
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from None


class ReceiptDataset(Dataset):
    """One split of receipts.

    ``augment`` (training) or ``resize`` (evaluation) brings the image to network size;
    targets are built here so DataLoader workers carry the cost. Each item carries what is
    needed to map predictions back to the stored image frame and to score them.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_path: str | Path | None = None,
        augment: PolygonAugment | None = None,
        resize: ResizeForEval | None = None,
        targets: TargetConfig | None = TargetConfig(),
        invalid_polygon: str = "skip",
        missing_image: str = "error",
    ):
        if (augment is None) == (resize is None):
            raise ValueError("give exactly one of augment (training) or resize (evaluation)")
        self.samples: list[Sample] = load_samples(image_dir, annotation_path, invalid_polygon, missing_image)
        self.augment, self.resize, self.targets = augment, resize, targets
        self.annotated = bool(self.samples) and all(s.annotated for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, orientation, raw_size = read_image(sample.image_path)
        polygons = [exif_to_upright(p, orientation, raw_size) for p in sample.polygons]
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
            item.update({key: torch.from_numpy(value) for key, value in maps.items()})
        return item


PAD_MULTIPLE = 32  # the FPN halves the input five times


def padded_size(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``multiple``."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def group_by_padded_size(valid_size: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int], list[int]]]:
    """The indices of a batch's images grouped by their own padded (height, width), in batch
    order; ``valid_size`` holds each image's (width, height) as ``collate_receipts`` gives it."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (width, height) in enumerate(valid_size):
        groups.setdefault(padded_size(height, width), []).append(i)
    return list(groups.items())


def collate_receipts(items: Sequence[dict[str, Any]], multiple: int = PAD_MULTIPLE) -> dict[str, Any]:
    """Pad images and maps to the batch's largest size (a multiple of 32) at the bottom/right.

    Padding is excluded from the loss (masks are 0 there) and ``valid_size`` tells
    post-processing where the real image ends.
    """
    heights = [item["image"].shape[1] for item in items]
    widths = [item["image"].shape[2] for item in items]
    pad_h, pad_w = padded_size(max(heights), max(widths), multiple)
    batch: dict[str, Any] = {
        "image": torch.zeros((len(items), 3, pad_h, pad_w), dtype=torch.uint8),
        "valid_size": [(w, h) for w, h in zip(widths, heights)],
    }
    for i, item in enumerate(items):
        batch["image"][i, :, : heights[i], : widths[i]] = item["image"]
    if all(key in item for item in items for key in TARGET_KEYS):
        optional = [key for key in OPTIONAL_TARGET_KEYS if all(key in item for item in items)]
        for key in (*TARGET_KEYS, *optional):
            maps = torch.zeros((len(items), pad_h, pad_w), dtype=torch.float32)
            for i, item in enumerate(items):
                maps[i, : heights[i], : widths[i]] = item[key]
            batch[key] = maps
    for key in ("name", "raw_size", "orientation", "scale", "gt_polygons", "gt_ignore", "gt_texts"):
        batch[key] = [item[key] for item in items]
    return batch
