"""The Python API (ocr/detector.py, ``from ocr import Detector``): inputs (arrays, PIL images, paths,
lists, folders), polygons in each image's own stored frame (EXIF), per-call post-processing,
checkpoint vs ONNX export, the same rows as runners/predict.py, and the README snippet.

The network is PP-OCR's detector route (``models.network``) with a stand-in graph that marks dark
pixels (one 3x3 convolution summing the pixels, negated): its probability map has text regions
without training, so every comparison below is between many polygons."""

from __future__ import annotations

import contextlib
import io
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ocr import Detector
from ocr.config import compose_config
from ocr.data.synthetic import render_receipt
from ocr.factory import build_module
from ocr.geometry import EXIF_ORIENTATION_TAG
from ocr.submission import build_rows, read_submission_csv
from ocr.testing import ROOT, run_runner, tiny_run_overrides, write_tiny_detector_onnx


def readme_snippet() -> str:
    """README.md's API example: the first ```python block that starts with `from ocr import Detector`."""
    blocks = re.findall(r"```python\n(from ocr import Detector\n.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no ```python block starting with `from ocr import Detector`"
    return blocks[0]


def same_polygons(a, b) -> bool:
    return len(a.polygons) == len(b.polygons) and all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons))


@pytest.fixture(scope="module")
def text_mask(tmp_path_factory):
    """(checkpoint, its ONNX export, a folder of three synthetic receipt pages)."""
    root = tmp_path_factory.mktemp("detector")
    onnx_path = write_tiny_detector_onnx(root / "text_mask_graph.onnx", weight=np.full((1, 3, 3, 3), -0.5))
    network = f"models.network={{_target_:ocr.models.ppocr.PPOCRDetector,onnx_path:'{onnx_path}'}}"
    module = build_module(compose_config("train", [*tiny_run_overrides(root), "image_size=512", network]))
    checkpoint = root / "text_mask.ckpt"
    torch.save({"state_dict": module.state_dict(), "ocr_config": module.run_config, "epoch": 0, "global_step": 0}, checkpoint)
    exported, _ = Detector.from_checkpoint(checkpoint).export_onnx(root / "text_mask.onnx")
    pages = root / "pages"
    pages.mkdir()
    for seed in (3, 0, 5):  # written out of name order
        render_receipt(seed, degrade=False)[0].save(pages / f"page{seed}.png")
    (pages / "notes.txt").write_text("not an image")
    return checkpoint, exported, pages


@pytest.fixture(scope="module")
def detector(text_mask):
    return Detector.from_checkpoint(text_mask[0])


def test_predict_takes_arrays_pil_images_paths_lists_and_folders(detector, text_mask):
    _, _, pages = text_mask
    by_folder = detector.predict(pages)
    assert [r.name for r in by_folder] == ["page0.png", "page3.png", "page5.png"]  # images only, sorted
    assert all(len(r.polygons) >= 5 for r in by_folder) and all(len(r.polygons) == len(r.scores) for r in by_folder)
    first = by_folder[0]
    assert first.raw_size == Image.open(pages / "page0.png").size
    assert all(p.dtype == np.float64 and p.shape == (4, 2) for p in first.polygons)

    (by_path,) = detector.predict(str(pages / "page0.png"))
    array = np.asarray(Image.open(pages / "page0.png").convert("RGB"))
    (by_array,) = detector.predict(array)
    (by_pil,) = detector.predict(Image.open(pages / "page0.png"))
    assert by_path.name == "page0.png" and by_array.name is None and by_pil.name is None
    for result in (by_path, by_array, by_pil):
        assert same_polygons(result, first) and result.scores == first.scores

    by_list = detector.predict([pages / "page5.png", array, pages])  # in the order given, a folder expanded
    assert [r.name for r in by_list] == ["page5.png", None, "page0.png", "page3.png", "page5.png"]
    assert same_polygons(by_list[0], by_folder[2]) and same_polygons(by_list[1], first)
    # several pages at once: each still through the network at its own size
    for one, batched in zip(by_folder, detector.predict(pages, batch_size=3)):
        assert same_polygons(one, batched)
    # a grayscale array goes through the rules image files follow (gray -> RGB)
    gray = array.mean(axis=2).round().astype(np.uint8)
    assert len(detector.predict(gray)[0].polygons) >= 5
    with pytest.raises(TypeError, match="cannot detect text in a int"):
        detector.predict(3)


def test_polygons_are_in_the_stored_frame_of_an_exif_rotated_file(detector, text_mask, tmp_path):
    _, _, pages = text_mask
    upright = np.asarray(Image.open(pages / "page3.png").convert("RGB"))
    height, width = upright.shape[:2]
    # stored turned a quarter counter-clockwise, EXIF orientation 6: viewers (and read_image) turn it back
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(tmp_path / "rotated.png", exif=exif)
    (straight,) = detector.predict(upright)
    (rotated,) = detector.predict(tmp_path / "rotated.png")
    assert rotated.raw_size == (height, width) and len(rotated.polygons) == len(straight.polygons) >= 5
    for upright_polygon, stored_polygon in zip(straight.polygons, rotated.polygons):
        # the upright pixel (x, y) is the stored pixel (y, width - 1 - x)
        expected = np.stack([upright_polygon[:, 1], width - 1 - upright_polygon[:, 0]], axis=1)
        assert np.allclose(stored_polygon, expected)
    # one box in detail: the largest, a line of text, is tall in the stored frame where it is wide upright
    largest = max(range(len(straight.polygons)), key=lambda i: np.ptp(straight.polygons[i][:, 0]))
    span_upright, span_stored = np.ptp(straight.polygons[largest], axis=0), np.ptp(rotated.polygons[largest], axis=0)
    assert span_upright[0] > span_upright[1] and np.allclose(span_stored, span_upright[::-1])
    assert np.allclose(
        rotated.polygons[largest].min(axis=0),
        [straight.polygons[largest][:, 1].min(), width - 1 - straight.polygons[largest][:, 0].max()],
    )


def test_postprocessing_settings_change_per_call_only(detector, text_mask):
    _, _, pages = text_mask
    page = pages / "page0.png"
    default = detector.predict(page)[0]
    strict = detector.predict(page, box_thresh=0.99)[0]
    assert len(strict.polygons) < len(default.polygons)
    assert detector.postprocess.box_thresh == 0.6 and same_polygons(detector.predict(page)[0], default)  # unchanged
    grown = detector.predict(page, box_unclip_ratio=3.0)[0]
    assert np.mean([np.ptp(p, axis=0).prod() for p in grown.polygons]) > np.mean(
        [np.ptp(p, axis=0).prod() for p in default.polygons]
    )
    polygons = detector.predict(page, use_polygon=True)[0]
    assert polygons.polygons and all(p.shape[1] == 2 for p in polygons.polygons)
    with pytest.raises(TypeError, match=r"unknown post-processing setting\(s\) \['box_threshold'\]"):
        detector.predict(page, box_threshold=0.7)
    with pytest.raises(ValueError, match="split_thresh must lie between"):
        detector.predict(page, split_thresh=0.1)


def test_checkpoint_and_onnx_export_give_the_same_polygons(detector, text_mask, tmp_path):
    _, exported, pages = text_mask
    onnx = Detector.from_onnx(exported)
    assert onnx.resize == detector.resize and onnx.postprocess == detector.postprocess
    # (not thresh 0.5: the stand-in's probability is exactly 0.5 for some uint8 neighbourhoods, where
    # float rounding decides the side; a trained network's map has no such lattice)
    for settings in ({}, {"thresh": 0.45, "box_thresh": 0.7}, {"use_polygon": True}):
        expected, found = detector.predict(pages, **settings), onnx.predict(pages, **settings)
        assert sum(len(r.polygons) for r in expected) >= 15
        for a, b in zip(expected, found):
            assert a.name == b.name and same_polygons(a, b) and np.allclose(a.scores, b.scores, atol=1e-5)
    with pytest.raises(FileNotFoundError, match=r"sidecar"):
        shutil.copyfile(exported, tmp_path / "alone.onnx")
        Detector.from_onnx(tmp_path / "alone.onnx")


@pytest.mark.slow
def test_the_detector_writes_what_runners_predict_writes(detector, text_mask, tmp_path):
    checkpoint, _, pages = text_mask
    out = tmp_path / "predict"
    run_runner(
        "predict.py", f"checkpoint_path={checkpoint}", f"output_dir={out}", f"datasets.splits.predict.image_dir={pages}",
        "datasets.num_workers=0", "datasets.eval_batch_size=2", "trainer.precision=32-true",
    )  # fmt: skip
    written = read_submission_csv(out / "submissions" / "submission.csv")
    rows, _ = build_rows([{"name": r.name, "raw_size": r.raw_size, "polygons": r.polygons} for r in detector.predict(pages)])
    assert set(written) == set(rows) == {"page0.png", "page3.png", "page5.png"}
    for name, field in rows.items():
        expected = [np.asarray([float(v) for v in part.split()]).reshape(-1, 2) for part in field.split("|")] if field else []
        assert len(written[name]) == len(expected) >= 5
        assert all(np.array_equal(a, b) for a, b in zip(written[name], expected))


def test_a_wandb_reference_is_fetched_as_a_model_artifact(text_mask, monkeypatch, tmp_path):
    import ocr.tracking.artifacts as artifacts

    calls = []

    def fetch(reference, run, download_root):
        calls.append((reference, run, download_root))
        return text_mask[0], type("Artifact", (), {"qualified_name": "team/proj/model-abc123:v3"})()

    monkeypatch.setattr(artifacts, "fetch_model_artifact", fetch)
    monkeypatch.setenv("OCR_CACHE_DIR", str(tmp_path))
    fetched = Detector.from_checkpoint("wandb:team/proj/model-abc123:best")
    assert calls == [("wandb:team/proj/model-abc123:best", None, tmp_path / "artifacts")]
    assert fetched.info["artifact"].qualified_name == "team/proj/model-abc123:v3"


def test_the_readme_snippet_runs(text_mask, tmp_path, monkeypatch):
    checkpoint, exported, pages = text_mask
    folder = tmp_path / "outputs" / "sroie" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copyfile(checkpoint, folder / "epoch047-hmean0.9512.ckpt")
    shutil.copyfile(exported, folder / "epoch047-hmean0.9512.onnx")
    shutil.copyfile(f"{exported}.json", folder / "epoch047-hmean0.9512.onnx.json")
    (tmp_path / "receipts").mkdir()
    Image.open(pages / "page0.png").convert("RGB").save(tmp_path / "receipts" / "receipt.jpg", quality=95)
    shutil.copyfile(pages / "page3.png", tmp_path / "receipts" / "another.png")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(readme_snippet(), namespace)  # noqa: S102
    lines = printed.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["another.png", "receipt.jpg"]
    assert all(int(line.split()[1]) >= 5 and line.endswith("boxes") for line in lines)
    assert len(namespace["strict"]) == 1 and len(namespace["strict"][0].polygons) <= int(lines[1].split()[1])


def test_the_inference_speed_benchmark_runs(text_mask, capsys):
    from benchmarks import inference_speed

    checkpoint, _, pages = text_mask
    rows = inference_speed.main(["--quick", f"checkpoint_path={checkpoint}", f"images={pages}", "image_size=256", "pages=1"])
    names = [row["backend"] for row in rows]
    assert names[0] == "PyTorch (float32)" and "ONNX Runtime (float32)" in names
    assert all(row["seconds"] > 0 and 0 < row["network"] <= row["seconds"] for row in rows if row["network"] is not None)
    assert "| backend | s / image | network |" in capsys.readouterr().out


def test_an_onnx_export_is_scored_by_running_it(text_mask, tmp_path):
    """benchmarks/score_predictions.py predictions=<model.onnx>: the export runs on the images and is
    scored; annotations made of its own polygons score 1, one word removed from them lowers precision."""
    import json

    from benchmarks import score_predictions

    _, exported, pages = text_mask
    found = Detector.from_onnx(exported).predict(pages)
    words = {r.name: {"words": {f"{i:04d}": {"points": p.tolist()} for i, p in enumerate(r.polygons)}} for r in found}
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"images": words}))
    args = [f"predictions={exported}", f"images={pages}", f"annotations={truth}"]
    scores = score_predictions.main(args)
    assert scores["IoU hmean (pooled)"] == 1.0 and scores["seconds per image"] > 0
    first = found[0].name
    words[first]["words"].pop(next(iter(words[first]["words"])))
    truth.write_text(json.dumps({"images": words}))
    fewer = score_predictions.main(args)
    assert fewer["IoU recall (pooled)"] == 1.0 and fewer["IoU precision (pooled)"] < 1.0
