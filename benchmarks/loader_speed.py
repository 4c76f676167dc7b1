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

``workers=N`` (default 0: skipped) then checks that rule on this machine: the training DataLoader
as a run builds it, with N workers, delivers batches to a loop that does nothing else, over one
long epoch (the first ``samples`` images, ``repeats`` × 4 times over); its samples/s from the first
batch to the last is set against N × one worker's. What it lacks is what the stages leave out:
tensor conversion, collation, the trip from the workers' processes (and pinned memory on a GPU),
and workers that share cores or memory bandwidth.

    python -m benchmarks.loader_speed preset=example crop_size=640 workers=15   # on a 16-core GPU host
"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np
import torch
from torch.utils.data import Subset

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


def delivered(datamodule, count: int, workers: int, rounds: int) -> tuple[float, int]:
    """Samples a second that the training DataLoader with ``workers`` delivers over one epoch of
    the first ``count`` training images ``rounds`` times over, timed from its first batch (the
    workers' start-up left out); and the samples timed."""
    dataset = datamodule.datasets["train"]
    datamodule.num_workers = workers
    datamodule.datasets["train"] = Subset(dataset, [i % len(dataset) for i in range(count)] * rounds)
    loader = None
    try:
        loader = datamodule.train_dataloader()
        batches = iter(loader)
        next(batches)
        start, samples = time.perf_counter(), 0
        for batch in batches:
            samples += len(batch["image"])
        seconds = time.perf_counter() - start
    finally:
        if loader is not None:  # the workers end here even when the timed loop raised
            loader.close_workers()
        datamodule.datasets["train"] = dataset
    return samples / seconds, samples


def non_negative_int(own: dict[str, str], key: str) -> int:
    value = own[key]
    if not value.isdigit():
        raise SystemExit(f"{key}={value}: expected a whole number of at least 0")
    return int(value)


def positive_int(own: dict[str, str], key: str) -> int:
    value = own[key]
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"{key}={value}: expected a whole number of at least 1")
    return int(value)


def main(argv: list[str]) -> dict[str, float]:
    own, overrides = parse(argv, __doc__, {"samples": "60", "repeats": "3", "workers": "0"})
    count, repeats = positive_int(own, "samples"), positive_int(own, "repeats")
    workers = non_negative_int(own, "workers")
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
    if workers:
        rate, samples = delivered(datamodule, count, workers, 4 * repeats)
        expected = workers * 1000 / best["total"]
        best.update(workers=workers, delivered_per_s=rate, expected_per_s=expected)
        print(
            f"\nthe training DataLoader with {workers} workers (batch {datamodule.batch_size}, {samples} samples timed): "
            f"{rate:.0f} samples/s, {rate / expected:.0%} of {workers} x one worker ({expected:.0f}/s)"
        )
    return best


if __name__ == "__main__":
    main(sys.argv[1:])
