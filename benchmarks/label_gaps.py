"""How consistently an annotation set splits lines at spaces, measured on the ink.

For every labelled box whose transcription has a space, the widest ink gap inside it (a space the
labels keep inside one box); for every pair of neighbouring boxes of one line, the ink gap between
them (a space the labels split). Both are in units of the line height. Where the two overlap, no
detector can tell from the gap width alone where the labels split a line: the script prints the
width threshold that puts the most gaps on the labels' side, and how many it still gets wrong.

    python -m benchmarks.label_gaps images=../shared/data/sroie_dev/val/images \\
        annotations=../shared/data/sroie_dev/val/val.json [threshold=1.05]

``threshold=`` scores a threshold chosen elsewhere (e.g. on the training split) instead.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

from ocr.data.annotations import load_samples
from ocr.data.dataset import read_image
from ocr.data.targets import line_neighbours
from ocr.geometry import exif_to_upright

# the middle rows of a line: ascenders, descenders and underlines do not bridge its spaces
CORE = 0.15
MIN_HEIGHT = 8.0  # px: below this a gap is a pixel or two, all noise
NEIGHBOURS_WITHIN = 3.0  # line heights; farther apart nothing would ever merge them
THRESHOLDS = (0.5, 0.75, 1.0, 1.5)


def inked_columns(ink: np.ndarray, left: float, right: float, top: float, bottom: float) -> np.ndarray:
    """The x of every column of ``[left, right)`` with ink in the line's core rows, ascending."""
    height = bottom - top
    y0, y1 = int(round(top + CORE * height)), int(round(bottom - CORE * height))
    x0, x1 = max(int(round(left)), 0), min(int(round(right)), ink.shape[1])
    return np.flatnonzero(ink[max(y0, 0) : min(y1, ink.shape[0]), x0:x1].any(axis=0)) + x0


def widest_space(inked: np.ndarray) -> int:
    """The widest run of inkless columns between two inked ones (0 if none)."""
    return int((np.diff(inked) - 1).max()) if len(inked) > 1 else 0


def image_gaps(ink: np.ndarray, polygons: list[np.ndarray], texts: list[str | None]) -> tuple[list[float], list[float]]:
    """(widest space inside each spaced box, ink gap between each same-line neighbour pair), in line heights."""
    boxes = [(*p.min(axis=0), *p.max(axis=0)) for p in polygons]
    inside = []
    for (left, top, right, bottom), text in zip(boxes, texts):
        if text and " " in text.strip() and bottom - top >= MIN_HEIGHT:
            space = widest_space(inked_columns(ink, left, right, top, bottom))
            if space:
                inside.append(space / (bottom - top))
    between = []
    for i, j in line_neighbours(polygons, NEIGHBOURS_WITHIN):
        (left, top_i, right_i, bottom_i), (left_j, top_j, right, bottom_j) = boxes[i], boxes[j]
        top, bottom = max(top_i, top_j), min(bottom_i, bottom_j)  # the rows both boxes share
        height = min(bottom_i - top_i, bottom_j - top_j)
        if height < MIN_HEIGHT:
            continue
        inked = inked_columns(ink, left, right, top, bottom)
        boundary = (right_i + left_j) / 2  # the gap is the inkless run that spans it
        before, after = inked[inked <= boundary], inked[inked > boundary]
        if len(before) and len(after):
            between.append((after.min() - before.max() - 1) / height)
    return inside, between


def measure(images: str, annotations: str) -> tuple[np.ndarray, np.ndarray]:
    inside, between = [], []
    for sample in load_samples(images, annotations):
        rgb, orientation, raw_size = read_image(sample.image_path)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        _, ink = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)  # dark print on paper
        care = [
            (exif_to_upright(p, orientation, raw_size), t)
            for p, t, i in zip(sample.polygons, sample.texts, sample.ignore)
            if not i
        ]
        kept, split = image_gaps(ink.astype(bool), [p for p, _ in care], [t for _, t in care])
        inside += kept
        between += split
    return np.asarray(inside), np.asarray(between)


def best_threshold(inside: np.ndarray, between: np.ndarray) -> float:
    """The gap width (line heights) that puts the most gaps on the labels' side (split at or above it)."""
    candidates = np.unique(np.concatenate([inside, between, [np.inf]]))
    right = [np.sum(between >= t) + np.sum(inside < t) for t in candidates]
    return float(candidates[int(np.argmax(right))])


def main(argv: list[str]) -> dict[str, float]:
    own = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    missing = [k for k in ("images", "annotations") if not own.get(k)]
    if missing:
        raise SystemExit(f"missing {', '.join(f'{k}=...' for k in missing)}\n\n{__doc__}")
    inside, between = measure(own["images"], own["annotations"])
    if not len(inside) or not len(between):
        raise SystemExit(f"{own['annotations']}: no boxes with a space in their transcription, or no same-line neighbours")
    threshold = float(own["threshold"]) if own.get("threshold") else best_threshold(inside, between)
    merged, split = int(np.sum(between < threshold)), int(np.sum(inside >= threshold))
    print(f"\n{own['annotations']}: {len(inside)} boxes with a space, {len(between)} same-line neighbour pairs")
    print("| gap (line heights) | spaces kept inside a box | gaps split between boxes |")
    print("| --- | --- | --- |")
    for t in THRESHOLDS:
        print(f"| >= {t} | {np.mean(inside >= t):.3f} | {np.mean(between >= t):.3f} |")
    for name, q in (("median", 0.5), ("10th percentile", 0.1), ("90th percentile", 0.9)):
        print(f"| {name} | {np.quantile(inside, q):.2f} | {np.quantile(between, q):.2f} |")
    share = 1 - (merged + split) / (len(inside) + len(between))
    print(
        f"\nsplitting at gaps >= {threshold:.2f} line heights{'' if own.get('threshold') else ' (the best threshold here)'}: "
        f"{share:.3f} of the gaps on the labels' side; it would merge {merged} neighbour pairs and split {split} boxes"
    )
    return {"threshold": threshold, "share": share, "merged_pairs": merged, "split_boxes": split}


if __name__ == "__main__":
    main(sys.argv[1:])
