"""Annotation converters (ocr/data/convert.py, runners/convert.py) on small hand-made files."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ocr.data.annotations import DONT_CARE, load_annotation_file, load_samples
from ocr.data.convert import ConvertError, convert, labelstudio_image_name, main, read_icdar_txt

ROOT = Path(__file__).resolve().parents[1]
CAFE = "Café 커피"


def touch_images(folder: Path, *names: str) -> Path:
    """Blank pages large enough for every hand-made polygon (the loader checks words against the size)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("L", (2000, 2000), 255).save(folder / name, format="PNG" if name.lower().endswith(".png") else "JPEG")
    return folder


def words_of(json_path: Path, image: str) -> list[dict]:
    return list(load_annotation_file(json_path)["images"][image]["words"].values())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "runners" / "convert.py"), *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- ICDAR-2015 / SROIE


def write_icdar_set(root: Path) -> tuple[Path, Path]:
    images = touch_images(root / "images", "img_1.jpg", "img_2.PNG")
    gt = root / "gt"
    gt.mkdir()
    # BOM, CRLF, a blank line, don't care, non-ASCII and a transcription with commas
    (gt / "gt_img_1.txt").write_bytes(
        (
            "\ufeff377,117,463,117,465,130,378,130,Genaxis Theatre\r\n"
            "\r\n"
            "493,115,519,115,519,131,493,131,###\r\n"
            "10.5,20,60,20,60,40,10.5,40," + CAFE + "\r\n"
            "1,2,3,2,3,4,1,4,TOTAL: 1,234,56\r\n"
        ).encode("utf-8")
    )
    (gt / "img_2.txt").write_text("0,0,10,0,10,10,0,10,a\n", encoding="utf-8")
    return gt, images


def test_icdar2015_to_ufo(tmp_path):
    gt, images = write_icdar_set(tmp_path)
    out = tmp_path / "out" / "train.json"
    summary = convert("icdar2015", gt, out, images=images)
    assert (summary.images, summary.words, summary.dont_care, summary.skipped) == (2, 5, 1, 0)

    data = load_annotation_file(out)
    assert list(data["images"]) == ["img_1.jpg", "img_2.PNG"]
    assert list(data["images"]["img_1.jpg"]["words"]) == ["0001", "0002", "0003", "0004"]
    words = words_of(out, "img_1.jpg")
    assert words[0] == {"points": [[377, 117], [463, 117], [465, 130], [378, 130]], "transcription": "Genaxis Theatre"}
    assert words[1]["transcription"] == DONT_CARE
    assert words[2] == {"points": [[10.5, 20], [60, 20], [60, 40], [10.5, 40]], "transcription": CAFE}
    assert words[3]["transcription"] == "TOTAL: 1,234,56"
    # UTF-8 as is, not \u escapes; and no temporary file left beside the output
    assert CAFE in out.read_text(encoding="utf-8")
    assert os.listdir(out.parent) == ["train.json"]


def test_sroie_latin1_fallback_names_the_file(tmp_path, caplog):
    folder = touch_images(tmp_path / "task1", "X001.jpg", "X002.jpg")  # SROIE keeps images and txt together
    (folder / "X001.txt").write_bytes("72,25,326,25,326,64,72,64,CAFÉ, 12 RUE\n".encode("latin-1"))
    (folder / "X002.txt").write_text("1,1,9,1,9,9,1,9," + CAFE + "\n", encoding="utf-8")
    out = tmp_path / "sroie.json"
    with caplog.at_level(logging.WARNING):
        summary = convert("sroie", folder, out)
    assert (summary.images, summary.words, summary.dont_care) == (2, 2, 0)
    assert "X001.txt" in caplog.text and "latin-1" in caplog.text
    assert words_of(out, "X001.jpg")[0]["transcription"] == "CAFÉ, 12 RUE"
    assert words_of(out, "X002.jpg")[0]["transcription"] == CAFE


def test_icdar2015_rejects_non_utf8_naming_the_file(tmp_path):
    images = touch_images(tmp_path / "images", "a.jpg")
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "gt_a.txt").write_bytes("0,0,1,0,1,1,0,1,CAFÉ\n".encode("latin-1"))
    with pytest.raises(ConvertError, match=r"gt_a\.txt: not UTF-8"):
        convert("icdar2015", gt, tmp_path / "out.json", images=images)


@pytest.mark.parametrize(
    "line, message",
    [
        ("1,2,3,4,text", "gt_img_1.txt line 3: expected 8 coordinates and a transcription, got 5 fields"),
        ("1,2,3,4,5,6,7,8", "gt_img_1.txt line 3: expected 8 coordinates and a transcription, got 8 fields"),
        ("1,2,3,x4,5,6,7,8,t", "gt_img_1.txt line 3: coordinate 4 is not a number: 'x4'"),
    ],
)
def test_txt_errors_name_file_and_line(tmp_path, line, message):
    images = touch_images(tmp_path / "images", "img_1.jpg")
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "gt_img_1.txt").write_text(f"0,0,1,0,1,1,0,1,ok\n\n{line}\n", encoding="utf-8")
    out = tmp_path / "out.json"
    with pytest.raises(ConvertError) as raised:
        convert("icdar2015", gt, out, images=images)
    assert str(raised.value) == message
    assert not out.exists()


def test_missing_error_vs_skip(tmp_path, caplog):
    images = touch_images(tmp_path / "images", "a.jpg", "no_txt.jpg")
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "gt_a.txt").write_text("0,0,1,0,1,1,0,1,a\n", encoding="utf-8")
    (gt / "gt_no_image.txt").write_text("0,0,1,0,1,1,0,1,b\n", encoding="utf-8")
    out = tmp_path / "out.json"

    with pytest.raises(ConvertError, match=r"gt_no_image\.txt: no image with stem 'no_image'"):
        convert("icdar2015", gt, out, images=images)
    (gt / "gt_no_image.txt").unlink()
    with pytest.raises(ConvertError, match=r"no_txt\.jpg: image has no annotation"):
        convert("icdar2015", gt, out, images=images)
    assert not out.exists()

    (gt / "gt_no_image.txt").write_text("0,0,1,0,1,1,0,1,b\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        summary = convert("icdar2015", gt, out, images=images, missing="skip")
    assert (summary.images, summary.words, summary.skipped) == (1, 1, 2)
    assert "gt_no_image.txt" in caplog.text and "no_txt.jpg" in caplog.text
    assert list(load_annotation_file(out)["images"]) == ["a.jpg"]


# --------------------------------------------------------------------------- labelme


def test_labelme_to_ufo(tmp_path, caplog):
    folder = tmp_path / "labelme"
    folder.mkdir()
    shapes = [
        {"label": CAFE, "points": [[10, 10], [50, 12], [48, 30], [12, 28], [8, 20]], "shape_type": "polygon"},
        {"label": "TOTAL, 12", "points": [[80, 40], [20, 10]], "shape_type": "rectangle"},  # any two opposite corners
        {"label": "###", "points": [[0, 0], [5, 0], [5, 5]], "shape_type": "polygon"},
        {"label": "logo", "points": [[30, 30], [35, 30]], "shape_type": "circle"},
    ]
    document = {"version": "5.4.1", "imagePath": "..\\images\\receipt 1.jpg", "shapes": shapes, "imageData": None}
    (folder / "receipt 1.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "labelme.json"
    with caplog.at_level(logging.WARNING):
        summary = convert("labelme", folder, out)
    assert (summary.images, summary.words, summary.dont_care, summary.skipped) == (1, 3, 1, 1)
    assert "receipt 1.json shape 3" in caplog.text and "circle" in caplog.text
    words = words_of(out, "receipt 1.jpg")
    assert words[0] == {"points": shapes[0]["points"], "transcription": CAFE}
    assert words[1] == {"points": [[20, 10], [80, 10], [80, 40], [20, 40]], "transcription": "TOTAL, 12"}
    assert words[2]["transcription"] == DONT_CARE

    # with --images the image must exist (and every image needs an annotation)
    images = touch_images(tmp_path / "images", "other.jpg")
    with pytest.raises(ConvertError, match=r"receipt 1\.json: image 'receipt 1\.jpg' not found"):
        convert("labelme", folder, out, images=images)
    touch_images(images, "receipt 1.jpg")
    assert convert("labelme", folder, out, images=images, missing="skip").skipped == 2  # circle + other.jpg


# --------------------------------------------------------------------------- Label Studio


def labelstudio_export() -> list[dict]:
    size = {"original_width": 200, "original_height": 100, "image_rotation": 0}
    return [
        {
            "id": 7,
            "data": {"image": "/data/upload/3/1a2b3c4d-caf%C3%A9%20receipt.jpg"},
            "annotations": [
                {
                    "id": 1,
                    "result": [
                        {
                            "id": "poly1", "type": "polygonlabels", "from_name": "label", "to_name": "image", **size,
                            "value": {"points": [[10, 20], [50, 20], [50, 40], [10, 40], [5, 30]], "polygonlabels": ["Text"]},
                        },
                        {"id": "poly1", "type": "textarea", "from_name": "transcription", "to_name": "image", **size,
                         "value": {"text": [CAFE]}},
                        {
                            "id": "rect1", "type": "rectanglelabels", "from_name": "label", "to_name": "image", **size,
                            "value": {"x": 10, "y": 20, "width": 25, "height": 10, "rotation": 30,
                                      "rectanglelabels": ["Text"]},
                        },
                        {"id": "rect1", "type": "textarea", "from_name": "transcription", "to_name": "image", **size,
                         "value": {"text": ["1,234.00"]}},
                        {
                            "id": "rect2", "type": "rectanglelabels", "from_name": "label", "to_name": "image", **size,
                            "value": {"x": 0, "y": 0, "width": 5, "height": 5, "rotation": 0, "rectanglelabels": ["###"]},
                        },
                        {
                            "id": "dot", "type": "keypointlabels", "from_name": "kp", "to_name": "image", **size,
                            "value": {"x": 1, "y": 1, "width": 1, "keypointlabels": ["Text"]},
                        },
                    ],
                }
            ],
        },
        {
            "id": 8,
            "data": {"ocr": "/data/local-files/?d=receipts%2Fplain.png"},  # the OCR template's $ocr
            "annotations": [
                {"id": 2, "was_cancelled": True, "result": []},
                {"id": 3, "result": [
                    {"id": "r", "type": "rectangle", **size, "value": {"x": 50, "y": 50, "width": 10, "height": 20}},
                ]},
            ],
        },
    ]


def test_labelstudio_to_ufo_converts_percent_and_rotation_to_pixels(tmp_path, caplog):
    export = tmp_path / "export.json"
    export.write_text(json.dumps(labelstudio_export()), encoding="utf-8")
    out = tmp_path / "ls.json"
    with caplog.at_level(logging.WARNING):
        summary = convert("labelstudio", export, out, strip_upload_prefix=True)
    assert (summary.images, summary.words, summary.dont_care, summary.skipped) == (2, 4, 1, 1)
    assert "region dot" in caplog.text and "keypointlabels" in caplog.text

    words = words_of(out, "café receipt.jpg")
    polygon, rotated, dont_care = words
    assert polygon["transcription"] == CAFE
    np.testing.assert_allclose(polygon["points"], [[20, 20], [100, 20], [100, 40], [20, 40], [10, 30]])
    # x, y = 20, 20 px; 50 x 10 px; rotated 30 degrees clockwise (y down) about the top-left corner
    assert rotated["transcription"] == "1,234.00"
    np.testing.assert_allclose(
        rotated["points"], [[20, 20], [63.301, 45], [58.301, 53.660], [15, 28.660]], atol=1e-3
    )
    assert dont_care == {"points": [[0, 0], [10, 0], [10, 5], [0, 5]], "transcription": DONT_CARE}
    # the cancelled annotation is passed over; a region without a textarea has no transcription
    assert words_of(out, "plain.png") == [{"points": [[100, 50], [120, 50], [120, 70], [100, 70]]}]

    without_flag = tmp_path / "ls_prefixed.json"
    convert("labelstudio", export, without_flag)
    assert "1a2b3c4d-café receipt.jpg" in load_annotation_file(without_flag)["images"]


def test_labelstudio_image_names():
    assert labelstudio_image_name("http://host/a/b%20c.jpg?token=1") == "b c.jpg"
    assert labelstudio_image_name("/data/upload/1/0f0f0f0f-x.jpg", strip_upload_prefix=True) == "x.jpg"
    assert labelstudio_image_name("/data/upload/1/0f0f0f0f-x.jpg") == "0f0f0f0f-x.jpg"
    assert labelstudio_image_name("/data/local-files/?d=dir/sub/y.png") == "y.png"


def test_labelstudio_missing_images_and_annotations(tmp_path):
    tasks = labelstudio_export()
    tasks.append({"id": 9, "data": {"image": "/data/upload/3/unlabelled.jpg"}, "annotations": []})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")
    images = touch_images(tmp_path / "images", "café receipt.jpg", "plain.png", "unlabelled.jpg")
    out = tmp_path / "ls.json"
    with pytest.raises(ConvertError, match=r"export\.json task 2 \(id 9\) image 'unlabelled\.jpg': task has no annotation"):
        convert("labelstudio", export, out, images=images, strip_upload_prefix=True)
    with pytest.raises(ConvertError, match=r"task 0 \(id 7\) image '1a2b3c4d-café receipt\.jpg': image not found"):
        convert("labelstudio", export, out, images=images)
    summary = convert("labelstudio", export, out, images=images, missing="skip", strip_upload_prefix=True)
    # the keypoint region, the task without annotation, and its image (no annotation)
    assert (summary.images, summary.skipped) == (2, 3)


# --------------------------------------------------------------------------- UFO -> ICDAR-2015


def test_round_trip_ufo_icdar2015_ufo(tmp_path, caplog):
    ufo = {
        "images": {
            "a.jpg": {"words": {
                "0001": {"points": [[1, 2], [30, 2], [30, 12], [1, 12]], "transcription": CAFE},
                "0002": {"points": [[40, 5], [80, 6], [79, 20], [39, 19]], "transcription": "TOTAL: 1,234"},
                "0003": {"points": [[0, 30], [9, 30], [9, 39], [0, 39]], "transcription": DONT_CARE},
            }},
            "b.png": {"words": {}},
        }
    }
    source = tmp_path / "ufo.json"
    source.write_text(json.dumps(ufo, ensure_ascii=False), encoding="utf-8")
    txt_dir = tmp_path / "txt"
    summary = convert("to-icdar2015", source, txt_dir)
    assert (summary.images, summary.words, summary.dont_care, summary.rectangles) == (2, 3, 1, 0)
    assert sorted(os.listdir(txt_dir)) == ["gt_a.txt", "gt_b.txt"]
    assert (txt_dir / "gt_a.txt").read_text(encoding="utf-8").splitlines()[1] == "40,5,80,6,79,20,39,19,TOTAL: 1,234"

    images = touch_images(tmp_path / "images", "a.jpg", "b.png")
    back = tmp_path / "back.json"
    convert("icdar2015", txt_dir, back, images=images)
    assert load_annotation_file(back) == ufo


def test_to_icdar2015_min_area_rectangle_and_missing_transcription(tmp_path, caplog):
    ufo = {"images": {"c.jpg": {"words": {
        "0001": {"points": [[10, 10], [20, 10], [30, 10], [30, 20], [20, 20], [10, 20]]},  # 6 points, no transcription
        "0002": {"points": [[0, 0], [4, 0], [0, 3]], "transcription": "tri"},
    }}}}
    source = tmp_path / "ufo.json"
    source.write_text(json.dumps(ufo), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        summary = convert("to-icdar2015", source, tmp_path / "txt")
    assert summary.rectangles == 2 and "2 polygons" in caplog.text
    lines = (tmp_path / "txt" / "gt_c.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "10,10,30,10,30,20,10,20,"  # empty transcription: a normal word, not don't care
    words = read_icdar_txt(tmp_path / "txt" / "gt_c.txt")
    assert words[0].transcription == "" and words[1].transcription == "tri"
    import cv2

    rectangle = np.asarray(words[1].points, dtype=np.float32)
    assert rectangle.shape == (4, 2) and abs(cv2.contourArea(rectangle) - 12) < 1.5  # 4 x 3 box or its rotated twin
    for corner in ufo["images"]["c.jpg"]["words"]["0002"]["points"]:
        assert cv2.pointPolygonTest(rectangle, tuple(map(float, corner)), True) >= -1  # integer rounding


# --------------------------------------------------------------------------- the CLI


def test_cli_writes_json_that_load_samples_reads(tmp_path):
    gt, images = write_icdar_set(tmp_path)
    out = tmp_path / "train.json"
    result = run_cli("icdar2015", gt, out, "--images", images)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        f"icdar2015: wrote {out}: 2 images, 5 words (1 don't care), 0 skipped"
    )
    samples = {sample.name: sample for sample in load_samples(images, out)}
    assert len(samples["img_1.jpg"].polygons) == 4 and len(samples["img_2.PNG"].polygons) == 1
    assert samples["img_1.jpg"].ignore == [False, True, False, False]
    assert samples["img_1.jpg"].texts[2] == CAFE


def test_cli_errors_and_module_entry(tmp_path):
    images = touch_images(tmp_path / "images", "img_1.jpg")
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "gt_img_1.txt").write_text("1,2,3,4,oops\n", encoding="utf-8")
    result = run_cli("icdar2015", gt, tmp_path / "o.json", "--images", images)
    assert result.returncode == 1
    assert "gt_img_1.txt line 1: expected 8 coordinates and a transcription, got 5 fields" in result.stderr

    result = run_cli("nope", gt, tmp_path / "o.json")
    assert result.returncode == 2 and "invalid choice" in result.stderr

    helped = subprocess.run(
        [sys.executable, "-m", "ocr.data.convert", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and "to-icdar2015" in helped.stdout and "--strip-upload-prefix" in helped.stdout


def test_main_in_process(tmp_path, capsys):
    folder = touch_images(tmp_path / "sroie", "X9.jpg")
    (folder / "X9.txt").write_text("0,0,5,0,5,5,0,5,###\n", encoding="utf-8")
    assert main(["sroie", str(folder), str(tmp_path / "s.json")]) == 0
    assert "1 images, 1 words (1 don't care), 0 skipped" in capsys.readouterr().out
