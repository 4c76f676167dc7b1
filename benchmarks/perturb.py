"""Write a photo-like copy of a folder + annotation JSON, to measure how a detector trained on flat
scans holds up on receipts photographed by phone (tilted, in perspective, unevenly lit, blurred,
recompressed), with the same words transformed with the pixels.

    python -m benchmarks.perturb images=../shared/data/sroie_dev/val/images \\
        annotations=../shared/data/sroie_dev/val/val.json out=outputs/val_photo
    python -m benchmarks.accuracy checkpoint_path=... images=outputs/val_photo/images \\
        annotations=outputs/val_photo/annotations.json

Every image gets its own draw from a fixed seed (``seed=0``), so the copy is the same on every run
and every machine with the same library versions. ``rotate=8`` (degrees, either way) and
``perspective=0.05`` (albumentations' ``Perspective`` scale) set the geometry; the photometric
changes are fixed. Axis-aligned boxes become rotated quadrilaterals; the scorers take polygons.
Words keep their transcriptions (CLEval counts characters from them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from ocr.data.annotations import DONT_CARE, load_samples
from ocr.data.dataset import read_image
from ocr.data.transforms import PolygonAugment
from ocr.geometry import exif_to_upright

# a desk or a hand behind the paper, not more paper
BACKGROUND = (96, 92, 88)


def photo_pipeline(rotate: float = 8.0, perspective: float = 0.05, seed: int = 0) -> PolygonAugment:
    """Geometry that keeps the whole page in the frame (``fit_output``), then lighting, blur,
    sensor noise and JPEG artefacts."""
    return PolygonAugment(
        [
            A.Perspective(scale=(perspective / 2, perspective), fit_output=True, fill=BACKGROUND, p=1.0),
            A.Affine(rotate=(-rotate, rotate), fit_output=True, fill=BACKGROUND, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=(-0.25, 0.1), contrast_limit=(-0.4, 0.0), p=0.8),
            A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.2, 0.4), p=0.5),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.6),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.5),
            A.ImageCompression(quality_range=(40, 80), p=1.0),
        ],
        seed=seed,
    )


def perturb_folder(images: Path, annotations: Path, out: Path, rotate: float = 8.0, perspective: float = 0.05,
                   seed: int = 0) -> dict:  # fmt: skip
    """Write ``out/images/`` (the images under their own names) and ``out/annotations.json``;
    returns the JSON written."""
    samples = load_samples(images, annotations, invalid_polygon="error")
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = {}
    for index, sample in enumerate(samples):
        image, orientation, raw_size = read_image(sample.image_path)
        polygons = [exif_to_upright(p, orientation, raw_size) for p in sample.polygons]
        pipeline = photo_pipeline(rotate, perspective, seed=seed * 100_003 + index)
        photo, moved = pipeline.move(image, polygons)
        height, width = photo.shape[:2]
        words = {}
        for number, (points, ignored, text) in enumerate(zip(moved, sample.ignore, sample.texts), 1):
            word = {"points": np.round(np.clip(points, 0, [width - 1, height - 1]), 1).tolist()}
            if ignored:
                word["transcription"] = DONT_CARE
            elif text is not None:
                word["transcription"] = text
            words[f"{number:04d}"] = word
        # already JPEG-compressed by the pipeline: stored at a quality that adds little more
        target = out / "images" / sample.name
        if not cv2.imwrite(str(target), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98]):
            raise OSError(f"{target}: could not write the image")
        entries[sample.name] = {"img_w": width, "img_h": height, "words": words}
    data = {"images": entries}
    (out / "annotations.json").write_text(json.dumps(data), encoding="utf-8")
    return data


def main(argv: list[str]) -> None:
    own = {"images": None, "annotations": None, "out": None, "rotate": "8", "perspective": "0.05", "seed": "0"}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in own or not value:
            raise SystemExit(f"unknown or empty argument {arg!r}\n\n{__doc__}")
        own[key] = value
    missing = [k for k, v in own.items() if v is None]
    if missing:
        raise SystemExit(f"missing {', '.join(f'{k}=...' for k in missing)}\n\n{__doc__}")
    data = perturb_folder(Path(own["images"]), Path(own["annotations"]), Path(own["out"]),
                          float(own["rotate"]), float(own["perspective"]), int(own["seed"]))  # fmt: skip
    words = sum(len(entry["words"]) for entry in data["images"].values())
    print(f"{len(data['images'])} images, {words} words -> {own['out']}")


if __name__ == "__main__":
    main(sys.argv[1:])
