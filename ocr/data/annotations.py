"""Reading receipt annotations in the competition's UFO-style JSON layout.

``{"images": {name: {"words": {"0001": {"points": [[x, y], ...], "transcription": "..."}}}}}``

Points are pixel coordinates in the frame of the stored image file (before EXIF rotation).
A word whose transcription is ``###`` is "don't care": ignored by the loss and the metrics.

Nothing is dropped silently: a repeated key, an unreadable encoding, a missing or unreadable
image and a polygon that is invalid, degenerate, crossed or outside its image is an error or a
logged repair / skip, and each split ends with one summary line of what was changed.
"""

from __future__ import annotations

import codecs
import difflib
import json
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from shapely.geometry import MultiPoint, Polygon

from ocr.data.images import ImageHeader, ImageReadError, probe_image
from ocr.geometry import clip_polygon_to_frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DONT_CARE = "###"
MIN_WORD_AREA = 1.0  # px²: a word with less area (its convex hull) is degenerate
FRAME_TOLERANCE = 1.0  # px: points this far past the frame's edge pixels are left as they are
ABSURD_COORDINATE = 1e7  # px: beyond any page; checked when the image size is not known


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
    size: tuple[int, int] | None = None  # stored (width, height), from the image header
    orientation: int = 1  # EXIF orientation tag, from the same header (1: stored upright)


@dataclass
class SplitReport:
    """What loading one split kept, repaired and skipped: its summary line and checks."""

    split: str
    source: Path  # the annotation file, or the image folder of an unannotated split
    images: int = 0  # images kept
    images_skipped: int = 0  # missing or unreadable (bad_image=skip)
    unlisted: int = 0  # folder images the annotation does not list (predicted all the same)
    words: int = 0  # words the annotation lists for the kept images
    words_repaired: int = 0
    words_skipped: int = 0

    @property
    def usable_words(self) -> int:
        return self.words - self.words_skipped

    def summary(self) -> str | None:
        """One line for the split when anything was repaired or skipped, else None."""
        parts = []
        if self.words_repaired or self.words_skipped:
            repaired = _count(self.words_repaired, "word")
            parts.append(f"{repaired} repaired, {self.words_skipped} skipped (of {self.words} in {self.source})")
        if self.images_skipped:
            total = _count(self.images + self.images_skipped, "image")
            parts.append(f"{self.images_skipped} of {total} skipped as missing or unreadable")
        return f"{self.split}: " + "; ".join(parts) if parts else None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass
class LoadedSplit:
    samples: list[Sample]
    report: SplitReport


# -- reading the JSON ------------------------------------------------------------------------------
class _RepeatedKeys(dict):
    """A JSON object that repeats a key; ``repeats`` holds (key, first index, first value,
    second index, second value) for each repeat. A plain dict would keep only the last value."""

    repeats: list[tuple[str, int, Any, int, Any]]


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict:
    """``json`` object hook: a dict, remembering repeated keys instead of silently replacing."""
    result: dict = {}
    first: dict[str, int] = {}
    repeats = []
    for index, (key, value) in enumerate(pairs):
        if key in first:
            repeats.append((key, first[key], result[key], index, value))
        else:
            first[key] = index
        result[key] = value
    if not repeats:
        return result
    marked = _RepeatedKeys(result)
    marked.repeats = repeats
    return marked


def _repeats(node: Any, trail: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], tuple]]:
    """(where, repeat) for every repeated key under ``node``, in document order."""
    if isinstance(node, _RepeatedKeys):
        for repeat in node.repeats:
            yield trail, repeat
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _repeats(value, (*trail, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _repeats(value, (*trail, str(index)))


def _word_count(entry: Any) -> int:
    words = entry.get("words") if isinstance(entry, dict) else None
    return len(words) if isinstance(words, dict) else 0


def _repeat_message(path: Path, trail: tuple[str, ...], repeat: tuple) -> str:
    key, i, first, j, second = repeat
    where = f"entries #{i + 1} and #{j + 1}"
    if trail == ("images",):
        return (
            f"{path}: image {key!r} is listed twice in \"images\" ({where}, with {_word_count(first)} and "
            f"{_word_count(second)} words); JSON would keep only the second: merge them into one entry"
        )
    if len(trail) == 3 and trail[0] == "images" and trail[2] == "words":
        points = [w.get("points") if isinstance(w, dict) else w for w in (first, second)]
        return (
            f"{path}: image {trail[1]!r}: word id {key!r} is used twice (words {where}, points "
            f"{json.dumps(points[0])} and {json.dumps(points[1])}); JSON would keep only the last: give each word its own id"
        )
    inside = "/".join(trail) or "the top level"
    return f"{path}: key {key!r} appears twice in {inside} ({where}); JSON would keep only the last"


def _json_text(path: Path, raw: bytes) -> str:
    """The text of an annotation file: UTF-8 (with or without BOM) or UTF-16 with a BOM."""
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise AnnotationError(f"{path}: the file is UTF-32 encoded; save it as UTF-8 (UTF-16 with a byte-order mark is read too)")
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as error:
                raise AnnotationError(f"{path}: invalid {encoding.upper()} text ({error})") from None
    if b"\x00" in raw[:64]:
        raise AnnotationError(
            f"{path}: looks like UTF-16 or UTF-32 without a byte-order mark; save it as UTF-8 (or UTF-16 with a byte-order mark)"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AnnotationError(
            f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}: a legacy encoding such as "
            "Latin-1 or Windows-1252?); save it as UTF-8 (UTF-16 with a byte-order mark is read too)"
        ) from None


def load_annotation_file(path: str | Path) -> dict:
    """The JSON of an annotation file, checked: its encoding, its syntax, no repeated key, an
    ``"images"`` mapping. Raises :class:`AnnotationError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    text = _json_text(path, path.read_bytes())
    try:
        data = json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: malformed JSON ({error})") from None
    for trail, repeat in _repeats(data):
        raise AnnotationError(_repeat_message(path, trail, repeat))
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise AnnotationError(f'{path}: expected a top-level object with an "images" mapping')
    return data


# -- checking a word's polygon ---------------------------------------------------------------------
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


@dataclass(frozen=True)
class PolygonCheck:
    """The outcome for one word: ``polygon`` to keep (None: skip it) and, when it was repaired or
    skipped, ``problem`` (what is wrong) and ``action`` (what was done)."""

    polygon: np.ndarray | None
    problem: str | None = None
    action: str | None = None


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _convex_order(points: np.ndarray) -> np.ndarray | None:
    """The points re-ordered around their centre when they are the corners of a convex polygon
    (the only unambiguous outline), starting from the first point and turning as ``rect`` does
    (clockwise on the image); None when some point lies inside the others' hull."""
    centre = points.mean(axis=0)
    order = np.argsort(np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]), kind="stable")
    ordered = points[order]
    if _signed_area(ordered) < 0:
        ordered = ordered[::-1]
    ordered = np.roll(ordered, -int(np.flatnonzero((ordered == points[0]).all(axis=1))[0]), axis=0)
    shape = Polygon(ordered)
    hull = MultiPoint(points).convex_hull
    if not shape.is_valid or abs(shape.area - hull.area) > 1e-9 * max(hull.area, 1.0):
        return None
    return ordered


def _coordinate_range(points: np.ndarray) -> str:
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return f"x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}"


def check_polygon(points: object, frame: tuple[int, int] | None = None) -> PolygonCheck:
    """Check one word's points against its image's stored ``frame`` (width, height).

    Kept as they are: a simple polygon of positive area within the frame (``FRAME_TOLERANCE``).
    Repaired: a crossed outline whose points are the corners of a convex polygon (a bow-tie
    quadrilateral) is re-ordered; a polygon across the frame's edge is clipped to it. Skipped:
    unparsable points, coordinates more than a frame size outside the frame (absurd), zero area,
    an ambiguous crossed outline, nothing inside the frame.
    """
    try:
        polygon = _parse_points(points)
    except ValueError as error:
        return PolygonCheck(None, str(error), "skipped")
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    if frame is None:
        if (np.abs(polygon) > ABSURD_COORDINATE).any():
            return PolygonCheck(None, f"absurd coordinates ({_coordinate_range(polygon)})", "skipped")
    else:
        width, height = frame
        reach = max(width, height)
        if (low < -reach).any() or high[0] > width - 1 + reach or high[1] > height - 1 + reach:
            problem = f"coordinates far outside the {width}x{height} image ({_coordinate_range(polygon)})"
            return PolygonCheck(None, problem, "skipped")
    hull_area = MultiPoint(polygon).convex_hull.area
    if hull_area < MIN_WORD_AREA:
        return PolygonCheck(None, f"zero area ({hull_area:.3g} px², under {MIN_WORD_AREA:g})", "skipped")
    problem = action = None
    if not Polygon(polygon).is_valid:
        ordered = _convex_order(polygon)
        if ordered is None:
            return PolygonCheck(None, "self-intersecting outline that no re-ordering of its points makes simple", "skipped")
        polygon, problem, action = ordered, "self-intersecting outline (a bow-tie)", "re-ordered its points"
    if frame is None:
        return PolygonCheck(polygon, problem, action)
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    if (low >= -FRAME_TOLERANCE).all() and high[0] <= width - 1 + FRAME_TOLERANCE and high[1] <= height - 1 + FRAME_TOLERANCE:
        return PolygonCheck(polygon, problem, action)
    outside = f"outside the {width}x{height} image ({_coordinate_range(polygon)})"
    clipped = clip_polygon_to_frame(polygon, width, height, min_area=MIN_WORD_AREA)
    if clipped is None:
        return PolygonCheck(None, outside if problem is None else f"{problem}, {outside}", "skipped")
    joined = outside if problem is None else f"{problem}, partly {outside}"
    return PolygonCheck(clipped, joined, "clipped to the image" if action is None else f"{action} and clipped to the image")


# -- finding the images ----------------------------------------------------------------------------
def list_images(image_dir: Path) -> list[str]:
    return sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


class _Folder:
    """An image folder's files, found by name whatever the Unicode normalisation (a name typed
    on macOS is often NFD, one typed elsewhere NFC: they look identical)."""

    def __init__(self, image_dir: Path):
        self.path = image_dir
        self.names = sorted(os.listdir(image_dir))
        self.by_nfc = {_nfc(name): name for name in self.names}

    def find(self, name: str) -> Path | None:
        """The path called ``name`` (in any Unicode normalisation), or None when there is none."""
        exact = self.path / name
        if exact.exists():
            return exact
        stored = self.by_nfc.get(_nfc(name))
        return self.path / stored if stored is not None else None

    def closest(self, name: str, count: int = 3) -> list[str]:
        return [self.by_nfc[n] for n in difflib.get_close_matches(_nfc(name), list(self.by_nfc), n=count, cutoff=0.6)]

    def images(self) -> list[str]:
        return [name for name in self.names if Path(name).suffix.lower() in IMAGE_SUFFIXES and (self.path / name).is_file()]


def _not_found(folder: _Folder, name: str) -> str:
    closest = folder.closest(name)
    if closest:
        hint = "closest names there: " + ", ".join(repr(n) for n in closest)
    else:
        hint = f"no similar name among its {len(folder.names)} files"
    return f"image file {folder.path / name} not found ({hint})"


# -- loading a split -------------------------------------------------------------------------------
def _check_option(option: str, value: str) -> None:
    if value not in ("skip", "error"):
        raise ValueError(f"{option} must be 'skip' or 'error', got {value!r}")


def resolve_bad_image(bad_image: str, missing_image: str | None) -> str:
    """``bad_image``, or the value given under its former name ``missing_image``."""
    if missing_image is None:
        return bad_image
    if bad_image != "error" and bad_image != missing_image:
        raise ValueError(f"bad_image={bad_image!r} and missing_image={missing_image!r} disagree: set bad_image only")
    return missing_image


class _SplitLoader:
    """Loads one split, applying ``invalid_polygon`` / ``bad_image`` and counting into ``report``."""

    def __init__(self, folder: _Folder, report: SplitReport, invalid_polygon: str, bad_image: str):
        self.folder, self.report = folder, report
        self.invalid_polygon, self.bad_image = invalid_polygon, bad_image

    def bad(self, error: Exception) -> None:
        """A missing or unreadable image: raise, or warn and count it (bad_image=skip)."""
        if self.bad_image == "error":
            raise error
        log.warning("%s; skipping the image (datasets.bad_image=skip)", error)
        self.report.images_skipped += 1

    def probe(self, path: Path) -> ImageHeader | None:
        """The image's header (fully decoded with bad_image=skip), or None when it is skipped."""
        try:
            return probe_image(path, decode=self.bad_image == "skip")
        except ImageReadError as error:
            self.bad(error)
            return None

    def image_sample(self, name: str, path: Path) -> Sample | None:
        header = self.probe(path)
        if header is None:
            return None
        self.report.images += 1
        return Sample(name, path, size=header.size, orientation=header.orientation)

    def annotated_sample(self, annotation_path: Path, name: str, entry: Any) -> Sample | None:
        where = f"{annotation_path}: image {name!r}"
        words = (entry or {}).get("words", {}) if isinstance(entry, dict) or entry is None else None
        if not isinstance(words, dict):
            raise AnnotationError(f'{where}: "words" must be a mapping of word id to word')
        path = self.folder.find(name)
        if path is None:
            self.bad(AnnotationError(f"{where}: {_not_found(self.folder, name)}"))
            return None
        sample = self.image_sample(name, path)
        if sample is None:
            return None
        sample.annotated = True
        for word_id, word in words.items():
            self.add_word(sample, f"{where}, word {word_id!r}", word)
        return sample

    def add_word(self, sample: Sample, where: str, word: Any) -> None:
        self.report.words += 1
        points = word.get("points") if isinstance(word, dict) else None
        if points is None:
            check = PolygonCheck(None, 'word has no "points"', "skipped")
        else:
            check = check_polygon(points, sample.size)
        if check.problem is not None:
            if self.invalid_polygon == "error":
                fix = "datasets.invalid_polygon=skip repairs or skips such a word with a warning"
                raise AnnotationError(f"{where}: {check.problem}; {fix}")
            log.warning("%s: %s: %s", where, check.problem, check.action)
            if check.polygon is None:
                self.report.words_skipped += 1
                return
            self.report.words_repaired += 1
        text = word.get("transcription")
        sample.polygons.append(check.polygon)
        sample.texts.append(text if isinstance(text, str) else None)
        sample.ignore.append(text == DONT_CARE)


def load_split(
    image_dir: str | Path,
    annotation_path: str | Path | None = None,
    invalid_polygon: str = "skip",
    bad_image: str = "error",
    split: str | None = None,
    include_unlisted: bool = False,
) -> LoadedSplit:
    """The samples of one split and the report of what was repaired or skipped.

    Without ``annotation_path`` every image of ``image_dir`` is listed, unannotated (a test
    split); with ``include_unlisted`` (predict) the folder's images the annotation does not list
    are added, unannotated. Every image is probed (header; with ``bad_image="skip"`` a full
    decode) so a bad one is found now, not in a DataLoader worker. ``invalid_polygon`` /
    ``bad_image``: ``"error"`` raises naming the file, ``"skip"`` logs a warning and drops (or,
    for a polygon, repairs where unambiguous) the entry; the split ends with one summary line.
    """
    _check_option("invalid_polygon", invalid_polygon)
    _check_option("bad_image", bad_image)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise AnnotationError(f"{image_dir}: image folder not found")
    folder = _Folder(image_dir)
    source = Path(annotation_path) if annotation_path is not None else image_dir
    report = SplitReport(split or (source.stem if annotation_path is not None else image_dir.name), source)
    loader = _SplitLoader(folder, report, invalid_polygon, bad_image)
    if annotation_path is None:
        samples = [s for name in folder.images() if (s := loader.image_sample(name, image_dir / name)) is not None]
    else:
        samples = _annotated_samples(loader, Path(annotation_path), include_unlisted)
    summary = report.summary()
    if summary:
        log.warning("%s", summary)
    return LoadedSplit(samples, report)


def _annotated_samples(loader: _SplitLoader, annotation_path: Path, include_unlisted: bool) -> list[Sample]:
    images = load_annotation_file(annotation_path)["images"]
    samples = [s for name, entry in images.items() if (s := loader.annotated_sample(annotation_path, name, entry)) is not None]
    if loader.report.words == 0 and samples:
        # a competition test.json lists its images with empty "words": no ground truth to score
        log.info("%s: no image has any word; treating the split as unannotated (image list only)", annotation_path)
        for sample in samples:
            sample.annotated = False
    if include_unlisted:
        samples += _unlisted_samples(loader, images, annotation_path)
    return samples


def _unlisted_samples(loader: _SplitLoader, images: dict, annotation_path: Path) -> list[Sample]:
    """The folder's images that ``images`` does not list, unannotated, with a note of how many."""
    listed = {_nfc(name) for name in images}
    names = [name for name in loader.folder.images() if _nfc(name) not in listed]
    if names:
        split, folder = loader.report.split, loader.folder.path
        log.info("%s: %d images in %s are not listed in %s; predicting them too", split, len(names), folder, annotation_path)
    loader.report.unlisted = len(names)
    return [s for name in names if (s := loader.image_sample(name, loader.folder.path / name)) is not None]


def load_samples(
    image_dir: str | Path,
    annotation_path: str | Path | None = None,
    invalid_polygon: str = "skip",
    bad_image: str = "error",
    *,
    missing_image: str | None = None,
    split: str | None = None,
    include_unlisted: bool = False,
) -> list[Sample]:
    """The samples of one split (see :func:`load_split`); ``missing_image`` is the former name
    of ``bad_image``."""
    bad_image = resolve_bad_image(bad_image, missing_image)
    return load_split(image_dir, annotation_path, invalid_polygon, bad_image, split, include_unlisted).samples


def require_words(report: SplitReport) -> None:
    """Raise :class:`AnnotationError` when the annotation listed words but none was usable: a
    split to train, validate or score on would otherwise hold no ground truth at all."""
    if report.words and not report.usable_words:
        raise AnnotationError(
            f"{report.source}: the {report.split!r} split has no usable words: all {report.words} words were skipped "
            "as invalid (see the warnings above); fix their points"
        )
