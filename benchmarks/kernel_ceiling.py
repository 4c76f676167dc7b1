"""The score a perfect network would get: the training kernels themselves, decoded by the
post-processing and scored like a checkpoint. Prints the same tables as ``benchmarks.accuracy``.

    python -m benchmarks.kernel_ceiling preset=sroie images=../shared/data/sroie_dev/val/images \\
        annotations=../shared/data/sroie_dev/val/val.json

Every image is sized as for inference (``datasets.eval_resize``); its words' shrink map is drawn
there with the preset's targets (``datasets.targets``: shrink ratio, smallest word) and handed to
the preset's post-processor as the probability map. Whatever this loses (kernels of neighbours
that touch, boxes grown back to the wrong size, words too small to keep) no training can win
back, so it separates the kernels' and the post-processing's share of the errors from the
network's. ``grid.box_unclip_ratio=0.8,1.0,1.2`` scores several unclip ratios (one table row each,
then the breakdowns of the first). Any other argument is a Hydra override of the config.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np
from hydra.utils import instantiate

from benchmarks.accuracy import evaluate, parse, print_breakdowns, print_table, record
from benchmarks.postprocess_grid import split_grid_arguments
from ocr.config import compose_config
from ocr.data.dataset import ReceiptDataset, collate_receipts
from ocr.lightning_module import decode_probabilities


def kernel_maps(dataset: ReceiptDataset) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(batch of one image, its (1, H, W) shrink map at the inference size) for every image; the
    dataset draws the map from the words as it does for validation's loss (upright frame)."""
    maps = []
    for index in range(len(dataset)):
        item = dataset[index]
        maps.append((collate_receipts([item]), item["shrink_map"].numpy()[None]))
    return maps


def main(argv: list[str]) -> list[tuple[float, dict[str, float]]]:
    replaced, _, argv = split_grid_arguments(argv)
    unknown = set(replaced) - {"box_unclip_ratio"}
    if unknown:
        raise SystemExit(f"only grid.box_unclip_ratio can be varied here, not {', '.join(sorted(unknown))}")
    own, overrides = parse(argv, __doc__, {"images": None, "annotations": None})
    cfg = compose_config("test", overrides)
    postprocess = instantiate(cfg.models.postprocess)
    targets = instantiate(cfg.datasets.targets)
    resize = instantiate(cfg.datasets.eval_resize)
    dataset = ReceiptDataset(own["images"], own["annotations"], resize=resize, targets=targets)
    maps = kernel_maps(dataset)
    print(f"\n{len(dataset)} images from {own['images']}; kernels at shrink ratio {targets.shrink_ratio}, words from "
          f"{targets.min_text_size} px; eval resize {cfg.datasets.eval_resize.mode} {cfg.image_size}")
    results, first_records = [], None
    for ratio in replaced.get("box_unclip_ratio", [postprocess.box_unclip_ratio]):
        setting = dataclasses.replace(postprocess, box_unclip_ratio=ratio)
        records = [record(batch, decode_probabilities(setting, shrink_map, batch)[0]) for batch, shrink_map in maps]
        scores = evaluate(records)
        results.append((ratio, scores))
        print(f"\nbox_unclip_ratio {ratio}")
        print_table(scores)
        first_records = first_records or records
    print_breakdowns(first_records)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
