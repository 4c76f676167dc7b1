"""Score a checkpoint on any folder of images + annotation JSON; prints Markdown tables.

    python -m benchmarks.accuracy checkpoint_path=outputs/x/checkpoints/last.ckpt \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json

Any other argument is a Hydra override of the run config (``configs/test.yaml`` with
the checkpoint's architecture), e.g. ``image_size=960 models.postprocess.box_thresh=0.5``.
``checkpoint_path=none`` scores the network as the config builds it, with no checkpoint: with
``preset=sroie_ppocr``, PP-OCR's pretrained detector zero-shot.
Reports IoU precision / recall / hmean (ICDAR-2015 one-to-one matching at IoU > 0.5, both
pooled over all images and as the mean of per-image scores), CLEval precision / recall /
hmean (mean of per-image scores, as the competition leaderboard) and seconds per image
(network + post-processing, batch 1, this machine; ``device=cuda`` or ``device=cpu``, by default
the GPU when there is one). Then where the errors are: IoU recall by the words' short side, and the
unmatched words and boxes by class (merged, split, missed, loose; on text, background; see
``ocr/metrics/errors.py``), and the scores of narrow receipts and wide pages apart.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from ocr.checkpoints import load_checkpoint_into
from ocr.config import register_resolvers
from ocr.data.dataset import ReceiptDataset, collate_receipts
from ocr.factory import build_module
from ocr.geometry import upright_size
from ocr.lightning_module import DBNetModule
from ocr.metrics.cleval import cleval_image_scores
from ocr.metrics.common import as_polygons, dont_care_flags
from ocr.metrics.detection import DetectionEvaluator
from ocr.metrics.errors import MatchErrors, match_errors
from ocr.models.postprocess import Detections


def parse(argv: list[str], doc: str = __doc__, defaults: dict[str, str | None] | None = None) -> tuple[dict[str, str], list[str]]:
    """The benchmark's own ``key=value`` arguments (``defaults``: their names and defaults, None where
    required) and the rest as Hydra overrides; exits with ``doc`` when a required one is missing."""
    own = dict(defaults or {"checkpoint_path": None, "images": None, "annotations": None, "device": "auto"})
    overrides = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in own:
            own[key] = value
        else:
            overrides.append(arg)
    missing = [k for k, v in own.items() if not v]
    if missing:
        raise SystemExit(f"missing {', '.join(f'{k}=...' for k in missing)}\n\n{doc}")
    return own, overrides


def load(own: dict[str, str], overrides: list[str]) -> tuple[DictConfig, DBNetModule, ReceiptDataset]:
    """The run config (checkpoint architecture + overrides), the module in eval mode and the data."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="test", overrides=[f"checkpoint_path={own['checkpoint_path']}", *overrides])
    # checkpoint_path=none: the network as the config builds it, e.g. preset=sroie_ppocr's pretrained
    # detector before any fine-tuning (zero-shot, scored by this project's post-processing and metrics)
    zero_shot = own["checkpoint_path"].lower() == "none"
    checkpoint = None if zero_shot else load_checkpoint_into(cfg, overrides)
    module = build_module(cfg)
    if checkpoint is not None:
        module.load_state_dict(checkpoint["state_dict"])
    module.eval().to(inference_device(own.get("device", "auto")))
    dataset = ReceiptDataset(own["images"], own["annotations"], resize=instantiate(cfg.datasets.eval_resize), targets=None)
    return cfg, module, dataset


def inference_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def inference_autocast(cfg: DictConfig, device: torch.device) -> torch.autocast:
    """Autocast at the run's precision (``trainer.precision``), as validation and test run."""
    precision = str(cfg.trainer.precision)
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else None
    # float16 autocast is a GPU mode; the CPU runs bf16 or float32
    enabled = dtype is torch.bfloat16 or (dtype is torch.float16 and device.type == "cuda")
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def network_outputs(
    cfg: DictConfig, module: DBNetModule, dataset: ReceiptDataset
) -> Iterator[tuple[dict[str, Any], torch.Tensor, float]]:
    """(batch of one image, probability logits, network seconds) for every image; the seconds
    include the copy to the device and, on a GPU, wait for the kernels to finish."""
    device = module.mean.device
    autocast = inference_autocast(cfg, device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for index in range(len(dataset)):
        batch = collate_receipts([dataset[index]])
        if index == 0:  # warm-up (CUDA context, cuDNN autotuning) outside the timing
            with torch.no_grad(), autocast:
                module.prob_logits(batch["image"].to(device))
            synchronize()
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            logits = module.prob_logits(batch["image"].to(device))
        synchronize()
        yield batch, logits, time.perf_counter() - start


def evaluate(records: Iterable[tuple[str, Any, Any, Any, Any]]) -> dict[str, float]:
    """IoU (pooled and per-image mean) and CLEval scores of (image name, GT polygons, GT don't-care
    flags, GT texts, detected polygons) records.

    CLEval P/R/H count each word's characters from its transcription (CLEval as designed, and how
    the pretrained peer's ~0.992 on sroie_dev was measured); the last row counts them from the box
    shape, as the competition's evaluator, which never sees transcriptions. Without transcriptions
    the two are the same."""
    evaluator = DetectionEvaluator(use_cleval=True, iou_threshold=0.5, use_text_lengths=True)
    pseudo_count_hmeans = []
    for name, gt_polygons, gt_ignore, gt_texts, detections in records:
        evaluator.update(name, gt_polygons, detections, gt_ignore, gt_texts)
        pseudo_count_hmeans.append(cleval_image_scores(gt_polygons, detections, gt_ignore, gt_texts)["hmean"])
    scores = evaluator.compute()
    rows = evaluator.per_image()
    per_image = {k: float(np.mean([r[k] for r in rows])) for k in ("iou_precision", "iou_recall", "iou_hmean")}
    return {
        "IoU precision (pooled)": scores["iou_precision"],
        "IoU recall (pooled)": scores["iou_recall"],
        "IoU hmean (pooled)": scores["iou_hmean"],
        "IoU precision (per-image mean)": per_image["iou_precision"],
        "IoU recall (per-image mean)": per_image["iou_recall"],
        "IoU hmean (per-image mean)": per_image["iou_hmean"],
        "CLEval precision": scores["precision"],
        "CLEval recall": scores["recall"],
        "CLEval hmean": scores["hmean"],
        "CLEval hmean (box-shape character counts)": float(np.mean(pseudo_count_hmeans)) if pseudo_count_hmeans else 0.0,
    }


# GT short side (min-area rectangle, original pixels): single digits and colons on receipts are
# 5-12 px wide, the usual printed line 14-30 px tall
TEXT_SIZE_EDGES = (0, 8, 12, 16, 24, 32)


Classified = list[tuple[list[np.ndarray], MatchErrors]]


def classify(records: Iterable[tuple[str, Any, Any, Any, Any]]) -> Classified:
    """(GT polygons, error classes) per record; the matching is the pooled IoU score's (one-to-one,
    IoU > 0.5, ``###`` words don't care). Computed once for both breakdowns below."""
    classified = []
    for _, gt_polygons, gt_ignore, gt_texts, detections in records:
        gts = as_polygons(gt_polygons)
        ignore = dont_care_flags(len(gts), gt_ignore, gt_texts)  # as the evaluator decides
        classified.append((gts, match_errors(gts, detections, ignore)))
    return classified


def short_side(polygon: np.ndarray) -> float:
    """A word's height: the short side of its minimum-area rectangle (0 for fewer than 3 points)."""
    return float(min(cv2.minAreaRect(polygon.astype(np.float32))[1])) if len(polygon) >= 3 else 0.0


def recall_by_text_size(classified: Classified) -> list[tuple[str, int, float]]:
    """(size range, care GT, IoU recall) per GT short-side range: where the missed words are."""
    edges = np.asarray(TEXT_SIZE_EDGES, dtype=np.float64)
    totals = np.zeros(len(edges), dtype=np.int64)
    found = np.zeros(len(edges), dtype=np.int64)
    for gts, errors in classified:
        for polygon, label in zip(gts, errors.gt):
            if label == "dont_care":
                continue
            bucket = int(np.searchsorted(edges, short_side(polygon), side="right")) - 1
            totals[bucket] += 1
            found[bucket] += label == "matched"
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])] + [f">= {edges[-1]:g}"]
    return [(label, int(n), float(k / n) if n else float("nan")) for label, n, k in zip(labels, totals, found)]


def error_counts(classified: Classified) -> tuple[Counter[str], Counter[str]]:
    """How many care words and boxes fall in each class of :mod:`ocr.metrics.errors` (matched,
    merged, split, missed, loose; matched, on_text, background), summed over the images."""
    words: Counter[str] = Counter()
    boxes: Counter[str] = Counter()
    for _, errors in classified:
        words.update(label for label in errors.gt if label != "dont_care")
        boxes.update(label for label in errors.det if label != "dont_care")
    return words, boxes


ERROR_ROWS = {
    "merged": "merged: one box over it and another word",
    "split": "split: two or more boxes inside it",
    "missed": "missed: no box on it",
    "loose": "loose: overlapped, IoU <= 0.5 (box too large, small or shifted)",
    "on_text": "on text: a merged, split or loose box",
    "background": "background: no word under it",
}


def print_breakdowns(records: list[tuple[str, Any, Any, Any, Any]]) -> None:
    """IoU recall by text size and the unmatched words and boxes by error class, as tables."""
    print("\n| GT short side (px) | care GT | IoU recall |\n| --- | --- | --- |")
    classified = classify(records)
    for label, count, recall in recall_by_text_size(classified):
        print(f"| {label} | {count} | {recall:.4f} |")
    words, boxes = error_counts(classified)
    print("\n| unmatched care words | count | share of care words |\n| --- | --- | --- |")
    for key in ("merged", "split", "missed", "loose"):
        print(f"| {ERROR_ROWS[key]} | {words[key]} | {words[key] / max(words.total(), 1):.4f} |")
    print("\n| unmatched boxes | count | share of boxes |\n| --- | --- | --- |")
    for key in ("on_text", "background"):
        print(f"| {ERROR_ROWS[key]} | {boxes[key]} | {boxes[key] / max(boxes.total(), 1):.4f} |")


# page width / height, upright: shop receipts are narrow strips (sroie_dev: 0.3-0.6), A4 page scans 0.71
PAGE_SHAPES = (("narrow: width / height <= 0.65", 0.0, 0.65), ("wide: width / height > 0.65", 0.65, float("inf")))


def care_word_heights(records: list[tuple[str, Any, Any, Any, Any]]) -> list[float]:
    """:func:`short_side` of every care word of the records (``###`` words left out, as scored)."""
    heights = []
    for _, gt_polygons, gt_ignore, gt_texts, _ in records:
        gts = as_polygons(gt_polygons)
        ignore = dont_care_flags(len(gts), gt_ignore, gt_texts)
        heights += [short_side(polygon) for polygon, skip in zip(gts, ignore) if not skip]
    return heights


def scores_by_page_shape(
    records: list[tuple[str, Any, Any, Any, Any]], aspects: list[float]
) -> list[tuple[str, int, list[float], dict[str, float] | None]]:
    """(page shape, pages, care words' heights, :func:`evaluate` scores or None without pages) per
    range of :data:`PAGE_SHAPES`; ``aspects``: each record's page width / height."""
    if len(aspects) != len(records):
        raise ValueError(f"{len(records)} records but {len(aspects)} page shapes")
    rows = []
    for label, low, high in PAGE_SHAPES:
        pages = [r for r, aspect in zip(records, aspects) if low < aspect <= high]
        rows.append((label, len(pages), care_word_heights(pages), evaluate(pages) if pages else None))
    return rows


def print_page_shapes(records: list[tuple[str, Any, Any, Any, Any]], aspects: list[float]) -> None:
    """The scores of :func:`scores_by_page_shape` as a table."""
    columns = ("pages", "care words", "median short side (px)", "IoU precision", "IoU recall", "IoU hmean", "CLEval hmean")
    print(f"\n| page shape | {' | '.join(columns)} |")
    print("| --- " * (len(columns) + 1) + "|")
    for label, pages, heights, scores in scores_by_page_shape(records, aspects):
        if scores is None:
            print(f"| {label} | 0 | 0 | | | | | |")
            continue
        median = f"{np.median(heights):.1f}" if heights else ""
        values = (scores[f"IoU {k} (pooled)"] for k in ("precision", "recall", "hmean"))
        print(f"| {label} | {pages} | {len(heights)} | {median} | {' | '.join(f'{v:.4f}' for v in values)} | "
              f"{scores['CLEval hmean']:.4f} |")


def page_aspect(orientation: int, raw_size: tuple[int, int]) -> float:
    """Width / height of a page, upright: its stored (width, height), turned by its EXIF orientation."""
    width, height = upright_size(orientation, raw_size)
    return width / height


def record(batch: dict[str, Any], found: Detections) -> tuple[str, Any, Any, Any, Any]:
    """The :func:`evaluate` record of a batch of one image and its detections."""
    return batch["name"][0], batch["gt_polygons"][0], batch["gt_ignore"][0], batch["gt_texts"][0], found.polygons


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} CPU threads"


def print_table(result: dict[str, float]) -> None:
    print("| metric | value |\n| --- | --- |")
    for name, value in result.items():
        print(f"| {name} | {value:.4f} |")


def main(argv: list[str]) -> dict[str, float]:
    own, overrides = parse(argv)
    cfg, module, dataset = load(own, overrides)
    records, seconds, aspects = [], [], []
    for batch, logits, network_seconds in network_outputs(cfg, module, dataset):
        start = time.perf_counter()
        found = module.decode(logits, batch)[0]
        seconds.append(network_seconds + time.perf_counter() - start)
        records.append(record(batch, found))
        aspects.append(page_aspect(batch["orientation"][0], batch["raw_size"][0]))
    result = {**evaluate(records), "seconds per image": float(np.mean(seconds))}
    print(f"\n{len(dataset)} images from {own['images']}; checkpoint {own['checkpoint_path']}; "
          f"eval resize {cfg.datasets.eval_resize.mode} {cfg.image_size}; {describe(module.mean.device)}, "
          f"{cfg.trainer.precision}, TTA scales {list(module.tta_scales) or 'none'}")
    print_table(result)
    print_breakdowns(records)
    print_page_shapes(records, aspects)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
