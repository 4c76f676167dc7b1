"""CPU time of one training sample, stage by stage, for any preset on its own data; prints one
Markdown table and how many DataLoader workers a given GPU speed needs.

    python -m benchmarks.loader_speed preset=sroie_ppocr_backbone data_root=../shared/data/sroie_dev
    python -m benchmarks.loader_speed preset=example crop_size=640 samples=40

A training sample is what ``ReceiptDataset.__getitem__`` makes of one image: the file read (decode,
EXIF turn), the augmentation (rescale, page geometry, crop, look) and the DB target maps. Each
stage is timed on its own, one thread (as a DataLoader worker runs), over the first ``samples``
training images (default 60) with the augmentation's random draws fixed; the figure is the best of
``repeats`` passes (default 3), the one least disturbed by the rest of the machine. A worker makes
``1000 / total ms`` samples a second, so a GPU that trains at ``R`` images/s needs about
``R * total ms / 1000`` workers, on CPU cores of its own. Any other argument is a Hydra override.
"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np
import torch

from benchmarks.accuracy import parse
from ocr.config import compose_config
from ocr.data.targets import make_db_targets
from ocr.factory import build_datamodule

GPU_SPEEDS = (200, 500, 650)  # images/s: the goal on one H100-class GPU, and the network's own pace there


def time_stages(dataset, count: int, seed: int = 0) -> dict[str, float]:
    """Seconds spent in each stage over ``count`` samples (the augmentation re-seeded first)."""
    dataset.augment.pipeline.set_random_seed(seed)
    spent = {"read": 0.0, "augment": 0.0, "targets": 0.0}
    for index in range(count):
        index %= len(dataset)
        start = time.perf_counter()
        image, polygons, _, _ = dataset.read_upright(index)
        read = time.perf_counter()
        image, polygons, ignore = dataset.augment(image, polygons, list(dataset.samples[index].ignore))
        augmented = time.perf_counter()
        make_db_targets(image.shape[:2], polygons, ignore, dataset.targets)
        done = time.perf_counter()
        spent["read"] += read - start
        spent["augment"] += augmented - read
        spent["targets"] += done - augmented
    return spent


def positive_int(own: dict[str, str], key: str) -> int:
    value = own[key]
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"{key}={value}: expected a whole number of at least 1")
    return int(value)


def main(argv: list[str]) -> dict[str, float]:
    own, overrides = parse(argv, __doc__, {"samples": "60", "repeats": "3"})
    count, repeats = positive_int(own, "samples"), positive_int(own, "repeats")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cfg = compose_config("train", overrides)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    time_stages(dataset, min(count, 3))  # warm-up: imports, numba compilation, caches
    passes = [time_stages(dataset, count) for _ in range(repeats)]
    best = {stage: min(p[stage] for p in passes) / count * 1000 for stage in passes[0]}
    best["total"] = min(sum(p.values()) for p in passes) / count * 1000
    words = np.mean([len(s.polygons) for s in dataset.samples[:count]])
    print(f"\n{count} training samples of {len(dataset)} ({words:.0f} words per image), crop {cfg.crop_size}, "
          f"best of {repeats} passes, one thread")
    print("| stage | ms per sample |\n| --- | --- |")
    for stage, label in (("read", "read (decode, EXIF turn)"), ("augment", "augmentation (rescale, geometry, crop, look)"),
                         ("targets", "DB target maps"), ("total", "total")):
        print(f"| {label} | {best[stage]:.1f} |")
    print(f"\none worker: {1000 / best['total']:.0f} samples/s")
    print("| GPU training speed (images/s) | workers needed |\n| --- | --- |")
    for speed in GPU_SPEEDS:
        print(f"| {speed} | {int(np.ceil(speed * best['total'] / 1000))} |")
    return best


if __name__ == "__main__":
    main(sys.argv[1:])
