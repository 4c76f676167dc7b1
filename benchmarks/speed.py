"""Per-stage CPU speed of the pipeline on synthetic receipt pages; prints one Markdown table.

    python -m benchmarks.speed            # full run (~25 s on 2 cores)
    python -m benchmarks.speed --quick    # fewer repeats
    python -m benchmarks.speed trainer.precision=32-true lightning_module.channels_last=false   # Hydra overrides

Stages: target maps (ours vs the straightforward per-polygon, per-edge reference),
augmentation, post-processing, CLEval and IoU metrics, DataLoader throughput and the
model's forward/backward for the default (example) preset.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import torch

from benchmarks.pages import make_page
from benchmarks.reference_postprocess import ReferenceDBPostProcessor
from benchmarks.reference_targets import reference_db_targets
from ocr.config import cpu_has_native_bf16, cpuinfo_field
from ocr.data.targets import make_db_targets

SIZES = [(640, 640, 110), (1024, 1024, 250), (960, 1600, 440)]  # width, height, words


def timed(function, repeats: int) -> float:
    """Best (minimum) wall time of ``function()`` in milliseconds over ``repeats`` calls, after
    one warm-up call. The minimum is the run least disturbed by the rest of the machine (other
    processes, timer interrupts), as ``timeit`` advises; ours and the references are timed alike."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return min(samples)


def compose_example(overrides=()):
    from hydra import compose, initialize_config_dir

    from ocr.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=["preset=example", *overrides])


def jitter(polygons, rng, pixels=2.0):
    return [p + rng.normal(0, pixels, p.shape) for p in polygons]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the example preset")
    args = parser.parse_args()
    repeats = 3 if args.quick else 9
    rows: list[tuple[str, str, str]] = []

    def add(stage: str, size: str, value: str) -> None:
        rows.append((stage, size, value))
        print(f"  {stage:<42} {size:<12} {value}", flush=True)

    from hydra.utils import instantiate

    from ocr.metrics.cleval import cleval_image_scores
    from ocr.metrics.errors import match_errors
    from ocr.metrics.iou import iou_match

    cfg = compose_example(args.overrides)
    postprocess = instantiate(cfg.models.postprocess)
    augment = instantiate(cfg.datasets.train_augment)
    rng = np.random.default_rng(0)

    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    print(f"Machine: {cpu}, {os.cpu_count()} CPUs, native bf16: {cpu_has_native_bf16()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for width, height, words in SIZES:
        label = f"{width}x{height}"
        image, polygons = make_page(width, height, words, seed=width)
        shape = (height, width)
        ours = timed(lambda shape=shape, polygons=polygons: make_db_targets(shape, polygons), repeats)
        reference = timed(lambda shape=shape, polygons=polygons: reference_db_targets(shape, polygons), max(3, repeats // 2))
        add(f"target maps, ours ({words} words)", label, f"{ours:.1f} ms/image")
        add("target maps, reference per-edge loop", label, f"{reference:.1f} ms/image")
        add("target maps speed-up (reference / ours)", label, f"{reference / ours:.1f}x")

        augment_ms = timed(lambda image=image, polygons=polygons: augment(image, polygons, [False] * len(polygons)), repeats)
        add("augmentation pipeline (example preset)", label, f"{augment_ms:.1f} ms/image")

        # a probability map like a trained model's: the GT kernels, blurred
        prob = cv2.GaussianBlur(make_db_targets(shape, polygons)["shrink_map"], (5, 5), 1.5)
        boxes = max(len(postprocess(prob).polygons), 1)
        post_ms = timed(lambda prob=prob: postprocess(prob), repeats)
        # the settings the first version had (later ones, e.g. split_thresh, are off by default)
        shared = postprocess.__dataclass_fields__.keys() & ReferenceDBPostProcessor.__dataclass_fields__.keys()
        before = ReferenceDBPostProcessor(**{k: getattr(postprocess, k) for k in shared})
        before_ms = timed(lambda before=before, prob=prob: before(prob), repeats)
        add(f"post-processing ({boxes} boxes)", label, f"{post_ms:.1f} ms/image, {post_ms / boxes:.4f} ms/box")
        add(
            "post-processing, first version (reference)", label, f"{before_ms:.1f} ms/image, {before_ms / boxes:.4f} ms/box"
        )

    # metrics on 100 GT x 100 detections
    _, gt = make_page(1024, 1024, 100, seed=1)
    detections = jitter(gt, rng)
    cleval_ms = timed(lambda: cleval_image_scores(gt, detections), repeats)
    iou_ms = timed(lambda: iou_match(gt, detections), repeats)
    errors_ms = timed(lambda: match_errors(gt, detections), repeats)
    add("CLEval per image (100 GT x 100 det)", "1024x1024", f"{cleval_ms:.1f} ms/image")
    add("IoU-hmean per image (100 GT x 100 det)", "1024x1024", f"{iou_ms:.1f} ms/image")
    add("IoU matching + error classes (100 GT x 100 det)", "1024x1024", f"{errors_ms:.1f} ms/image")

    # DataLoader throughput with the example preset's training pipeline
    from ocr.data.dataset import ReceiptDataset, collate_receipts
    from ocr.data.synthetic import build_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = build_synthetic_dataset(Path(folder), num_train=48, num_val=1, num_test=1, seed=3)
        dataset = ReceiptDataset(
            root / "images" / "train", root / "jsons" / "train.json", augment=augment, targets=instantiate(cfg.datasets.targets)
        )
        for workers in (0, 1, 2):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=8, num_workers=workers, collate_fn=collate_receipts, persistent_workers=workers > 0
            )
            iterator = iter(loader)
            next(iterator)  # start-up (worker spawn) is not throughput
            start, count = time.perf_counter(), 0
            for batch in iterator:
                count += batch["image"].shape[0]
            add(
                f"DataLoader, batch 8, {workers} workers",
                f"crop {cfg.crop_size}",
                f"{count / (time.perf_counter() - start):.1f} images/s",
            )

    # the model: example preset (bf16 autocast + channels_last on CPU)
    from ocr.factory import build_module

    module = build_module(cfg)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    size, batch_size = cfg.crop_size, cfg.datasets.batch_size
    images = torch.randint(0, 255, (batch_size, 3, size, size), dtype=torch.uint8)
    targets = {
        k: (torch.rand(batch_size, size, size) > 0.9).float()
        for k in ("shrink_map", "shrink_mask", "threshold_map", "threshold_mask")
    }
    dtype = torch.bfloat16 if "bf16" in str(cfg.trainer.precision) else None

    def train_step():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = module(images, with_threshold=True)
        loss = module.loss(outputs, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    module.train()
    step_ms = timed(train_step, max(2, repeats // 2))
    add(
        f"model forward+backward, batch {batch_size} ({cfg.trainer.precision})",
        f"{size}x{size}",
        f"{step_ms:.0f} ms/step = {batch_size * 1000 / step_ms:.1f} images/s",
    )
    module.eval()
    page = torch.randint(0, 255, (1, 3, cfg.image_size, 448), dtype=torch.uint8)

    def infer():
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            module(page, with_threshold=False)

    add("model inference, batch 1", f"448x{cfg.image_size}", f"{timed(infer, repeats):.0f} ms/image")

    print("\n| stage | size | result |\n| --- | --- | --- |")
    for stage, size_label, value in rows:
        print(f"| {stage} | {size_label} | {value} |")


if __name__ == "__main__":
    main()
