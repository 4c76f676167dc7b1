"""Score a checkpoint on any folder of images + annotation JSON; prints one Markdown table.

    python benchmarks/accuracy.py checkpoint_path=outputs/x/checkpoints/last.ckpt \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json

Any other argument is a Hydra override of the run config (``configs/test.yaml`` with
the checkpoint's architecture), e.g. ``image_size=960 models.postprocess.box_thresh=0.5``.
Reports IoU precision / recall / hmean (ICDAR-2015 one-to-one matching at IoU > 0.5, both
pooled over all images and as the mean of per-image scores), CLEval precision / recall /
hmean (mean of per-image scores, as the competition leaderboard) and seconds per image
(network + post-processing, batch 1, this machine).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ocr  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from ocr.config import register_resolvers  # noqa: E402
from ocr.data.dataset import ReceiptDataset, collate_receipts  # noqa: E402
from ocr.metrics.detection import DetectionEvaluator  # noqa: E402
from ocr.run import build_module, load_checkpoint_into  # noqa: E402


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    own = {"checkpoint_path": None, "images": None, "annotations": None}
    overrides = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in own:
            own[key] = value
        else:
            overrides.append(arg)
    missing = [k for k, v in own.items() if not v]
    if missing:
        raise SystemExit(f"missing {', '.join(f'{k}=...' for k in missing)}\n\n{__doc__}")
    return own, overrides


def main(argv: list[str]) -> dict[str, float]:
    own, overrides = parse(argv)
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="test", overrides=[f"checkpoint_path={own['checkpoint_path']}", *overrides])
    checkpoint = load_checkpoint_into(cfg)
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    precision = str(cfg.trainer.precision)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in precision)
    dataset = ReceiptDataset(own["images"], own["annotations"], resize=instantiate(cfg.datasets.eval_resize), targets=None)
    evaluator = DetectionEvaluator(use_cleval=True, iou_threshold=0.5)
    seconds = []
    for index in range(len(dataset)):
        batch = collate_receipts([dataset[index]])
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            logits = module(batch["image"], with_threshold=False)["prob_logits"]
        found = module.decode(logits, batch)[0]
        seconds.append(time.perf_counter() - start)
        evaluator.update(batch["name"][0], batch["gt_polygons"][0], found.polygons, batch["gt_ignore"][0], batch["gt_texts"][0])
    scores = evaluator.compute()
    rows = evaluator.per_image()
    per_image = {k: float(np.mean([r[k] for r in rows])) for k in ("iou_precision", "iou_recall", "iou_hmean")}
    result = {
        "IoU precision (pooled)": scores["iou_precision"],
        "IoU recall (pooled)": scores["iou_recall"],
        "IoU hmean (pooled)": scores["iou_hmean"],
        "IoU precision (per-image mean)": per_image["iou_precision"],
        "IoU recall (per-image mean)": per_image["iou_recall"],
        "IoU hmean (per-image mean)": per_image["iou_hmean"],
        "CLEval precision": scores["precision"],
        "CLEval recall": scores["recall"],
        "CLEval hmean": scores["hmean"],
        "seconds per image": float(np.mean(seconds)),
    }
    print(f"\n{len(dataset)} images from {own['images']}; checkpoint {own['checkpoint_path']}; "
          f"eval resize {cfg.datasets.eval_resize.mode} {cfg.image_size}; {torch.get_num_threads()} CPU threads, {precision}")
    print("| metric | value |\n| --- | --- |")
    for name, value in result.items():
        print(f"| {name} | {value:.4f} |")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
