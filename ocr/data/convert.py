"""Converters between the annotation formats people hold and the project's UFO-style JSON.

``python runners/convert.py FORMAT INPUT OUTPUT [--images DIR] [--missing skip|error] [--strip-upload-prefix]``
(or ``python -m ocr.data.convert ...``). Formats:

``icdar2015``
    A folder of ``gt_<image stem>.txt`` (or ``<image stem>.txt``) files, one word per line:
    ``x1,y1,x2,y2,x3,y3,x4,y4,transcription``; the transcription is everything after the 8th
    comma (it may contain commas), ``###`` is don't care, a UTF-8 BOM is allowed, blank lines are
    ignored. Each file's image is looked up by stem (any of ``IMAGE_SUFFIXES``) in ``--images``
    (default: the input folder).
``sroie``
    SROIE task-1 ``<image stem>.txt`` files, same lines. Files that are not UTF-8 are read as
    latin-1, with a warning naming the file.
``labelme``
    A folder of labelme ``<stem>.json`` files. ``polygon`` shapes are kept as drawn,
    ``rectangle`` shapes (2 corners) become 4 corners, other shape types are skipped with a
    warning. The label is the transcription (``###`` = don't care). The image's file name is the
    last component of ``imagePath``.
``labelstudio``
    A Label Studio JSON export (a list of tasks). The image's file name is the last path component
    of ``data.image`` (URL-decoded; ``--strip-upload-prefix`` drops the ``<8 hex digits>-`` that
    Label Studio puts before uploaded files). The first annotation that was not cancelled is read:
    ``polygonlabels`` / ``polygon`` (points in percent of ``original_width`` / ``original_height``)
    and ``rectanglelabels`` / ``rectangle`` (``x``, ``y``, ``width``, ``height`` in percent,
    ``rotation`` in degrees, clockwise about the top-left corner) regions; a ``textarea`` result
    with the same ``id`` gives the transcription. A region labelled ``###`` or transcribed ``###``
    is don't care; a region without a ``textarea`` has no transcription (a normal word).
``to-icdar2015``
    The reverse: a UFO JSON file to a folder of ``gt_<image stem>.txt`` files. 4-point polygons
    are written as they are; other polygons as their minimum-area rectangle (integer corners,
    counted in the summary). A word without a transcription is written with an empty
    transcription field, so it stays a normal word (only ``###`` is don't care); line breaks in a
    transcription become spaces.

Missing files: a txt / labelme file whose image is not in the image folder, or an image of the
folder without an annotation (and, for Label Studio, a task without an annotation) is an error
with ``--missing error`` (the default) and is skipped with a warning with ``--missing skip``.
For labelme and Label Studio the images are only checked when ``--images`` is given.

Outputs are written atomically (a temporary file beside the target, then ``os.replace``) as UTF-8.
A written JSON is read back with :func:`ocr.data.annotations.load_annotation_file` and its words
counted; written txt files are parsed back.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from ocr.data.annotations import DONT_CARE, IMAGE_SUFFIXES, AnnotationError, load_annotation_file

log = logging.getLogger(__name__)

FORMATS = ("icdar2015", "sroie", "labelme", "labelstudio", "to-icdar2015")
MISSING_CHOICES = ("error", "skip")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")
_LS_POLYGON_TYPES = ("polygonlabels", "polygon")
_LS_RECTANGLE_TYPES = ("rectanglelabels", "rectangle")

Point = list[float]


class ConvertError(ValueError):
    """An input that cannot be converted; the message names the file (and line) and the problem."""


@dataclass
class Word:
    points: list[Point]
    transcription: str | None = None

    def to_ufo(self) -> dict:
        word: dict = {"points": [[_number(x), _number(y)] for x, y in self.points]}
        if self.transcription is not None:
            word["transcription"] = self.transcription
        return word


@dataclass
class Summary:
    """What a conversion wrote: counted from the written output, not from the input."""

    output: Path
    images: int = 0
    words: int = 0
    dont_care: int = 0
    skipped: int = 0
    rectangles: int = 0  # to-icdar2015: polygons written as their minimum-area rectangle

    def line(self, fmt: str) -> str:
        text = (
            f"{fmt}: wrote {self.output}: {self.images} images, {self.words} words "
            f"({self.dont_care} don't care), {self.skipped} skipped"
        )
        if self.rectangles:
            text += f", {self.rectangles} polygons written as minimum-area rectangles"
        return text


# --------------------------------------------------------------------------- small helpers


def _number(value: float) -> int | float:
    """A coordinate for output: rounded to 1/1000 px, an int when it is whole."""
    rounded = round(float(value), 3)
    return int(rounded) if rounded.is_integer() else rounded


def _is_dont_care(text: str | None) -> bool:
    return text is not None and text.strip() == DONT_CARE


def _normalise_text(text: str | None) -> str | None:
    """``###`` with stray spaces around it becomes ``###``; other texts are kept verbatim."""
    return DONT_CARE if _is_dont_care(text) else text


def _check_missing(missing: str) -> None:
    if missing not in MISSING_CHOICES:
        raise ValueError(f"missing must be one of {MISSING_CHOICES}, got {missing!r}")


def _report_missing(message: str, missing: str) -> None:
    if missing == "error":
        raise ConvertError(f"{message} (use --missing skip to skip it)")
    log.warning("%s; skipping it", message)


def _image_index(images_dir: Path) -> dict[str, list[str]]:
    """Image file names of ``images_dir`` by stem."""
    if not images_dir.is_dir():
        raise ConvertError(f"{images_dir}: image folder not found")
    index: dict[str, list[str]] = {}
    for path in sorted(images_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(path.stem, []).append(path.name)
    return index


def _check_unused_images(images_dir: Path, used: set[str], missing: str) -> int:
    """Report the images of ``images_dir`` that no annotation names; returns how many were skipped."""
    skipped = 0
    for names in _image_index(images_dir).values():
        for name in names:
            if name not in used:
                _report_missing(f"{images_dir / name}: image has no annotation", missing)
                skipped += 1
    return skipped


def _basename(path: str) -> str:
    """The last component of a path written on any system (labelme on Windows writes backslashes)."""
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    left, right = sorted((x0, x1))
    top, bottom = sorted((y0, y1))
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


def _points(raw: object, where: str) -> list[Point]:
    """``raw`` as a list of finite [x, y] pairs, or a :class:`ConvertError` naming ``where``."""
    if not isinstance(raw, (list, tuple)):
        raise ConvertError(f"{where}: points must be a list of [x, y] pairs, got {type(raw).__name__}")
    points: list[Point] = []
    for index, point in enumerate(raw):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise ConvertError(f"{where}: point {index} is not an [x, y] pair: {point!r}")
        try:
            x, y = float(point[0]), float(point[1])
        except (TypeError, ValueError):
            raise ConvertError(f"{where}: point {index} has a coordinate that is not a number: {point!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ConvertError(f"{where}: point {index} is not finite: {point!r}")
        points.append([x, y])
    return points


def ufo_document(images: dict[str, list[Word]]) -> dict:
    """``{"images": {name: {"words": {"0001": ...}}}}`` with the images sorted by name."""
    return {
        "images": {
            name: {"words": {f"{index:04d}": word.to_ufo() for index, word in enumerate(images[name], start=1)}}
            for name in sorted(images)
        }
    }


# --------------------------------------------------------------------------- writing


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to a temporary file beside ``path``, then move it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="\n", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def dumps_ufo(document: dict) -> str:
    """UFO JSON text with one word per line (readable and diffable), non-ASCII kept as is."""
    lines = ["{", '  "images": {']
    images = list(document["images"].items())
    for image_index, (name, entry) in enumerate(images):
        words = list(entry["words"].items())
        lines.append(f"    {json.dumps(name, ensure_ascii=False)}: {{")
        if not words:
            lines.append('      "words": {}')
        else:
            lines.append('      "words": {')
            for word_index, (word_id, word) in enumerate(words):
                comma = "," if word_index < len(words) - 1 else ""
                lines.append(f"        {json.dumps(word_id)}: {json.dumps(word, ensure_ascii=False)}{comma}")
            lines.append("      }")
        lines.append("    }" + ("," if image_index < len(images) - 1 else ""))
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def count_words(document: dict) -> tuple[int, int, int]:
    """(images, words, don't-care words) of a UFO document."""
    images = document["images"]
    words = [word for entry in images.values() for word in ((entry or {}).get("words") or {}).values()]
    dont_care = sum(1 for word in words if isinstance(word, dict) and word.get("transcription") == DONT_CARE)
    return len(images), len(words), dont_care


def write_ufo(images: dict[str, list[Word]], path: str | Path, skipped: int = 0) -> Summary:
    """Write ``images`` as UFO JSON to ``path`` atomically, read it back and count what it holds."""
    path = Path(path)
    document = ufo_document(images)
    write_text_atomic(path, dumps_ufo(document))
    written = load_annotation_file(path)
    expected = count_words(document)
    found = count_words(written)
    if found != expected:
        raise ConvertError(f"{path}: read back {found} (images, words, don't care), wrote {expected}")
    return Summary(path, images=found[0], words=found[1], dont_care=found[2], skipped=skipped)


# --------------------------------------------------------------------------- ICDAR-2015 / SROIE txt


def parse_icdar_line(line: str, where: str) -> Word:
    """One ``x1,y1,...,x4,y4,transcription`` line; ``where`` (file and line) prefixes errors."""
    fields = line.split(",", 8)
    if len(fields) < 9:
        raise ConvertError(f"{where}: expected 8 coordinates and a transcription, got {len(fields)} fields")
    coordinates: list[float] = []
    for index, field in enumerate(fields[:8], start=1):
        try:
            value = float(field.strip())
        except ValueError:
            raise ConvertError(f"{where}: coordinate {index} is not a number: {field.strip()!r}") from None
        if not math.isfinite(value):
            raise ConvertError(f"{where}: coordinate {index} is not finite: {field.strip()!r}")
        coordinates.append(value)
    points = [[coordinates[i], coordinates[i + 1]] for i in range(0, 8, 2)]
    return Word(points, _normalise_text(fields[8]))


def read_text(path: Path, latin1_fallback: bool) -> str:
    """A txt file as text: UTF-8 (a BOM is dropped), or latin-1 with a warning when allowed."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if not latin1_fallback:
            raise ConvertError(f"{path.name}: not UTF-8 text ({error}); re-encode it as UTF-8") from None
        log.warning("%s: not UTF-8; reading it as latin-1", path)
        return data.decode("latin-1")


def read_icdar_txt(path: str | Path, latin1_fallback: bool = False) -> list[Word]:
    """The words of one ICDAR-2015 / SROIE txt file; blank lines are ignored."""
    path = Path(path)
    text = read_text(path, latin1_fallback)
    words = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            words.append(parse_icdar_line(line, f"{path.name} line {number}"))
    return words


def _txt_image_stems(txt: Path, strip_gt: bool) -> list[str]:
    """Image stems a txt file may belong to, most likely first."""
    stems = []
    if strip_gt and txt.stem.startswith("gt_"):
        stems.append(txt.stem[3:])
    stems.append(txt.stem)
    return stems


def txt_to_ufo(
    txt_dir: str | Path, images_dir: str | Path | None = None, missing: str = "error", fmt: str = "icdar2015"
) -> tuple[dict[str, list[Word]], int]:
    """Words by image file name of an ICDAR-2015 (``fmt="icdar2015"``) or SROIE (``"sroie"``) folder,
    and the number of skipped files."""
    _check_missing(missing)
    if fmt not in ("icdar2015", "sroie"):
        raise ValueError(f"fmt must be 'icdar2015' or 'sroie', got {fmt!r}")
    txt_dir = Path(txt_dir)
    if not txt_dir.is_dir():
        raise ConvertError(f"{txt_dir}: annotation folder not found")
    images_dir = Path(images_dir) if images_dir is not None else txt_dir
    index = _image_index(images_dir)
    if not index:
        raise ConvertError(f"{images_dir}: no images (suffixes {', '.join(IMAGE_SUFFIXES)}); pass the image folder with --images")
    txts = sorted(p for p in txt_dir.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    if not txts:
        raise ConvertError(f"{txt_dir}: no .txt annotation files")
    images: dict[str, list[Word]] = {}
    sources: dict[str, Path] = {}
    skipped = 0
    for txt in txts:
        stems = _txt_image_stems(txt, strip_gt=fmt == "icdar2015")
        stem = next((s for s in stems if s in index), None)
        if stem is None:
            wanted = " or ".join(repr(s) for s in stems)
            _report_missing(f"{txt.name}: no image with stem {wanted} and a suffix in {IMAGE_SUFFIXES} in {images_dir}", missing)
            skipped += 1
            continue
        if len(index[stem]) > 1:
            raise ConvertError(f"{txt.name}: several images with stem {stem!r} in {images_dir}: {', '.join(index[stem])}")
        name = index[stem][0]
        if name in sources:
            raise ConvertError(f"{txt.name}: image {name} already has the annotation file {sources[name].name}")
        images[name] = read_icdar_txt(txt, latin1_fallback=fmt == "sroie")
        sources[name] = txt
    skipped += _check_unused_images(images_dir, set(images), missing)
    return images, skipped


# --------------------------------------------------------------------------- labelme


def labelme_to_ufo(
    json_dir: str | Path, images_dir: str | Path | None = None, missing: str = "error"
) -> tuple[dict[str, list[Word]], int]:
    """Words by image file name of a folder of labelme JSON files, and the number of skipped items."""
    _check_missing(missing)
    json_dir = Path(json_dir)
    if not json_dir.is_dir():
        raise ConvertError(f"{json_dir}: annotation folder not found")
    files = sorted(p for p in json_dir.iterdir() if p.is_file() and p.suffix.lower() == ".json")
    if not files:
        raise ConvertError(f"{json_dir}: no .json annotation files")
    index = _image_index(Path(images_dir)) if images_dir is not None else None
    names = {n for ns in index.values() for n in ns} if index is not None else set()
    images: dict[str, list[Word]] = {}
    sources: dict[str, Path] = {}
    skipped = 0
    for path in files:
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise ConvertError(f'{path.name}: not a labelme file (expected an object with a "shapes" list)')
        name = _basename(data["imagePath"]) if isinstance(data.get("imagePath"), str) and data["imagePath"] else None
        if index is not None:
            if name is None and len(index.get(path.stem, [])) == 1:
                name = index[path.stem][0]
            if name is None or name not in names:
                _report_missing(f"{path.name}: image {name or path.stem!r} not found in {images_dir}", missing)
                skipped += 1
                continue
        elif name is None:
            raise ConvertError(f'{path.name}: no "imagePath"; pass --images to find the image by the file\'s stem')
        if name in sources:
            raise ConvertError(f"{path.name}: image {name} already annotated by {sources[name].name}")
        words, shape_skips = _labelme_words(data["shapes"], path.name)
        images[name] = words
        sources[name] = path
        skipped += shape_skips
    if images_dir is not None:
        skipped += _check_unused_images(Path(images_dir), set(images), missing)
    return images, skipped


def _labelme_words(shapes: list, file_name: str) -> tuple[list[Word], int]:
    words: list[Word] = []
    skipped = 0
    for number, shape in enumerate(shapes):
        where = f"{file_name} shape {number}"
        if not isinstance(shape, dict):
            raise ConvertError(f"{where}: a shape must be an object")
        shape_type = shape.get("shape_type") or "polygon"  # labelme's own default
        label = shape.get("label")
        label = str(label) if label is not None else ""
        where = f"{where} ({shape_type} {label!r})"
        points = _points(shape.get("points"), where)
        if shape_type == "rectangle":
            if len(points) != 2:
                raise ConvertError(f"{where}: a rectangle needs 2 corner points, got {len(points)}")
            points = _rectangle(*points[0], *points[1])
        elif shape_type != "polygon":
            log.warning("%s: shape type %r is not a polygon or a rectangle; skipping it", where, shape_type)
            skipped += 1
            continue
        if len(points) < 3:
            log.warning("%s: a polygon needs at least 3 points, got %d; skipping it", where, len(points))
            skipped += 1
            continue
        words.append(Word(points, _normalise_text(label)))
    return words, skipped


def _read_json(path: Path) -> object:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ConvertError(f"{path.name}: malformed JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise ConvertError(f"{path.name}: not UTF-8 text ({error})") from None


# --------------------------------------------------------------------------- Label Studio


def labelstudio_image_name(reference: str, strip_upload_prefix: bool = False) -> str:
    """The image file name of a task's ``data.image``: its last path component, URL-decoded.

    ``/data/local-files/?d=receipts/a.jpg`` gives ``a.jpg``; with ``strip_upload_prefix``
    ``/data/upload/3/1a2b3c4d-a.jpg`` gives ``a.jpg``.
    """
    parsed = urlparse(reference)
    path = parsed.path
    local = parse_qs(parsed.query).get("d")
    if local and (not path or path.endswith("/")):
        path = local[0]  # parse_qs already decoded it
    else:
        path = unquote(path)
    name = _basename(path)
    if strip_upload_prefix:
        name = _UPLOAD_PREFIX.sub("", name, count=1)
    return name


def _labelstudio_reference(data: object, where: str) -> str:
    if not isinstance(data, dict):
        raise ConvertError(f'{where}: no "data" object')
    if isinstance(data.get("image"), str):
        return data["image"]
    # templates name the variable as they like (the OCR template uses $ocr): take the one image-like value
    candidates = [
        value for value in data.values()
        if isinstance(value, str) and Path(labelstudio_image_name(value)).suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(candidates) == 1:
        return candidates[0]
    raise ConvertError(f'{where}: no "data.image" (data keys: {", ".join(map(str, data)) or "none"})')


def labelstudio_rectangle(value: dict, width: float, height: float) -> list[Point]:
    """Pixel corners of a Label Studio rectangle: percent ``x, y, width, height``, ``rotation`` in
    degrees clockwise (y down) about the top-left corner, as Label Studio draws it."""
    x, y = value["x"] / 100 * width, value["y"] / 100 * height
    w, h = value["width"] / 100 * width, value["height"] / 100 * height
    angle = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(angle), math.sin(angle)
    return [[x + dx * cos - dy * sin, y + dx * sin + dy * cos] for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]


def _labelstudio_region(results: list[dict], where: str) -> Word | None:
    """One region (the results sharing an id) as a word, or None (logged) when it has no usable shape."""
    text: str | None = None
    label: str | None = None
    shape: dict | None = None
    for result in results:
        kind = result.get("type")
        value = result.get("value") if isinstance(result.get("value"), dict) else {}
        if kind == "textarea":
            lines = value.get("text")
            text = " ".join(map(str, lines)) if isinstance(lines, list) else (str(lines) if lines is not None else None)
        if isinstance(kind, str) and isinstance(value.get(kind), list) and value[kind]:
            label = str(value[kind][0])  # polygonlabels / rectanglelabels / labels
        if kind in _LS_POLYGON_TYPES + _LS_RECTANGLE_TYPES and shape is None:
            shape = result
    if shape is None:
        kinds = sorted({str(r.get("type")) for r in results})
        log.warning("%s: no polygon or rectangle (result types %s); skipping it", where, ", ".join(kinds))
        return None
    kind, value = shape["type"], shape.get("value") or {}
    width, height = shape.get("original_width"), shape.get("original_height")
    if not isinstance(width, (int, float)) or not isinstance(height, (int, float)) or width <= 0 or height <= 0:
        raise ConvertError(f"{where}: {kind} result without a positive original_width / original_height")
    if kind in _LS_POLYGON_TYPES:
        points = [[x / 100 * width, y / 100 * height] for x, y in _points(value.get("points"), where)]
        if len(points) < 3:
            log.warning("%s: a polygon needs at least 3 points, got %d; skipping it", where, len(points))
            return None
    else:
        try:
            numbers = {key: float(value[key]) for key in ("x", "y", "width", "height")}
            numbers["rotation"] = float(value.get("rotation") or 0.0)
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{where}: {kind} value needs numeric x, y, width, height (and rotation)") from None
        points = labelstudio_rectangle(numbers, width, height)
    if _is_dont_care(label) or _is_dont_care(text):
        text = DONT_CARE
    return Word(points, text)


def labelstudio_to_ufo(
    export_path: str | Path,
    images_dir: str | Path | None = None,
    missing: str = "error",
    strip_upload_prefix: bool = False,
) -> tuple[dict[str, list[Word]], int]:
    """Words by image file name of a Label Studio JSON export, and the number of skipped items."""
    _check_missing(missing)
    export_path = Path(export_path)
    if not export_path.is_file():
        raise ConvertError(f"{export_path}: Label Studio export not found")
    tasks = _read_json(export_path)
    if not isinstance(tasks, list):
        raise ConvertError(f"{export_path.name}: expected a list of tasks (Label Studio's JSON export)")
    names = {n for ns in _image_index(Path(images_dir)).values() for n in ns} if images_dir is not None else None
    images: dict[str, list[Word]] = {}
    sources: dict[str, str] = {}
    skipped = 0
    for number, task in enumerate(tasks):
        where = f"{export_path.name} task {number}"
        if isinstance(task, dict) and "id" in task:
            where += f" (id {task['id']})"
        if not isinstance(task, dict):
            raise ConvertError(f"{where}: a task must be an object")
        name = labelstudio_image_name(_labelstudio_reference(task.get("data"), where), strip_upload_prefix)
        where += f" image {name!r}"
        if names is not None and name not in names:
            _report_missing(f"{where}: image not found in {images_dir}", missing)
            skipped += 1
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            _report_missing(f"{where}: task has no annotation", missing)
            skipped += 1
            continue
        if name in sources:
            raise ConvertError(f"{where}: image already annotated by {sources[name]}")
        regions: dict[str, list[dict]] = {}
        for position, result in enumerate(annotations[0].get("result") or []):
            if isinstance(result, dict):
                regions.setdefault(str(result.get("id", f"#{position}")), []).append(result)
        words = []
        for region_id, results in regions.items():
            word = _labelstudio_region(results, f"{where} region {region_id}")
            if word is None:
                skipped += 1
            else:
                words.append(word)
        images[name] = words
        sources[name] = where
    if images_dir is not None:
        skipped += _check_unused_images(Path(images_dir), set(images), missing)
    return images, skipped


# --------------------------------------------------------------------------- UFO -> ICDAR-2015


def _clockwise_from_top_left(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """4 integer corners, clockwise on screen (y down), starting at the corner nearest the top left."""
    corners = [[int(round(x)), int(round(y))] for x, y in points]
    area = sum(corners[i][0] * corners[(i + 1) % 4][1] - corners[(i + 1) % 4][0] * corners[i][1] for i in range(4))
    if area < 0:
        corners.reverse()
    start = min(range(4), key=lambda i: (corners[i][0] + corners[i][1], corners[i][1]))
    return corners[start:] + corners[:start]


def min_area_rectangle(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """The minimum-area rectangle around ``points`` (cv2.minAreaRect + boxPoints), integer-rounded."""
    import cv2
    import numpy as np

    box = cv2.boxPoints(cv2.minAreaRect(np.asarray(points, dtype=np.float32)))
    return _clockwise_from_top_left(box.tolist())


def icdar_line(points: Sequence[Sequence[float]], transcription: str | None) -> str:
    """One ``x1,y1,...,x4,y4,transcription`` line; a missing transcription is an empty field."""
    coordinates = ",".join(str(_number(c)) for point in points for c in point)
    text = "" if transcription is None else re.sub(r"[\r\n]+", " ", transcription)
    return f"{coordinates},{text}"


def ufo_to_icdar2015(json_path: str | Path, out_dir: str | Path) -> Summary:
    """Write one ``gt_<image stem>.txt`` per image of a UFO JSON file into ``out_dir``."""
    json_path, out_dir = Path(json_path), Path(out_dir)
    images = load_annotation_file(json_path)["images"]
    targets: dict[str, str] = {}
    for name in images:
        target = f"gt_{Path(_basename(name)).stem}.txt"
        if target in targets:
            raise ConvertError(f"{json_path}: images {targets[target]!r} and {name!r} would both be written to {target}")
        targets[target] = name
    summary = Summary(out_dir)
    for target, name in targets.items():
        entry = images[name]
        words = entry.get("words") if isinstance(entry, dict) else None
        if not isinstance(words, dict):
            raise ConvertError(f'{json_path}: image {name!r}: "words" must be a mapping of word id to word')
        lines = []
        for word_id, word in words.items():
            where = f"{json_path.name}: image {name!r}, word {word_id!r}"
            if not isinstance(word, dict) or "points" not in word:
                raise ConvertError(f'{where}: word has no "points"')
            points = _points(word["points"], where)
            if len(points) < 3:
                log.warning("%s: a polygon needs at least 3 points, got %d; skipping it", where, len(points))
                summary.skipped += 1
                continue
            if len(points) != 4:
                points = min_area_rectangle(points)
                summary.rectangles += 1
            text = word.get("transcription")
            lines.append(icdar_line(points, _normalise_text(text) if isinstance(text, str) else None))
        path = out_dir / target
        write_text_atomic(path, "".join(line + "\n" for line in lines))
        written = read_icdar_txt(path)
        if len(written) != len(lines):
            raise ConvertError(f"{path}: read back {len(written)} words, wrote {len(lines)}")
        summary.images += 1
        summary.words += len(written)
        summary.dont_care += sum(1 for word in written if word.transcription == DONT_CARE)
    if summary.rectangles:
        log.warning(
            "%s: %d polygons without exactly 4 points written as their minimum-area rectangle",
            json_path, summary.rectangles,
        )
    return summary


# --------------------------------------------------------------------------- entry point


def convert(
    fmt: str,
    source: str | Path,
    output: str | Path,
    images: str | Path | None = None,
    missing: str = "error",
    strip_upload_prefix: bool = False,
) -> Summary:
    """Run one conversion (see the module's docstring) and return what was written."""
    if fmt == "to-icdar2015":
        return ufo_to_icdar2015(source, output)
    if fmt in ("icdar2015", "sroie"):
        words, skipped = txt_to_ufo(source, images, missing, fmt)
    elif fmt == "labelme":
        words, skipped = labelme_to_ufo(source, images, missing)
    elif fmt == "labelstudio":
        words, skipped = labelstudio_to_ufo(source, images, missing, strip_upload_prefix)
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return write_ufo(words, output, skipped)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert.py",
        description="Convert text-detection annotations to the project's UFO JSON, or UFO JSON to ICDAR-2015 txt.",
        epilog=(
            "INPUT is a folder for icdar2015, sroie and labelme, a JSON file for labelstudio and to-icdar2015; "
            "OUTPUT is the UFO JSON file, or the txt folder for to-icdar2015."
        ),
    )
    parser.add_argument("format", choices=FORMATS, metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("input", type=Path, metavar="INPUT", help="annotation folder or file")
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="UFO JSON file (txt folder for to-icdar2015)")
    parser.add_argument(
        "--images", type=Path, metavar="DIR",
        help="image folder: icdar2015/sroie look the images up by stem here (default: INPUT); "
        "labelme/labelstudio check the images exist here",
    )
    parser.add_argument(
        "--missing", choices=MISSING_CHOICES, default="error",
        help="an annotation without an image or an image without an annotation: fail (default) or skip with a warning",
    )
    parser.add_argument(
        "--strip-upload-prefix", action="store_true",
        help="labelstudio: drop the '<8 hex digits>-' prefix Label Studio gives uploaded files",
    )
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        summary = convert(args.format, args.input, args.output, args.images, args.missing, args.strip_upload_prefix)
    except (ConvertError, AnnotationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary.line(args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
