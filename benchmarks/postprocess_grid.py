"""Grid-search DBNet post-processing for one checkpoint on a folder + JSON, without retraining.

    python -m benchmarks.postprocess_grid checkpoint_path=outputs/sroie/checkpoints/last.ckpt \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json

The network runs once per image; every setting then re-decodes the cached probability maps with
the module's own post-processor (``decode_probabilities``, as ``DBNetModule.decode``) and is
scored with IoU-hmean (pooled) and CLEval. Prints the best settings first, and the winner as
Hydra overrides for a preset.

The unclip ratios tried bracket the checkpoint's own (``UNCLIP_FACTORS`` times its ``box_unclip_ratio`` and
``polygon_unclip_ratio``): how far a region grows back depends on the kernels' ``shrink_ratio`` it was
trained with, so a fixed list sized for one set of kernels misses the best ratio of another.
``grid.<setting>=v1,v2,...`` replaces the values tried for a setting (``grid.box_unclip_ratio=0.8,1.0``;
``grid.split_thresh=none,0.5``
tries cutting regions at a second threshold, ``none`` for off; ``grid.threshold_map_offset=none,0,0.05``
binarizes where the probability is above the network's own threshold map plus the offset (and
above ``thresh``): DB's binary map at inference, ``none`` for the fixed ``thresh`` alone; the
threshold branch then runs once more per image); ``polygons=false`` skips the polygon settings.
Other ``key=value`` arguments are Hydra overrides (``image_size=...``).
For a W&B sweep over the same settings (one run per trial, on many machines) use
``configs/sweep/postprocess.yaml``.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time

import numpy as np
import torch
from omegaconf import DictConfig

from benchmarks.accuracy import evaluate, inference_autocast, load, network_outputs, parse, record
from ocr.data.dataset import ReceiptDataset, collate_receipts
from ocr.lightning_module import DBNetModule, decode_probabilities, probability_maps
from ocr.models.postprocess import DBPostProcessor

GRID = {
    "thresh": [0.2, 0.25, 0.3, 0.35, 0.4],
    "box_thresh": [0.4, 0.5, 0.6, 0.7],
    "split_thresh": [None],
    "threshold_map_offset": [None],
}
# a second threshold and the threshold map apply to polygons as to rectangles (off unless grid.* names them)
POLYGON_GRID = {
    "thresh": [0.25, 0.3, 0.35, 0.4],
    "box_thresh": [0.5, 0.6],
    "split_thresh": [None],
    "threshold_map_offset": [None],
}
# the unclip ratios tried, as multiples of the checkpoint's own: from 20 % less growth to 40 % more
UNCLIP_FACTORS = (0.8, 0.9, 1.0, 1.1, 1.2, 1.4)


def unclip_ratios(own: float) -> list[float]:
    """The ratios around ``own`` that the grid tries unless told otherwise."""
    return sorted({round(own * factor, 2) for factor in UNCLIP_FACTORS})


def settings(
    replaced: dict[str, list[float]] | None = None,
    polygons: bool = True,
    box_unclip_ratio: float = DBPostProcessor.box_unclip_ratio,
    polygon_unclip_ratio: float = DBPostProcessor.polygon_unclip_ratio,
) -> list[dict]:
    """Every combination of the box grid (then the polygon grid), with ``replaced`` values for the
    settings it names; the unclip ratios bracket the given ones (the checkpoint's)."""
    replaced = replaced or {}
    box_defaults = {**GRID, "box_unclip_ratio": unclip_ratios(box_unclip_ratio)}
    polygon_defaults = {**POLYGON_GRID, "polygon_unclip_ratio": unclip_ratios(polygon_unclip_ratio)}
    unknown = set(replaced) - set(box_defaults) - set(polygon_defaults)
    if unknown:
        known = ", ".join(sorted({*box_defaults, *polygon_defaults}))
        raise SystemExit(f"no grid setting {', '.join(sorted(unknown))}; known: {known}")
    box_grid = {k: replaced.get(k, v) for k, v in box_defaults.items()}
    polygon_grid = {k: replaced.get(k, v) for k, v in polygon_defaults.items()}
    quads = [dict(zip(box_grid, values), use_polygon=False) for values in itertools.product(*box_grid.values())]
    shapes = [dict(zip(polygon_grid, values), use_polygon=True) for values in itertools.product(*polygon_grid.values())]
    # a split threshold only means something above the region threshold
    return [s for s in quads + (shapes if polygons else []) if s.get("split_thresh") is None or s["split_thresh"] > s["thresh"]]


def split_grid_arguments(argv: list[str]) -> tuple[dict[str, list[float]], bool, list[str]]:
    """(replaced grid values, whether to try polygons, the other arguments)."""
    replaced, polygons, rest = {}, True, []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.startswith("grid."):
            try:
                replaced[key[len("grid."):]] = [
                    None if v.strip().lower() in ("none", "null") else float(v)
                    for v in value.strip("[]").split(",")
                    if v.strip()
                ]
            except ValueError:
                raise SystemExit(f"{arg}: expected comma-separated numbers (or none)") from None
        elif key == "polygons":
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"{arg}: expected polygons=true or polygons=false")
            polygons = value.lower() == "true"
        else:
            rest.append(arg)
    return replaced, polygons, rest


def threshold_maps(cfg: DictConfig, module: DBNetModule, dataset: ReceiptDataset) -> list[np.ndarray]:
    """The threshold branch's (1, H, W) map of every image, at the run's precision."""
    if module.tta_scales:
        raise SystemExit("grid.threshold_map_offset: the threshold map has no test-time augmentation; drop tta_scales")
    maps = []
    with torch.no_grad(), inference_autocast(cfg, module.mean.device):
        for index in range(len(dataset)):
            outputs = module(collate_receipts([dataset[index]])["image"].to(module.mean.device), with_threshold=True)
            if "thresh_logits" not in outputs:
                raise SystemExit(f"grid.threshold_map_offset: {type(module.model).__name__} has no threshold branch")
            maps.append(probability_maps(outputs["thresh_logits"]))
    return maps


def decode(module: DBNetModule, setting: dict, logits: torch.Tensor, batch: dict, thresholds: np.ndarray | None) -> list:
    """The detections of one cached image under one setting of the grid."""
    offset = setting.get("threshold_map_offset")
    postprocess = dataclasses.replace(module.postprocess, **{k: v for k, v in setting.items() if k != "threshold_map_offset"})
    thresh_maps = None if offset is None else thresholds + offset
    return decode_probabilities(postprocess, probability_maps(logits), batch, thresh_maps=thresh_maps)


def main(argv: list[str]) -> list[tuple[dict, dict]]:
    replaced, polygons, argv = split_grid_arguments(argv)
    settings(replaced, polygons)  # an unknown grid setting fails before the checkpoint loads
    own, overrides = parse(argv, __doc__)
    cfg, module, dataset = load(own, overrides)
    grid = settings(replaced, polygons, module.postprocess.box_unclip_ratio, module.postprocess.polygon_unclip_ratio)
    start = time.perf_counter()
    cached = [(batch, logits) for batch, logits, _ in network_outputs(cfg, module, dataset)]
    use_thresholds = any(setting.get("threshold_map_offset") is not None for setting in grid)
    thresholds = threshold_maps(cfg, module, dataset) if use_thresholds else [None] * len(cached)
    print(f"{len(cached)} images through the network in {time.perf_counter() - start:.0f} s", flush=True)
    base = module.postprocess
    results = []
    for setting in grid:
        found = [decode(module, setting, logits, batch, t)[0] for (batch, logits), t in zip(cached, thresholds)]
        scores = evaluate([record(batch, detections) for (batch, _), detections in zip(cached, found)])
        results.append((setting, scores))
        iou, cleval = scores["IoU hmean (pooled)"], scores["CLEval hmean"]
        print(f"  {setting} -> IoU-hmean {iou:.4f}, CLEval hmean {cleval:.4f}", flush=True)
    results.sort(key=lambda item: (-item[1]["IoU hmean (pooled)"], -item[1]["CLEval hmean"]))
    print("\n| thresh | split_thresh | threshold map + | box_thresh | use_polygon | unclip ratio "
          "| IoU P | IoU R | IoU H | CLEval P | CLEval R | CLEval H | CLEval H, box-shape counts |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for setting, s in results[:15]:
        ratio = setting.get("polygon_unclip_ratio") if setting["use_polygon"] else setting.get("box_unclip_ratio")
        split = setting.get("split_thresh", base.split_thresh)
        offset = setting.get("threshold_map_offset")
        print(f"| {setting['thresh']} | {split} | {offset} | {setting['box_thresh']} | {setting['use_polygon']} | {ratio} | "
              f"{s['IoU precision (pooled)']:.4f} | {s['IoU recall (pooled)']:.4f} | {s['IoU hmean (pooled)']:.4f} | "
              f"{s['CLEval precision']:.4f} | {s['CLEval recall']:.4f} | {s['CLEval hmean']:.4f} | "
              f"{s['CLEval hmean (box-shape character counts)']:.4f} |")
    best = dict(results[0][0])
    offset = best.pop("threshold_map_offset", None)
    print("\nbest: " + " ".join(f"models.postprocess.{k}={'null' if v is None else v}" for k, v in best.items())
          + ("" if offset is None else f" with the threshold map + {offset} (decoded by this benchmark only)"))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
