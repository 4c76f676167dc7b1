"""LightningDataModule: where the splits come from and how they are loaded."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ocr.data.dataset import ReceiptDataset, collate_receipts
from ocr.data.synthetic import build_synthetic_dataset
from ocr.data.targets import TargetConfig
from ocr.data.transforms import PolygonAugment, ResizeForEval

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "predict")


def default_num_workers() -> int:
    """Half the CPUs (the rest feed the model), at least 1 and at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class ReceiptDataModule(L.LightningDataModule):
    """Split locations, in order of precedence:

    1. ``splits.<split>.image_dir`` (+ ``annotation_path``, optional for test/predict);
    2. ``base_path`` in the competition layout: ``images/<split>/`` and ``jsons/<split>.json``
       (predict uses the test split);
    3. neither: a synthetic receipt set, built once and cached under ``synthetic.root``.
    """

    def __init__(
        self,
        train_augment: PolygonAugment,
        eval_resize: ResizeForEval,
        targets: TargetConfig,
        base_path: str | None = None,
        splits: dict[str, dict[str, Any]] | None = None,
        synthetic: dict[str, Any] | None = None,
        batch_size: int = 4,
        eval_batch_size: int = 4,
        num_workers: int | None = None,
        invalid_polygon: str = "skip",
        missing_image: str = "error",
    ):
        super().__init__()
        self.train_augment, self.eval_resize, self.targets = train_augment, eval_resize, targets
        self.base_path = base_path
        self.splits = {name: dict((splits or {}).get(name) or {}) for name in SPLITS}
        self.synthetic = dict(synthetic or {})
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.invalid_polygon, self.missing_image = invalid_polygon, missing_image
        self.datasets: dict[str, ReceiptDataset] = {}

    # -- where the data is --------------------------------------------------------------
    @property
    def uses_synthetic(self) -> bool:
        return not self.base_path and not any(self.splits[s].get("image_dir") for s in ("train", "val", "test"))

    def split_paths(self, split: str) -> tuple[Path, Path | None]:
        explicit = self.splits[split]
        if explicit.get("image_dir"):
            annotation = explicit.get("annotation_path")
            return Path(explicit["image_dir"]), Path(annotation) if annotation else None
        if split == "predict":
            return self.split_paths("test")
        if self.uses_synthetic:
            root = Path(self.synthetic.get("root", "data/synthetic_receipts"))
            return root / "images" / split, root / "jsons" / f"{split}.json"
        if not self.base_path:
            raise ValueError(f"no location for the {split!r} split: set datasets.splits.{split}.image_dir or dataset_base_path")
        base = Path(self.base_path)
        annotation = base / "jsons" / f"{split}.json"
        if split in ("train", "val") and not annotation.is_file():
            raise FileNotFoundError(f"{annotation}: annotation file for the {split!r} split not found (competition layout expected under {base})")
        return base / "images" / split, annotation if annotation.is_file() else None

    def prepare_data(self) -> None:
        if self.uses_synthetic:
            options = {k: v for k, v in self.synthetic.items() if k != "root"}
            root = Path(self.synthetic.get("root", "data/synthetic_receipts"))
            log.info("No dataset path set: using the synthetic receipt set under %s", root.resolve())
            build_synthetic_dataset(root, **options)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage, SPLITS) if stage else SPLITS:
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    def make_dataset(self, split: str) -> ReceiptDataset:
        image_dir, annotation_path = self.split_paths(split)
        dataset = ReceiptDataset(
            image_dir,
            annotation_path,
            augment=self.train_augment if split == "train" else None,
            resize=None if split == "train" else self.eval_resize,
            targets=self.targets,
            invalid_polygon=self.invalid_polygon,
            missing_image=self.missing_image,
        )
        if len(dataset) == 0:
            raise ValueError(f"the {split!r} split at {image_dir} has no images")
        if split in ("train", "val") and not dataset.annotated:
            where = annotation_path or image_dir
            raise ValueError(f"{where}: the {split!r} split has no annotated words; training and validation need ground truth")
        log.info("%s split: %d images from %s%s", split, len(dataset), image_dir, f" + {annotation_path}" if annotation_path else "")
        return dataset

    # -- loaders ------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.datasets[split]) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_receipts,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
