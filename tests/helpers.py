"""Small synthetic inputs shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_split(root: Path, split: str, images: dict[str, dict], size=(200, 120)) -> tuple[Path, Path]:
    """Write ``images`` ({name: {"words": ...}}) in the competition layout with blank JPEGs."""
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.fromarray(np.full((size[1], size[0], 3), 255, np.uint8)).save(image_dir / name)
    json_path = root / "jsons" / f"{split}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images}))
    return image_dir, json_path


def tiny_run_overrides(root: Path) -> list[str]:
    """Hydra overrides for end-to-end runner tests: a 4/2/3-image synthetic set under ``root``,
    256-pixel pages, a narrow decoder, no DataLoader workers."""
    return [
        f"datasets.synthetic.root={root / 'data'}",
        "datasets.synthetic.num_train=4",
        "datasets.synthetic.num_val=2",
        "datasets.synthetic.num_test=3",
        "datasets.num_workers=0",
        "datasets.batch_size=2",
        "datasets.eval_batch_size=2",
        "image_size=256",
        "models.decoder.inner_channels=64",
    ]
