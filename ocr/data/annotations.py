"""Reading receipt annotations in the competition's UFO-style JSON layout.

``{"images": {name: {"words": {"0001": {"points": [[x, y], ...], "transcription": "..."}}}}}``

Points are pixel coordinates in the frame of the stored image file (before EXIF rotation).
A word whose transcription is ``###`` is "don't care": ignored by the loss and the metrics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DONT_CARE = "###"


class AnnotationError(ValueError):
    """Invalid annotation file or annotation entry; the message names the file."""


@dataclass
class Sample:
    name: str
    image_path: Path
    polygons: list[np.ndarray] = field(default_factory=list)  # (N, 2) float64 in the stored frame
    ignore: list[bool] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    annotated: bool = False


def _parse_points(points: object) -> np.ndarray:
    """``points`` as an (N, 2) float array, or raise ``ValueError`` saying what is wrong."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"points are not a list of [x, y] numbers ({error})") from None
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"points must be a list of [x, y] pairs, got shape {array.shape}")
    if array.shape[0] < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise ValueError("points contain NaN or infinite coordinates")
    return array


def load_annotation_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: malformed JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise AnnotationError(f'{path}: expected a top-level object with an "images" mapping')
    return data


def list_images(image_dir: Path) -> list[str]:
    return sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_samples(
    image_dir: str | Path,
    annotation_path: str | Path | None = None,
    invalid_polygon: str = "skip",
    missing_image: str = "error",
) -> list[Sample]:
    """Samples of one split.

    Without ``annotation_path`` every image of ``image_dir`` is listed, unannotated (a test
    split). ``invalid_polygon`` / ``missing_image``: ``"error"`` raises an
    :class:`AnnotationError` naming the file, ``"skip"`` logs a warning and drops the entry.
    """
    for option, value in (("invalid_polygon", invalid_polygon), ("missing_image", missing_image)):
        if value not in ("skip", "error"):
            raise ValueError(f"{option} must be 'skip' or 'error', got {value!r}")
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise AnnotationError(f"{image_dir}: image folder not found")
    if annotation_path is None:
        return [Sample(name, image_dir / name) for name in list_images(image_dir)]

    annotation_path = Path(annotation_path)
    images = load_annotation_file(annotation_path)["images"]
    samples: list[Sample] = []
    skipped_words = 0
    for name, entry in images.items():
        where = f"{annotation_path}: image {name!r}"
        image_path = image_dir / name
        if not image_path.is_file():
            message = f"{where}: image file {image_path} not found"
            if missing_image == "error":
                raise AnnotationError(message)
            log.warning("%s; skipping it", message)
            continue
        words = (entry or {}).get("words", {}) if isinstance(entry, dict) else None
        if not isinstance(words, dict):
            raise AnnotationError(f'{where}: "words" must be a mapping of word id to word')
        sample = Sample(name, image_path, annotated=True)
        for word_id, word in words.items():
            try:
                if not isinstance(word, dict) or "points" not in word:
                    raise ValueError('word has no "points"')
                polygon = _parse_points(word["points"])
            except ValueError as error:
                message = f"{where}, word {word_id!r}: {error}"
                if invalid_polygon == "error":
                    raise AnnotationError(message) from None
                log.warning("%s; skipping the word", message)
                skipped_words += 1
                continue
            text = word.get("transcription")
            sample.polygons.append(polygon)
            sample.texts.append(text if isinstance(text, str) else None)
            sample.ignore.append(text == DONT_CARE)
        samples.append(sample)
    if skipped_words:
        log.warning("%s: skipped %d invalid word polygons", annotation_path, skipped_words)
    if samples and not skipped_words and not any(sample.polygons for sample in samples):
        # a competition test.json lists its images with empty "words": no ground truth to score
        log.info("%s: no image has any word; treating the split as unannotated (image list only)", annotation_path)
        for sample in samples:
            sample.annotated = False
    return samples
