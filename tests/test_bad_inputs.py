"""Bad input, as a hostile-but-realistic user gives it: each case asserts the exact outcome (an
error that names the culprit, or what was kept or skipped). Nothing may pass silently."""

import codecs
import io
import json
import logging
import os
import re
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from shapely.geometry import Polygon as ShapelyPolygon

from ocr.checkpoints import CheckpointError, load_weights_into, read_checkpoint
from ocr.config import CONFIG_DIR, compose_config
from ocr.data import images
from ocr.data.annotations import AnnotationError, load_samples
from ocr.data.datamodule import ReceiptDataModule
from ocr.data.dataset import ImageReadError, ReceiptDataset, read_image
from ocr.data.targets import TargetConfig
from ocr.data.transforms import PolygonAugment, RandomRescale, ResizeForEval
from ocr.geometry import EXIF_ORIENTATION_TAG
from ocr.models.postprocess import DBPostProcessor
from ocr.submission import check_writable, write_submission
from ocr.testing import rect, text_page, write_png_header, write_split
from ocr.validation import SettingsError, validate_settings

# -- settings, checked before any work ----------------------------------------------------------------
BAD_SETTINGS = [
    # (job, overrides separated by spaces, the key and value the error names)
    ("train", "image_size=-5", "image_size=-5"),
    ("predict", "image_size=0", "image_size=0"),
    ("train", "crop_size=0", "crop_size=0"),
    ("predict", "models.postprocess.thresh=2", "models.postprocess.thresh=2"),
    ("predict", "models.postprocess.thresh=-1", "models.postprocess.thresh=-1"),
    ("test", "models.postprocess.box_thresh=-1", "models.postprocess.box_thresh=-1"),
    ("predict", "models.postprocess.box_unclip_ratio=0", "models.postprocess.box_unclip_ratio=0"),
    ("predict", "models.postprocess.polygon_unclip_ratio=-1.5", "models.postprocess.polygon_unclip_ratio=-1.5"),
    ("train", "datasets.batch_size=0", "datasets.batch_size=0"),
    ("test", "datasets.eval_batch_size=-2", "datasets.eval_batch_size=-2"),
    ("train", "trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("train", "models.optimizer.lr=0", "models.optimizer.lr=0"),
    ("train", "time_budget.minutes=-10", "time_budget.minutes=-10"),
    ("test", "datasets.eval_resize.mode=diagonal", "datasets.eval_resize.mode='diagonal'"),
    ("train", "datasets.targets.shrink_ratio=1.5", "datasets.targets.shrink_ratio=1.5"),
    ("predict", "lightning_module.tta_scales=[1.0,-1]", "lightning_module.tta_scales=[1.0, -1]"),
    ("test", "metrics.iou_threshold=1.5", "metrics.iou_threshold=1.5"),
    ("export", "calibration_count=0", "calibration_count=0"),
    ("train", "preset=sroie train_resize.scale_range=[0,1.5]", "train_resize.scale_range=[0, 1.5]"),
    ("train", "preset=sroie train_resize.scale_range=[1.5,0.5]", "train_resize.scale_range=[1.5, 0.5]"),
    ("train", "lightning_module.encoder_frozen_epochs=-1", "lightning_module.encoder_frozen_epochs=-1"),
    ("train", "lightning_module.encoder_frozen_epochs=1.5", "lightning_module.encoder_frozen_epochs=1.5"),
    ("train", "lightning_module.encoder_frozen_epochs=6 trainer.max_epochs=6", "lightning_module.encoder_frozen_epochs=6"),
    ("train", "lightning_module.encoder_lr_decay=0", "lightning_module.encoder_lr_decay=0"),
    ("train", "lightning_module.encoder_lr_decay=1.5", "lightning_module.encoder_lr_decay=1.5"),
    ("train", "datasets.prefetch_across_epochs=sometimes", "datasets.prefetch_across_epochs='sometimes'"),
]


@pytest.mark.parametrize(("job", "override", "named"), BAD_SETTINGS, ids=[case[1] for case in BAD_SETTINGS])
def test_a_setting_out_of_range_stops_before_any_work_naming_key_value_and_range(job, override, named):
    config = {"train": "train", "test": "test", "predict": "predict", "export": "export"}[job]
    extra = [] if job == "train" else ["checkpoint_path=x.ckpt"]
    cfg = compose_config(config, [*override.split(), *extra])
    with pytest.raises(SettingsError, match="must be") as error:
        validate_settings(cfg, job)
    assert named in str(error.value)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "preset").glob("*.yaml")))
def test_every_preset_passes_validation_as_shipped(preset):
    validate_settings(compose_config("train", [f"preset={preset}"]), "train")


def test_a_crop_off_the_networks_multiple_is_rounded_with_a_note(caplog):
    cfg = compose_config("train", ["crop_size=300"])
    validate_settings(cfg, "train")
    assert cfg.crop_size == 288 and "crop_size=300 is not a multiple of 32" in caplog.text


# -- checkpoints ---------------------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_CHECKPOINTS = {
    "empty": lambda p: _write(p, b""),
    "random_bytes": lambda p: _write(p, np.random.default_rng(0).bytes(4096)),
    "text_file": lambda p: _write(p, b"not a checkpoint\n"),
    "truncated": lambda p: _write(p, _good_checkpoint_bytes(p)[:2000]),
    "foreign_torch_file": lambda p: (torch.save({"weights": torch.zeros(3)}, p), p)[1],
    "a_folder": lambda p: (p.mkdir(), p)[1],
}


def _good_checkpoint_bytes(path: Path) -> bytes:
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "ocr_config": {}}, path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
@pytest.mark.parametrize(
    "what", ["checkpoint", "checkpoint to resume from (resume=)", "checkpoint to start from (init_from=)"]
)
def test_a_bad_checkpoint_is_named_with_what_was_expected(tmp_path, kind, what):
    path = BAD_CHECKPOINTS[kind](tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path, what, mmap=what != "checkpoint")
    message = str(error.value)
    assert str(path) in message and what in message and "expected a .ckpt file written by runners/train.py" in message


def test_weights_that_do_not_fit_the_network_name_the_file_and_the_tensors():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.Conv2d(16, 2, 1))
    state = {k: v for k, v in other.state_dict().items() if k != "1.num_batches_tracked"}
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_weights_into(network, state, "old.ckpt")
    message = str(error.value)
    assert message.startswith("old.ckpt: its weights do not fit the network built for them")
    assert "2 unexpected (2.weight, 2.bias)" in message and "0.weight (16, 3, 3, 3) for (8, 3, 3, 3)" in message
    assert "1 missing (1.num_batches_tracked)" in message
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())  # nothing copied
    fitting = {k: torch.full_like(v, 3) for k, v in network.state_dict().items()}
    load_weights_into(network, fitting, "new.ckpt")
    assert torch.equal(network[0].weight, torch.full_like(before["0.weight"], 3))


def test_init_from_and_resume_together_are_refused():
    from ocr.validation import settings_errors

    cfg = compose_config("train", ["resume=a/last.ckpt", "init_from=b/last.ckpt"])
    errors = settings_errors(cfg, "train")
    assert any(e.startswith("init_from=b/last.ckpt with resume=a/last.ckpt: name one") for e in errors)
    assert not settings_errors(compose_config("train", ["init_from=b/last.ckpt"]), "train")


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'gone.ckpt'}: checkpoint not found"):
        read_checkpoint(tmp_path / "gone.ckpt")


# -- outputs: the JSON + CSV pair is written whole or not at all ---------------------------------------
def _prediction(name: str, box: float) -> dict:
    polygon = np.array([[1, 1], [box, 1], [box, 10], [1, 10]], float)
    return {"name": name, "raw_size": (100, 50), "polygons": [polygon]}


def test_a_write_that_fails_on_the_second_file_leaves_the_previous_pair_intact(tmp_path, monkeypatch):
    folder = tmp_path / "submissions"
    first = write_submission(folder, "submission", [_prediction("a.jpg", 20)])
    before = {key: path.read_bytes() for key, path in first.items()}
    real_fdopen = os.fdopen
    written = []

    def failing_fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        written.append(handle)
        if len(written) == 2:  # the disk fills up while the second file is written
            handle.close()
            raise OSError(28, "No space left on device")
        return handle

    monkeypatch.setattr(os, "fdopen", failing_fdopen)
    with pytest.raises(OSError, match="No space left on device.*previous files are unchanged"):
        write_submission(folder, "submission", [_prediction("a.jpg", 40)])
    monkeypatch.undo()
    assert {key: path.read_bytes() for key, path in first.items()} == before
    assert sorted(p.name for p in folder.iterdir()) == ["submission.csv", "submission.json"]  # no temporary files left


def test_an_invalid_submission_writes_neither_file(tmp_path):
    folder = tmp_path / "submissions"
    first = write_submission(folder, "submission", [_prediction("a.jpg", 20)])
    before = {key: path.read_bytes() for key, path in first.items()}
    with pytest.raises(ValueError, match="no prediction for 1 image"):
        write_submission(folder, "submission", [_prediction("a.jpg", 40)], expected_images=["a.jpg", "b.jpg"])
    assert {key: path.read_bytes() for key, path in first.items()} == before


def test_a_read_only_output_folder_is_found_before_the_pass(tmp_path, monkeypatch):
    import tempfile

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse as it would refuse a user

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(folder))

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(OSError, match=f"{folder}: the output folder is not writable"):
        check_writable(folder)


def test_an_output_folder_that_is_a_file_is_found_before_the_pass(tmp_path):
    path = tmp_path / "submissions"
    path.write_text("I am a file")
    with pytest.raises(OSError, match=f"{path}: the output folder is not writable"):
        check_writable(path)
    assert path.read_text() == "I am a file"


def test_a_target_that_is_a_folder_leaves_the_other_file_untouched(tmp_path):
    folder = tmp_path / "submissions"
    (folder / "submission.csv").mkdir(parents=True)  # the CSV's path is taken by a folder
    with pytest.raises(OSError, match="previous files are unchanged"):
        write_submission(folder, "submission", [_prediction("a.jpg", 20)])
    assert not (folder / "submission.json").exists()


# -- data: images as users have them ------------------------------------------------------------------
def _gray_levels(page: np.ndarray) -> np.ndarray:
    return page[..., 0]


def _ink(page: np.ndarray) -> np.ndarray:
    return (page != 255).any(axis=2)


def _deep(levels: np.ndarray) -> np.ndarray:
    """8-bit levels as 16-bit values, off the exact multiples of 257 so that rounding (/257) and
    keeping the high byte (what Pillow does with 16-bit colour) differ."""
    return np.minimum(levels.astype(np.uint32) * 257 + 120, 65535).astype(np.uint16)


def _save_palette(page: np.ndarray, path: Path, transparent: bool) -> None:
    """``page`` as a palette PNG; with ``transparent`` its white paper is a transparent index whose
    colour is black (a reader that drops the transparency shows a black page)."""
    colours, indices = np.unique(page.reshape(-1, 3), axis=0, return_inverse=True)
    palette = colours.copy()
    paper = int(np.flatnonzero((colours == 255).all(axis=1))[0])
    if transparent:
        palette[paper] = 0
    image = Image.frombytes("P", (page.shape[1], page.shape[0]), indices.astype(np.uint8).tobytes())
    image.putpalette(palette.astype(np.uint8).tobytes())
    image.save(path, **({"transparency": paper} if transparent else {}))


def _save_transparent_paper(page: np.ndarray, path: Path, mode: str) -> None:
    """``page``'s ink opaque on fully transparent black paper, as LA or RGBA."""
    ink = _ink(page)
    alpha = np.where(ink, 255, 0).astype(np.uint8)
    colour = np.where(ink[..., None], page, 0).astype(np.uint8)
    planes = [colour[..., 0]] if mode == "LA" else [colour[..., c] for c in range(3)]
    Image.merge(mode, [Image.fromarray(plane) for plane in (*planes, alpha)]).save(path)


def _save_deep_colour(page: np.ndarray, path: Path, transparent: bool) -> None:
    """``page`` as a 16-bit-per-channel PNG through OpenCV (BGR order); with ``transparent`` its
    paper is transparent black (64-bit RGBA)."""
    deep = _deep(page[..., ::-1])
    if transparent:
        deep = np.where(_ink(page)[..., None], deep, 0).astype(np.uint16)
        deep = np.dstack([deep, np.where(_ink(page), 65535, 0).astype(np.uint16)])
    assert cv2.imwrite(str(path), deep)


def _save_exif_rotated(page: np.ndarray, path: Path) -> None:
    """``page`` stored turned a quarter, with EXIF orientation 6 saying how to show it upright."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    Image.fromarray(page).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)


# mode -> (colour page?, file suffix, writer, tolerance in levels; None: a black-and-white page)
IMAGE_MODES = {
    "L 8-bit gray": (False, "png", lambda p, f: Image.fromarray(_gray_levels(p)).save(f), 0),
    "1-bit": (False, "png", lambda p, f: Image.fromarray(_gray_levels(p)).point(lambda v: 255 * (v > 160)).convert("1").save(f), None),
    "I;16 16-bit gray PNG": (False, "png", lambda p, f: Image.fromarray(_deep(_gray_levels(p))).save(f), 0),
    "I;16B big-endian TIFF": (False, "tif", lambda p, f: Image.fromarray(_deep(_gray_levels(p)).astype(">u2")).save(f), 0),
    "I 32-bit TIFF": (False, "tif", lambda p, f: Image.fromarray(_deep(_gray_levels(p)).astype(np.int32)).save(f), 0),
    "48-bit RGB PNG": (True, "png", lambda p, f: _save_deep_colour(p, f, transparent=False), 0),
    "64-bit RGBA PNG, transparent paper": (True, "png", lambda p, f: _save_deep_colour(p, f, transparent=True), 0),
    "P palette": (True, "png", lambda p, f: _save_palette(p, f, transparent=False), 0),
    "P palette, transparent paper": (True, "png", lambda p, f: _save_palette(p, f, transparent=True), 0),
    "LA, transparent paper": (False, "png", lambda p, f: _save_transparent_paper(p, f, "LA"), 0),
    "RGBA, transparent paper": (True, "png", lambda p, f: _save_transparent_paper(p, f, "RGBA"), 0),
    "CMYK JPEG": (True, "jpg", lambda p, f: Image.fromarray(p).convert("CMYK").save(f, quality=95), 8),
    "multi-page TIFF": (True, "tif", lambda p, f: Image.fromarray(p).save(f, save_all=True, append_images=[Image.new("RGB", (9, 9))] * 2), 0),
    "EXIF-rotated PNG": (True, "png", lambda p, f: _save_exif_rotated(p, f), 0),
}


def _detections(rgb: np.ndarray) -> list[np.ndarray]:
    """Deterministic detections of a page: dark ink is text (no network)."""
    gray = rgb.astype(np.float32).mean(axis=2)
    return sorted(DBPostProcessor()(1 - gray / 255).polygons, key=lambda p: tuple(p.min(axis=0)))


@pytest.mark.parametrize("mode", sorted(IMAGE_MODES))
def test_an_image_in_any_mode_reads_as_its_8_bit_rgb_page(tmp_path, caplog, mode):
    colour, suffix, write, tolerance = IMAGE_MODES[mode]
    page = text_page(colour=colour)
    if tolerance is None:  # 1-bit: the page itself is black and white
        page = np.where(page < 160, 0, 255).astype(np.uint8)
        tolerance = 0
    Image.fromarray(page).save(tmp_path / "reference.png")
    write(page, tmp_path / f"page.{suffix}")
    reference, _, _ = read_image(tmp_path / "reference.png")
    with caplog.at_level(logging.WARNING):
        rgb, orientation, stored = read_image(tmp_path / f"page.{suffix}")
    assert rgb.dtype == np.uint8 and rgb.shape == page.shape
    assert np.abs(rgb.astype(int) - page).max() <= tolerance  # 0: exact
    if tolerance > 1:  # JPEG: close on average, only edges move
        assert np.abs(rgb.astype(int) - page).mean() < 2
    found, expected = _detections(rgb), _detections(reference)
    assert len(found) == len(expected) >= 3
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a, b, atol=1.0 if tolerance <= 1 else 2.0)
    if mode == "multi-page TIFF":
        assert "page.tif: holds 3 pages (frames); reading the first only" in caplog.text
    else:
        assert "pages" not in caplog.text
    assert (orientation, stored) == ((6, page.shape[:2]) if mode.startswith("EXIF") else (1, page.shape[1::-1]))


# -- data: unreadable images ---------------------------------------------------------------------------
def _truncated(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


# case -> (file name, writer, what the message says, found by reading the header (True) or only on decoding)
BAD_IMAGES = {
    "truncated PNG": ("a.png", lambda p: p.write_bytes(_truncated("PNG")), "cannot read image", False),
    "truncated JPEG": ("a.jpg", lambda p: p.write_bytes(_truncated("JPEG")), "truncated", False),
    "text file named .jpg": ("a.jpg", lambda p: p.write_text("total 12.50\n"), "not an image format Pillow knows; the file starts with b'total 12.50", True),
    "empty file": ("a.png", lambda p: p.write_bytes(b""), "not an image format Pillow knows", True),
    "decompression bomb (200 MP header)": ("a.png", lambda p: write_png_header(p, 20000, 10000), "the limit is 178,956,970 pixels", True),
    "a folder named .png": ("a.png", lambda p: p.mkdir(), "is a folder, not an image file", True),
}


def _two_image_split(tmp_path: Path, bad_name: str, write) -> tuple[Path, Path]:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(text_page()).save(image_dir / "b.png")
    write(image_dir / bad_name)
    words = {"1": {"points": rect(6, 6, 40, 14)}}
    json_path = tmp_path / "val.json"
    json_path.write_text(json.dumps({"images": {bad_name: {"words": words}, "b.png": {"words": words}}}))
    return image_dir, json_path


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_an_unreadable_image_is_named_and_skipped_or_an_error(tmp_path, caplog, case):
    name, write, problem, in_header = BAD_IMAGES[case]
    image_dir, json_path = _two_image_split(tmp_path, name, write)
    bad = image_dir / name
    with pytest.raises(ImageReadError, match=re.escape(f"{bad}: ")) as error:
        read_image(bad)
    assert problem in str(error.value)
    # bad_image=skip: probed (decoded) when the split is built, so no worker ever sees it
    with caplog.at_level(logging.WARNING):
        dataset = ReceiptDataset(image_dir, json_path, resize=ResizeForEval(64), bad_image="skip", split="val")
    assert [s.name for s in dataset.samples] == ["b.png"] and dataset.report.images_skipped == 1
    assert f"{bad}: " in caplog.text and "skipping the image (datasets.bad_image=skip)" in caplog.text
    assert [r.message for r in caplog.records if r.message.startswith("val: ")] == ["val: 1 of 2 images skipped as missing or unreadable"]
    # bad_image=error: a bad header stops the split's set-up, a bad body the first read of it
    if in_header:
        with pytest.raises(ImageReadError, match=re.escape(str(bad))):
            ReceiptDataset(image_dir, json_path, resize=ResizeForEval(64))
    else:
        dataset = ReceiptDataset(image_dir, json_path, resize=ResizeForEval(64))
        dataset[1]
        with pytest.raises(ImageReadError, match=re.escape(f"{bad}: cannot read image")):
            dataset[0]


def test_an_image_over_the_explicit_pixel_limit_names_the_file_and_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(text_page()).save(tmp_path / "big.png")  # 96 x 64 = 6144 pixels
    with pytest.raises(ImageReadError, match=re.escape(f"{tmp_path / 'big.png'}: too large to decode safely (96 x 64 = 6,144 pixels); the limit is 1,000 pixels")):
        read_image(tmp_path / "big.png")


# -- data: annotation files ----------------------------------------------------------------------------
def _annotation_text() -> str:
    return json.dumps({"images": {"a.png": {"words": {"1": {"points": rect(6, 6, 40, 14), "transcription": "Café"}}}}}, ensure_ascii=False)


ENCODINGS = {
    "UTF-8": (lambda t: t.encode("utf-8"), None),
    "UTF-8 with BOM": (lambda t: codecs.BOM_UTF8 + t.encode("utf-8"), None),
    "UTF-16 LE with BOM": (lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"), None),
    "UTF-16 BE with BOM": (lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"), None),
    "Latin-1": (lambda t: t.encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset"),
    "UTF-16 without BOM": (lambda t: t.encode("utf-16-le"), "looks like UTF-16 or UTF-32 without a byte-order mark"),
    "UTF-32": (lambda t: t.encode("utf-32"), "the file is UTF-32 encoded; save it as UTF-8"),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_an_annotation_file_in_utf8_or_utf16_is_read_any_other_encoding_is_named(tmp_path, encoding):
    encode, problem = ENCODINGS[encoding]
    (tmp_path / "images").mkdir()
    Image.fromarray(text_page()).save(tmp_path / "images" / "a.png")
    json_path = tmp_path / "train.json"
    json_path.write_bytes(encode(_annotation_text()))
    if problem is None:
        (sample,) = load_samples(tmp_path / "images", json_path)
        assert sample.texts == ["Café"]
    else:
        with pytest.raises(AnnotationError, match=re.escape(f"{json_path}: {problem}")):
            load_samples(tmp_path / "images", json_path)


_BOXES = {"<A>": json.dumps(rect(6, 6, 40, 14)), "<B>": json.dumps(rect(6, 24, 60, 32)), "<C>": json.dumps(rect(50, 6, 88, 14))}
DUPLICATES = {
    # case -> (the JSON, <A> <B> <C> standing for three boxes; what the error says after the file's name)
    "image listed twice": (
        '{"images": {"a.png": {"words": {"1": {"points": <A>}}}, "b.png": {"words": {}}, "a.png": {"words": {"2": {"points": <B>}, "3": {"points": <C>}}}}}',
        "image 'a.png' is listed twice in \"images\" (entries #1 and #3, with 1 and 2 words); JSON would keep only the second",
    ),
    "word id used twice": (
        '{"images": {"a.png": {"words": {"7": {"points": <A>}, "8": {"points": <B>}, "7": {"points": <C>}}}}}',
        "image 'a.png': word id '7' is used twice (words entries #1 and #3, points [[6, 6], [40, 6], [40, 14], [6, 14]] and [[50, 6], [88, 6], [88, 14], [50, 14]])",
    ),
    "points given twice in a word": (
        '{"images": {"a.png": {"words": {"1": {"points": <A>, "points": <B>}}}}}',
        "key 'points' appears twice in images/a.png/words/1 (entries #1 and #2); JSON would keep only the last",
    ),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_a_repeated_key_in_the_annotation_names_both_occurrences(tmp_path, case):
    layout, message = DUPLICATES[case]
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(text_page()).save(tmp_path / "images" / name)
    json_path = tmp_path / "train.json"
    json_path.write_text(re.sub("<[ABC]>", lambda match: _BOXES[match.group()], layout))
    with pytest.raises(AnnotationError, match=re.escape(f"{json_path}: {message}")):
        load_samples(tmp_path / "images", json_path)


NAMES = {
    # case -> (name in the JSON, name on disk)
    "NFC in the JSON, NFD on disk": (unicodedata.normalize("NFC", "reçu_é.png"), unicodedata.normalize("NFD", "reçu_é.png")),
    "NFD in the JSON, NFC on disk": (unicodedata.normalize("NFD", "reçu_é.png"), unicodedata.normalize("NFC", "reçu_é.png")),
}


@pytest.mark.parametrize("case", sorted(NAMES))
def test_file_names_match_across_unicode_normalisation(tmp_path, case):
    listed, on_disk = NAMES[case]
    assert listed != on_disk
    (tmp_path / "images").mkdir()
    Image.fromarray(text_page()).save(tmp_path / "images" / on_disk)
    json_path = tmp_path / "val.json"
    json_path.write_text(json.dumps({"images": {listed: {"words": {"1": {"points": rect(6, 6, 40, 14)}}}}}))
    (sample,) = load_samples(tmp_path / "images", json_path)
    assert sample.name == listed and sample.image_path.name == on_disk and len(sample.polygons) == 1
    # predict lists the file once, not a second time as "unlisted"
    assert [s.name for s in load_samples(tmp_path / "images", json_path, include_unlisted=True)] == [listed]


def test_an_image_not_found_lists_the_closest_names_in_the_folder(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    for name in ("receipt_001.png", "receipt_002.png", "zzz.png"):
        Image.fromarray(text_page()).save(tmp_path / "images" / name)
    json_path = tmp_path / "val.json"
    json_path.write_text(json.dumps({"images": {"reciept_001.png": {"words": {}}, "zzz.png": {"words": {}}}}))
    where = f"{json_path}: image 'reciept_001.png': image file {tmp_path / 'images' / 'reciept_001.png'} not found"
    with pytest.raises(AnnotationError, match=re.escape(f"{where} (closest names there: 'receipt_001.png', 'receipt_002.png')")):
        load_samples(tmp_path / "images", json_path)
    with caplog.at_level(logging.WARNING):
        assert [s.name for s in load_samples(tmp_path / "images", json_path, bad_image="skip", split="val")] == ["zzz.png"]
    assert where in caplog.text and "val: 1 of 2 images skipped as missing or unreadable" in caplog.text


# -- data: word polygons, checked against the stored image size (200 x 120) ------------------------------
POLYGONS = {
    # case -> (points, what becomes of the word: kept / repaired / skipped, the polygon kept, the problem named)
    "inside": (rect(10, 10, 60, 30), "kept", rect(10, 10, 60, 30), None),
    "on the far edge (pixel-edge coordinates)": (rect(150, 100, 200, 120), "kept", rect(150, 100, 200, 120), None),
    "bow-tie quadrilateral": ([[10, 10], [60, 30], [60, 10], [10, 30]], "repaired", [[10, 10], [60, 10], [60, 30], [10, 30]], "self-intersecting outline (a bow-tie): re-ordered its points"),
    "crossed, a point inside the others": ([[10, 10], [60, 10], [10, 30], [60, 30], [30, 20]], "skipped", None, "self-intersecting outline that no re-ordering of its points makes simple: skipped"),
    "across the right edge": (rect(180, 10, 260, 30), "repaired", rect(180, 10, 199, 30), "outside the 200x120 image (x 180..260, y 10..30): clipped to the image"),
    "bow-tie across the bottom edge": ([[10, 100], [60, 140], [60, 100], [10, 140]], "repaired", rect(10, 100, 60, 119), "self-intersecting outline (a bow-tie), partly outside the 200x120 image (x 10..60, y 100..140): re-ordered its points and clipped to the image"),
    "wholly outside": (rect(250, 10, 300, 30), "skipped", None, "outside the 200x120 image (x 250..300, y 10..30): skipped"),
    "zero area, collinear": ([[10, 10], [60, 10], [110, 10]], "skipped", None, "zero area (0 px², under 1): skipped"),
    "zero area, one point four times": ([[5, 5]] * 4, "skipped", None, "zero area (0 px², under 1): skipped"),
    "a coordinate of 1e300": ([[10, 10], [1e300, 10], [1e300, 30], [10, 30]], "skipped", None, "coordinates far outside the 200x120 image (x 10..1e+300, y 10..30): skipped"),
    "a coordinate of -1e300": ([[-1e300, -1e300], [60, 10], [60, 30], [10, 30]], "skipped", None, "coordinates far outside the 200x120 image (x -1e+300..60, y -1e+300..30): skipped"),
}


@pytest.mark.parametrize("case", sorted(POLYGONS))
def test_a_word_polygon_is_kept_repaired_or_skipped_with_a_warning_naming_it(tmp_path, caplog, case):
    points, outcome, kept, problem = POLYGONS[case]
    words = {"good": {"points": rect(100, 50, 150, 70)}, "odd": {"points": points}}
    image_dir, json_path = write_split(tmp_path, "val", {"a.jpg": {"words": words}})
    with caplog.at_level(logging.WARNING):
        (sample,) = load_samples(image_dir, json_path, split="val")
    summaries = [r.message for r in caplog.records if r.message.startswith("val: ")]
    if outcome == "kept":
        assert caplog.text == "" and len(sample.polygons) == 2
        np.testing.assert_array_equal(sample.polygons[1], kept)
        return
    assert f"{json_path}: image 'a.jpg', word 'odd': {problem}" in caplog.text
    counts = (1, 0) if outcome == "repaired" else (0, 1)
    assert summaries == [f"val: {counts[0]} word{'' if counts[0] == 1 else 's'} repaired, {counts[1]} skipped (of 2 in {json_path})"]
    assert len(sample.polygons) == 1 + (outcome == "repaired")
    if outcome == "repaired":
        assert ShapelyPolygon(sample.polygons[1]).symmetric_difference(ShapelyPolygon(kept)).area < 1e-6
    with pytest.raises(AnnotationError, match=re.escape(f"{json_path}: image 'a.jpg', word 'odd': {problem.rsplit(': ', 1)[0]}; datasets.invalid_polygon=skip")):
        load_samples(image_dir, json_path, invalid_polygon="error")


def test_one_summary_line_per_split_counts_every_repair_and_skip(tmp_path, caplog):
    words = {
        "1": {"points": [[10, 10], [60, 30], [60, 10], [10, 30]]},  # bow-tie: repaired
        "2": {"points": rect(180, 10, 260, 30)},  # across the edge: repaired
        "3": {"points": rect(-20, 50, 30, 70)},  # across the edge: repaired
        "4": {"points": [[5, 5]] * 4},  # zero area: skipped
        "5": {"points": [[1, 1], [2, 2]]},  # two points: skipped
        "6": {"points": rect(100, 50, 150, 70)},
    }
    image_dir, json_path = write_split(tmp_path, "val", {"a.jpg": {"words": words}})
    with caplog.at_level(logging.WARNING):
        (sample,) = load_samples(image_dir, json_path, split="val")
    assert len(sample.polygons) == 4
    assert [r.message for r in caplog.records if r.message.startswith("val: ")] == [f"val: 3 words repaired, 2 skipped (of 6 in {json_path})"]
    assert len(caplog.records) == 6  # one warning per word changed, one summary


# -- data: splits that would train, validate or predict on nothing or on part of the folder -------------
def _datamodule(tmp_path: Path, **options) -> ReceiptDataModule:
    return ReceiptDataModule(
        PolygonAugment([RandomRescale(64)]), ResizeForEval(64), TargetConfig(), synthetic={"root": str(tmp_path / "synthetic")}, num_workers=0, **options
    )


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_whose_every_word_was_skipped_stops_naming_split_file_and_count(tmp_path, split):
    bad = {"1": {"points": [[5, 5]] * 4}, "2": {"points": rect(300, 10, 350, 30)}}
    splits = {}
    for name in ("train", "val"):
        words = bad if name == split else {"1": {"points": rect(10, 10, 60, 30)}}
        image_dir, json_path = write_split(tmp_path, name, {"a.jpg": {"words": words}})
        splits[name] = {"image_dir": str(image_dir), "annotation_path": str(json_path)}
    datamodule = _datamodule(tmp_path, splits=splits)
    message = f"{tmp_path / 'jsons' / f'{split}.json'}: the '{split}' split has no usable words: all 2 words were skipped as invalid"
    with pytest.raises(AnnotationError, match=re.escape(message)):
        datamodule.setup("fit")


def test_predict_covers_every_image_of_its_folder_listed_or_not(tmp_path, caplog):
    image_dir, json_path = write_split(tmp_path, "test", {"a.jpg": {"words": {}}})
    for name in ("c.png", "b.jpg"):
        Image.fromarray(text_page()).save(image_dir / name)
    (image_dir / "notes.txt").write_text("not an image")
    datamodule = _datamodule(tmp_path, splits={"predict": {"image_dir": str(image_dir), "annotation_path": str(json_path)}})
    with caplog.at_level(logging.INFO):
        datamodule.setup("predict")
    assert [s.name for s in datamodule.datasets["predict"].samples] == ["a.jpg", "b.jpg", "c.png"]
    assert f"predict: 2 images in {image_dir} are not listed in {json_path}; predicting them too" in caplog.text
    assert len(datamodule.predict_dataloader().dataset) == 3


@pytest.mark.parametrize("bad_image", ["skip", "error"])
def test_predict_with_a_missing_and_an_unreadable_image_follows_bad_image(tmp_path, caplog, bad_image):
    image_dir, json_path = write_split(tmp_path, "test", {"a.jpg": {"words": {}}, "gone.jpg": {"words": {}}})
    (image_dir / "gone.jpg").unlink()
    (image_dir / "broken.png").write_bytes(_truncated("PNG"))
    datamodule = _datamodule(tmp_path, splits={"predict": {"image_dir": str(image_dir), "annotation_path": str(json_path)}}, bad_image=bad_image)
    if bad_image == "error":
        with pytest.raises(AnnotationError, match=re.escape(f"image file {image_dir / 'gone.jpg'} not found")):
            datamodule.setup("predict")
        return
    with caplog.at_level(logging.WARNING):
        datamodule.setup("predict")
    assert [s.name for s in datamodule.datasets["predict"].samples] == ["a.jpg"]
    assert f"{image_dir / 'broken.png'}: cannot read image" in caplog.text and "gone.jpg" in caplog.text
    assert [r.message for r in caplog.records if r.message.startswith("predict: ")] == ["predict: 2 of 3 images skipped as missing or unreadable"]


def test_only_a_predict_folder_builds_nothing_synthetic_and_other_splits_name_their_setting(tmp_path):
    image_dir = tmp_path / "new_receipts"
    image_dir.mkdir()
    Image.fromarray(text_page()).save(image_dir / "r1.png")
    datamodule = _datamodule(tmp_path, splits={"predict": {"image_dir": str(image_dir)}})
    datamodule.prepare_data()
    datamodule.setup("predict")
    assert not (tmp_path / "synthetic").exists() and not datamodule.uses_synthetic
    assert [s.name for s in datamodule.datasets["predict"].samples] == ["r1.png"]
    for stage, split in (("test", "test"), ("fit", "train")):
        with pytest.raises(ValueError, match=re.escape(f"no location for the '{split}' split: set datasets.splits.{split}.image_dir")):
            datamodule.setup(stage)
