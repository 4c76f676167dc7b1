"""Prediction outputs: the UFO-style JSON and the competition CSV ``filename,polygons``.

CSV rows hold one image each; a polygon is its integer coordinates joined by spaces
(``x1 y1 x2 y2 ...``) and polygons are joined by ``|``. The CSV is validated before it is
written so a broken submission is never produced, and the JSON and CSV are written as one pair
(both or neither) so a failed write leaves the previous pair intact.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


class SubmissionError(ValueError):
    """A submission that would be rejected; the message names the image and the problem."""


def to_integer_polygon(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """Round to integer pixels inside the image; vertices that collapse together are merged."""
    points = np.clip(np.round(np.asarray(polygon, dtype=np.float64)), 0, [width - 1, height - 1]).astype(np.int64)
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(points[1:] != points[:-1], axis=1)
    if len(points) > 1 and np.all(points[-1] == points[0]):
        keep[-1] = False
    return points[keep]


def format_polygons(polygons: Iterable[np.ndarray]) -> str:
    return "|".join(" ".join(str(int(v)) for v in polygon.reshape(-1)) for polygon in polygons)


def parse_polygons(field: str) -> list[np.ndarray]:
    if not field.strip():
        return []
    return [np.asarray([float(v) for v in part.split()], dtype=np.float64).reshape(-1, 2) for part in field.split("|")]


def validate_submission(rows: dict[str, str], expected: dict[str, tuple[int, int]]) -> None:
    """Every expected image present once; each polygon >= 4 points of finite integers inside its image."""
    missing = sorted(set(expected) - set(rows))
    if missing:
        raise SubmissionError(f"submission is missing {len(missing)} image(s), e.g. {missing[:3]}")
    unknown = sorted(set(rows) - set(expected))
    if unknown:
        raise SubmissionError(f"submission has images that were not predicted: {unknown[:3]}")
    for name, field in rows.items():
        width, height = expected[name]
        for k, part in enumerate(field.split("|") if field.strip() else []):
            values = part.split()
            where = f"image {name!r}, polygon {k}"
            if len(values) % 2 or len(values) < 8:
                raise SubmissionError(f"{where}: needs at least 4 (x, y) points, got {len(values)} numbers")
            for value in values:
                if not value.lstrip("-").isdigit():
                    raise SubmissionError(f"{where}: coordinate {value!r} is not an integer")
            coords = np.asarray([int(v) for v in values]).reshape(-1, 2)  # integers: finite
            if coords.min() < 0 or coords[:, 0].max() > width - 1 or coords[:, 1].max() > height - 1:
                raise SubmissionError(f"{where}: coordinates outside the {width}x{height} image")


def build_rows(predictions: Sequence[dict]) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """``predictions``: dicts with ``name``, ``raw_size`` (w, h) and ``polygons``."""
    rows: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for prediction in predictions:
        width, height = prediction["raw_size"]
        polygons = [to_integer_polygon(p, width, height) for p in prediction["polygons"]]
        rows[prediction["name"]] = format_polygons(p for p in polygons if len(p) >= 4)
        sizes[prediction["name"]] = (width, height)
    return rows, sizes


def read_submission_csv(path: str | Path) -> dict[str, list[np.ndarray]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["filename", "polygons"]:
            raise SubmissionError(f"{path}: header must be 'filename,polygons', got {reader.fieldnames}")
        return {row["filename"]: parse_polygons(row["polygons"] or "") for row in reader}


def submission_csv_text(predictions: Sequence[dict], expected_images: Iterable[str] | None = None) -> str:
    """The CSV of ``predictions``, validated: every expected image present, every polygon inside
    its image; raises SubmissionError naming the image otherwise."""
    rows, sizes = build_rows(predictions)
    if expected_images is not None:
        missing = sorted(set(expected_images) - set(rows))
        if missing:
            raise SubmissionError(f"no prediction for {len(missing)} image(s), e.g. {missing[:3]}")
    validate_submission(rows, sizes)
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["filename", "polygons"])
    for name in sorted(rows):
        writer.writerow([name, rows[name]])
    return handle.getvalue()


def predictions_json_text(predictions: Sequence[dict]) -> str:
    """The UFO-style JSON of ``predictions`` (integer points inside each image)."""
    images = {}
    for prediction in predictions:
        width, height = prediction["raw_size"]
        words = {}
        for polygon in prediction["polygons"]:
            points = to_integer_polygon(polygon, width, height)
            if len(points) >= 4:
                words[f"{len(words) + 1:04d}"] = {"points": points.tolist()}
        images[prediction["name"]] = {"img_w": width, "img_h": height, "words": words}
    return json.dumps({"images": images}, ensure_ascii=False)


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check a file can be written there, before any long pass;
    raises OSError naming the folder otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OSError(f"{folder}: the output folder is not writable ({error.strerror or error})") from error
    return folder


def write_files_atomically(contents: dict[Path, str]) -> None:
    """Write every file of ``contents`` ({path: text}) or none: each goes to a temporary file
    beside its target first, and the targets are replaced only once all are complete, so a failure
    (disk full, read-only folder, a path that is a folder) leaves the previous files as they were."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path in contents:
            if path.is_dir():  # found now, not after the first file was replaced
                raise IsADirectoryError(21, "a folder stands at the file's path", str(path))
        for path, text in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((Path(temporary), path))
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        for temporary, path in staged:
            os.replace(temporary, path)
    except OSError as error:
        raise OSError(
            f"could not write {', '.join(str(p) for p in contents)}: {error}; the previous files are unchanged"
        ) from error
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def write_submission_csv(path: str | Path, predictions: Sequence[dict], expected_images: Iterable[str] | None = None) -> Path:
    """Write the validated CSV of ``predictions`` at ``path`` (atomically)."""
    path = Path(path)
    write_files_atomically({path: submission_csv_text(predictions, expected_images)})
    return path


def write_predictions_json(path: str | Path, predictions: Sequence[dict]) -> Path:
    """Write the UFO-style JSON of ``predictions`` at ``path`` (atomically)."""
    path = Path(path)
    write_files_atomically({path: predictions_json_text(predictions)})
    return path


def write_submission(
    folder: str | Path, name: str, predictions: Sequence[dict], expected_images: Iterable[str] | None = None
) -> dict[str, Path]:
    """Write ``<folder>/<name>.json`` and the validated ``<folder>/<name>.csv`` as one pair: both,
    or neither (the previous pair stays intact). Returns their paths."""
    folder = Path(folder)
    paths = {"json": folder / f"{name}.json", "csv": folder / f"{name}.csv"}
    # both texts are built (and the CSV validated) before anything touches the disk
    contents = {
        paths["json"]: predictions_json_text(predictions),
        paths["csv"]: submission_csv_text(predictions, expected_images),
    }
    write_files_atomically(contents)
    return paths
