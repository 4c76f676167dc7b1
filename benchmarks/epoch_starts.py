"""How long training waits for its batches at each epoch's start, with the training DataLoader's
workers prefetching across epochs (``datasets.prefetch_across_epochs=true``) and without; prints
one Markdown table.

    python -m benchmarks.epoch_starts preset=example
    python -m benchmarks.epoch_starts preset=sroie_ppocr_backbone data_root=../shared/data/sroie_dev images=32 step_ms=30

The network is left out so that the figures are the data pipeline's alone, on any machine: each
batch is "trained" by sleeping ``step_ms`` (default 30, a GPU's step), and each epoch is followed
by ``pause_s`` seconds of "validation" (default 1). The loader is the datamodule's training
DataLoader as a run builds it (workers, batch size, augmentation and targets from the config),
over the first ``images`` training images (default 32: short epochs, where the epoch starts weigh
most), for ``epochs`` epochs (default 4). Per setting: the mean wait for the first batch of epochs
2 onwards (the first epoch starts the workers either way), the mean wait for the other batches, and
images/s over the whole, the pauses left out. Any other argument is a Hydra override.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from torch.utils.data import Subset

from benchmarks.accuracy import parse
from ocr.config import compose_config
from ocr.factory import build_datamodule


def measure(overrides: list[str], images: int, epochs: int, step_s: float, pause_s: float) -> dict[str, Any]:
    """Waits of one training loader over ``epochs`` epochs, a sleep for each step and each validation."""
    cfg = compose_config("train", overrides)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = datamodule.datasets["train"]
    datamodule.datasets["train"] = Subset(train, range(min(images, len(train))))
    loader = datamodule.train_dataloader()
    first_waits, other_waits, batches, seen, busy = [], [], 0, 0, 0.0
    for epoch in range(epochs):
        start = asked = time.perf_counter()
        for index, batch in enumerate(loader):  # iter(loader) is inside the first wait
            waited = time.perf_counter() - asked
            if index == 0:
                if epoch > 0:
                    first_waits.append(waited)
            else:
                other_waits.append(waited)
            batches, seen = batches + 1, seen + len(batch["image"])
            time.sleep(step_s)
            asked = time.perf_counter()
        busy += time.perf_counter() - start
        time.sleep(pause_s)
    loader.close_workers()  # before the next setting starts its own
    return {
        "prefetch_across_epochs": bool(cfg.datasets.prefetch_across_epochs),
        "workers": int(cfg.datasets.num_workers),
        "batch_size": int(cfg.datasets.batch_size),
        "batches_per_epoch": len(loader),
        "batches": batches,
        "images": seen,
        "first_batch_wait_ms": 1000 * sum(first_waits) / max(len(first_waits), 1),
        "other_batch_wait_ms": 1000 * sum(other_waits) / max(len(other_waits), 1),
        "images_per_s": seen / busy,
    }


def main(argv: list[str]) -> list[dict[str, Any]]:
    own, overrides = parse(argv, __doc__, {"images": "32", "epochs": "4", "step_ms": "30", "pause_s": "1"})
    try:
        images, epochs = int(own["images"]), int(own["epochs"])
        step_s, pause_s = float(own["step_ms"]) / 1000, float(own["pause_s"])
    except ValueError as error:
        raise SystemExit(f"images, epochs: whole numbers; step_ms, pause_s: numbers ({error})") from None
    if images < 1 or epochs < 2 or step_s < 0 or pause_s < 0:
        raise SystemExit("expected images >= 1, epochs >= 2, step_ms >= 0 and pause_s >= 0")
    rows = [
        measure([*overrides, f"datasets.prefetch_across_epochs={setting}"], images, epochs, step_s, pause_s)
        for setting in ("false", "true")
    ]
    first = rows[0]
    print(
        f"\n{first['images'] // epochs} training images, batch {first['batch_size']} ({first['batches_per_epoch']} "
        f"batches an epoch), {first['workers']} DataLoader workers, {epochs} epochs; a step sleeps "
        f"{1000 * step_s:g} ms, a validation {pause_s:g} s"
    )
    print("| datasets.prefetch_across_epochs | first batch of an epoch: wait ms | other batches: wait ms | images/s |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {str(row['prefetch_across_epochs']).lower()} | {row['first_batch_wait_ms']:.1f} | "
            f"{row['other_batch_wait_ms']:.1f} | {row['images_per_s']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
