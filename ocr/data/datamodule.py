"""LightningDataModule: where the splits come from and how they are loaded."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ocr.config import default_num_workers
from ocr.data.annotations import AnnotationError, require_words, resolve_bad_image
from ocr.data.dataset import ReceiptDataset, collate_receipts
from ocr.data.loader import TrainLoader
from ocr.data.synthetic import build_synthetic_dataset
from ocr.data.targets import TargetConfig
from ocr.data.transforms import PolygonAugment, ResizeForEval

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "predict")


class ReceiptDataModule(L.LightningDataModule):
    """Split locations, in order of precedence:

    1. ``splits.<split>.image_dir`` (+ ``annotation_path``, optional for test/predict);
    2. ``base_path`` in the competition layout: ``images/<split>/`` and ``jsons/<split>.json``
       (predict uses the test split);
    3. no location for any split (predict's included): a synthetic receipt set, built once and
       cached under ``synthetic.root``.

    Predict covers its whole folder: images the annotation does not list are predicted too.
    ``bad_image`` (``missing_image`` is its former name): ``error`` | ``skip`` a missing or
    unreadable image; ``invalid_polygon``: ``skip`` (repair or skip, logged) | ``error``.
    ``prefetch_across_epochs``: the training workers go on building batches across epoch ends
    (``ocr.data.loader``); the configs turn it on where a CUDA GPU is present.
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
        bad_image: str = "error",
        missing_image: str | None = None,
        prefetch_across_epochs: bool = False,
    ):
        super().__init__()
        self.train_augment, self.eval_resize, self.targets = train_augment, eval_resize, targets
        self.base_path = base_path
        self.splits = {name: dict((splits or {}).get(name) or {}) for name in SPLITS}
        self.synthetic = dict(synthetic or {})
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.invalid_polygon, self.bad_image = invalid_polygon, resolve_bad_image(bad_image, missing_image)
        self.prefetch_across_epochs = bool(prefetch_across_epochs)
        self.datasets: dict[str, ReceiptDataset] = {}

    # -- where the data is --------------------------------------------------------------
    @property
    def uses_synthetic(self) -> bool:
        """No location is set for any split: the synthetic set stands in for all of them."""
        return not self.base_path and not any(self.splits[s].get("image_dir") for s in SPLITS)

    def split_paths(self, split: str) -> tuple[Path, Path | None]:
        explicit = self.splits[split]
        if explicit.get("image_dir"):
            annotation = explicit.get("annotation_path")
            return Path(explicit["image_dir"]), Path(annotation) if annotation else None
        if split == "predict":
            if not self.base_path and not self.uses_synthetic and not self.splits["test"].get("image_dir"):
                raise ValueError(f"{self._no_location('predict')}; without its own, predict reads the test split's images")
            return self.split_paths("test")
        if self.uses_synthetic:
            root = Path(self.synthetic.get("root", "data/synthetic_receipts"))
            return root / "images" / split, root / "jsons" / f"{split}.json"
        if not self.base_path:
            raise ValueError(self._no_location(split))
        base = Path(self.base_path)
        annotation = base / "jsons" / f"{split}.json"
        if split in ("train", "val") and not annotation.is_file():
            layout = f"competition layout expected under {base}"
            raise FileNotFoundError(f"{annotation}: annotation file for the {split!r} split not found ({layout})")
        return base / "images" / split, annotation if annotation.is_file() else None

    def _no_location(self, split: str) -> str:
        """Why ``split`` has no location: which setting to give, and why no synthetic set stands in."""
        given = ", ".join(f"datasets.splits.{s}.image_dir" for s in SPLITS if self.splits[s].get("image_dir"))
        wanted = f"datasets.splits.{split}.image_dir" + (" (with annotation_path)" if split in ("train", "val") else "")
        return (
            f"no location for the {split!r} split: set {wanted} or dataset_base_path "
            f"(no synthetic set is built once any split has a location; set: {given})"
        )

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
            bad_image=self.bad_image,
            split=split,
            include_unlisted=split == "predict",
        )
        if len(dataset) == 0:
            skipped = dataset.report.images_skipped
            note = f" ({skipped} skipped as missing or unreadable, see the warnings above)" if skipped else ""
            raise ValueError(f"the {split!r} split at {image_dir} has no images{note}")
        if split != "predict":
            require_words(dataset.report)
        if split in ("train", "val") and not dataset.annotated:
            where = annotation_path or image_dir
            need = "training and validation need ground truth"
            raise AnnotationError(f"{where}: the {split!r} split has no annotated words; {need}")
        annotation = f" + {annotation_path}" if annotation_path else ""
        log.info("%s split: %d images from %s%s", split, len(dataset), image_dir, annotation)
        return dataset

    # -- loaders ------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        options = {"prefetch_across_epochs": self.prefetch_across_epochs} if split == "train" else {}
        return (TrainLoader if split == "train" else DataLoader)(
            self.datasets[split],
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.datasets[split]) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_receipts,
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
