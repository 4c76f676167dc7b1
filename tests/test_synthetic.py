"""Tests for the synthetic receipt generator (ocr.data.synthetic)."""

from __future__ import annotations

import json
import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Polygon

from ocr.data.synthetic import build_synthetic_dataset, render_receipt


def _shoelace(points: list[list[float]]) -> float:
    pts = np.asarray(points, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_render_is_deterministic_and_seed_dependent() -> None:
    image_a, words_a = render_receipt(7)
    image_b, words_b = render_receipt(7)
    assert image_a.tobytes() == image_b.tobytes()
    assert words_a == words_b
    image_c, words_c = render_receipt(8)
    assert image_c.tobytes() != image_a.tobytes() or words_c != words_a


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("degrade", [True, False])
def test_polygons_valid_inside_and_disjoint(seed: int, degrade: bool) -> None:
    image, words = render_receipt(seed, degrade=degrade)
    assert image.mode == "RGB"
    assert 30 <= len(words) <= 80
    w, h = image.size
    polygons = []
    for word in words:
        points = word["points"]
        assert len(points) == 4
        assert word["transcription"] and " " not in word["transcription"]
        for x, y in points:
            assert isinstance(x, float) and isinstance(y, float)
            assert 0 <= x <= w - 1 and 0 <= y <= h - 1
        # Clockwise on screen (y down) means a positive shoelace area in image coordinates.
        assert _shoelace(points) > 1.0
        polygons.append(Polygon(points))
    for a, b in combinations(polygons, 2):
        assert a.intersection(b).area < 0.5


@pytest.mark.parametrize("seed", [0, 5])
def test_boxes_cover_ink(seed: int) -> None:
    image, words = render_receipt(seed, degrade=False)
    gray = np.asarray(image.convert("L"))
    for word in words:
        pts = np.asarray(word["points"])
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
        assert gray[y0:y1, x0:x1].min() < 128, word["transcription"]


def test_build_dataset_layout_and_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "synth"
    counts = {"train": 3, "val": 2, "test": 1}
    with caplog.at_level(logging.INFO, logger="ocr.data.synthetic"):
        assert build_synthetic_dataset(root, 3, 2, 1, seed=0) == root
    assert "Generated 6 synthetic receipts" in caplog.text

    for split, count in counts.items():
        data = json.loads((root / "jsons" / f"{split}.json").read_text())
        assert sorted(data["images"]) == [f"synth_{split}_{i:04d}.jpg" for i in range(count)]
        for name, entry in data["images"].items():
            with Image.open(root / "images" / split / name) as image:
                assert image.format == "JPEG"
                assert image.size == (entry["img_w"], entry["img_h"])
            assert entry["words"], "every split, test included, carries its words"
            for word_id, word in entry["words"].items():
                assert len(word_id) == 4 and word_id.isdigit()
                assert len(word["points"]) == 4 and isinstance(word["transcription"], str)

    files = sorted(p for p in root.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    contents = {p: p.read_bytes() for p in files}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ocr.data.synthetic"):
        build_synthetic_dataset(root, 3, 2, 1, seed=0)
    assert "Using cached synthetic receipts" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    # Forced regeneration with the same arguments is byte-identical.
    (root / ".complete").unlink()
    build_synthetic_dataset(root, 3, 2, 1, seed=0)
    assert {p: p.read_bytes() for p in files} == contents

    # A different seed regenerates different content.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ocr.data.synthetic"):
        build_synthetic_dataset(root, 3, 2, 1, seed=1)
    assert "Generated 6" in caplog.text
    assert (root / "jsons" / "train.json").read_bytes() != contents[root / "jsons" / "train.json"]


def test_splits_use_disjoint_seeds(tmp_path: Path) -> None:
    root = build_synthetic_dataset(tmp_path, 1, 1, 1, seed=0)
    payloads = [(root / "jsons" / f"{s}.json").read_text() for s in ("train", "val", "test")]
    words = [next(iter(json.loads(p)["images"].values()))["words"] for p in payloads]
    assert words[0] != words[1] and words[1] != words[2] and words[0] != words[2]
