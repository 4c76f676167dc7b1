"""ONNX export (ocr/export.py, runners/export.py): a tiny trained checkpoint exported by the runner,
ONNX Runtime against PyTorch at several sizes and on the synthetic set's polygons, every encoder
family (timm, DBNet++, PP-OCR's backbone and whole detector, with stand-ins), TTA refused, atomic
writes, and the W&B artifact (with a fake run)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ocr.config import compose_config
from ocr.data.synthetic import render_receipt
from ocr.detector import Detector
from ocr.export import ExportError, default_output, log_onnx_artifact, sidecar_path
from ocr.factory import build_module
from ocr.testing import run_runner, tiny_run_overrides, write_tiny_detector_onnx

IMAGENET_MEAN = [0.485, 0.456, 0.406]


def save_untrained_checkpoint(path: Path, overrides: list[str], **extra) -> Path:
    """The network of ``overrides`` as a checkpoint of runners/train.py holds it (weights + resolved
    run config), untrained."""
    module = build_module(compose_config("train", overrides))
    torch.save({"state_dict": module.state_dict(), "ocr_config": module.run_config, "epoch": 0, "global_step": 0, **extra}, path)
    return path


def same_polygons(a, b) -> bool:
    return len(a.polygons) == len(b.polygons) and all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of runners/train.py (ResNet18 + FPN 64, two steps on the tiny synthetic set) and
    its export by runners/export.py to the default place."""
    root = tmp_path_factory.mktemp("export")
    run_runner(
        "train.py", "exp_name=fit", f"output_dir={root / 'fit'}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.precision=32-true", "test_after_fit=false", "predict_after_fit=false", *tiny_run_overrides(root),
    )  # fmt: skip
    checkpoint = next((root / "fit" / "checkpoints").glob("epoch*.ckpt"))
    run_runner("export.py", f"checkpoint_path={checkpoint}", f"output_dir={root / 'export'}")
    return root, checkpoint


@pytest.fixture(scope="module")
def trained_text_mask(tmp_path_factory):
    """A checkpoint of runners/train.py whose map has clear text regions from the first step: PP-OCR's
    detector route (models.network) with a stand-in graph that marks dark pixels (one 3x3 convolution
    summing the pixels, negated), trained two steps at long side 512. Many polygons per page."""
    root = tmp_path_factory.mktemp("text_mask")
    onnx_path = write_tiny_detector_onnx(root / "text_mask.onnx", weight=np.full((1, 3, 3, 3), -0.5))
    run_runner(
        "train.py", "exp_name=fit", f"output_dir={root / 'fit'}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.precision=32-true", "test_after_fit=false", "predict_after_fit=false", *tiny_run_overrides(root),
        "image_size=512", f"models.network={{_target_:ocr.models.ppocr.PPOCRDetector,onnx_path:'{onnx_path}'}}",
    )  # fmt: skip
    return root, next((root / "fit" / "checkpoints").glob("epoch*.ckpt"))


@pytest.mark.slow
def test_the_runner_writes_the_model_and_its_sidecar_next_to_the_checkpoint(trained):
    import onnx

    root, checkpoint = trained
    onnx_path = default_output(checkpoint)
    assert onnx_path == checkpoint.with_suffix(".onnx") and onnx_path.is_file()
    notes = json.loads(sidecar_path(onnx_path).read_text())
    # everything inference needs: input, sizing rule, post-processing, provenance
    assert notes["input"]["dtype"] == "uint8" and notes["input"]["channel_order"] == "RGB"
    assert notes["input"]["mean"] == IMAGENET_MEAN and notes["output"]["activation"] == "sigmoid"
    assert notes["resize"] == {"_target_": "ocr.data.transforms.ResizeForEval", "image_size": 256, "mode": "long_side",
                               "long_side_cap": None, "multiple": 32}  # fmt: skip
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)
    expected_postprocess = stored["ocr_config"]["models"]["postprocess"]
    assert notes["postprocess"] == expected_postprocess
    assert notes["tta_scales"] is None and notes["opset"] == 18
    assert notes["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert notes["checkpoint"]["path"] == str(checkpoint.resolve()) and notes["checkpoint"]["global_step"] == 2
    assert notes["architecture"]["decoder"]["inner_channels"] == 64 and notes["wandb"] is None
    assert notes["parity"]["max_abs_diff"] <= 1e-4
    # dynamic batch, height and width; uint8 in
    model = onnx.load(str(onnx_path))
    (image,) = model.graph.input
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert not [p.name for p in checkpoint.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_onnx_runtime_matches_pytorch_at_three_sizes(trained):
    root, checkpoint = trained
    pytorch = Detector.from_checkpoint(checkpoint)
    onnx = Detector.from_onnx(default_output(checkpoint))
    pages = [
        cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((root / "data" / "images" / "test").glob("*.jpg"))
    ]
    for batch, height, width in ((1, 256, 160), (2, 320, 224), (1, 448, 320)):
        images = np.stack([cv2.resize(page, (width, height), interpolation=cv2.INTER_AREA) for page in pages[:batch]])
        images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        expected, found = pytorch.network(images), onnx.network(images)
        assert found.shape == expected.shape == (batch, height, width)
        assert np.abs(found - expected).max() <= 1e-4


@pytest.mark.slow
def test_checkpoint_and_export_find_the_same_polygons_on_the_synthetic_set(trained):
    root, checkpoint = trained
    pytorch = Detector.from_checkpoint(checkpoint)
    onnx = Detector.from_onnx(default_output(checkpoint))
    # (two training steps draw no words yet: the polygons of many regions are compared in the next test)
    for split in ("val", "test"):
        folder = root / "data" / "images" / split
        expected, found = pytorch.predict(folder), onnx.predict(folder)
        assert [r.name for r in found] == sorted(p.name for p in folder.glob("*.jpg"))
        for a, b in zip(expected, found):
            assert same_polygons(a, b) and np.allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.slow
def test_a_trained_map_with_text_regions_gives_the_same_polygons_after_export(trained_text_mask):
    root, checkpoint = trained_text_mask
    pytorch = Detector.from_checkpoint(checkpoint)
    onnx_path, _ = pytorch.export_onnx(checkpoint.with_suffix(".onnx"))
    onnx = Detector.from_onnx(onnx_path)
    found_any = 0
    for split in ("val", "test"):
        expected, found = pytorch.predict(root / "data" / "images" / split), onnx.predict(root / "data" / "images" / split)
        assert len(expected) == len(found) > 0
        for a, b in zip(expected, found):
            assert same_polygons(a, b) and np.allclose(a.scores, b.scores, atol=1e-5)
            found_any += len(a.polygons)
    assert found_any >= 10  # text regions (30 on these pages), not one page-sized region


@pytest.mark.parametrize(
    "family",
    ["dbnet_plus_plus_with_page_context", "ppocr_backbone", "two_ppocr_backbones", "ppocr_detector"],
)
def test_every_encoder_family_exports_with_parity(family, tmp_path, paddle_backbone_onnx, tiny_detector_onnx):
    extra = {
        "dbnet_plus_plus_with_page_context": ["models.decoder.use_asf=true", "models.decoder.context_layers=1"],
        # with PPLCNetV3's exported patterns: the export simplifies them, and is checked against the original
        "ppocr_backbone": ["preset/models/encoder@models.encoder=ppocr_backbone", f"models.encoder.onnx_path={paddle_backbone_onnx}",
                           "models.encoder.feature_names=[f4,f8,f16,f32]"],
        # side by side (ocr.models.encoder.ConcatEncoder): their features concatenated at each stride
        "two_ppocr_backbones": ["preset/models/encoder@models.encoder=ppocr_v4_v6_backbones"] + [
            f"models.encoder.encoders.{i}.{key}" for i in (0, 1) for key in (f"onnx_path={paddle_backbone_onnx}", "feature_names=[f4,f8,f16,f32]")],
        "ppocr_detector": [f"models.network={{_target_:ocr.models.ppocr.PPOCRDetector,onnx_path:'{tiny_detector_onnx}'}}"],
    }[family]  # fmt: skip
    checkpoint = save_untrained_checkpoint(tmp_path / f"{family}.ckpt", [*tiny_run_overrides(tmp_path), *extra])
    pytorch = Detector.from_checkpoint(checkpoint)
    onnx_path, sidecar = pytorch.export_onnx(tmp_path / f"{family}.onnx")  # checks ONNX Runtime at three shapes itself
    notes = json.loads(sidecar.read_text())
    assert notes["parity"]["max_abs_diff"] <= 1e-4
    if "ppocr" in family:  # the PP-OCR network's normalisation, in the graph with its RGB -> BGR flip
        assert notes["input"]["mean"] == notes["input"]["std"] == [0.5, 0.5, 0.5]
    if family.endswith("backbones") or family == "ppocr_backbone":  # exported simplified: hardswish as one operation, no clip left
        import onnx as onnx_format

        operations = {node.op_type for node in onnx_format.load(str(onnx_path)).graph.node}
        assert "HardSwish" in operations and "Clip" not in operations, operations
    onnx = Detector.from_onnx(onnx_path)
    page = np.asarray(render_receipt(3)[0])
    assert np.abs(pytorch.probabilities(page) - onnx.probabilities(page)).max() <= 1e-4
    assert same_polygons(pytorch.predict(page)[0], onnx.predict(page)[0])


def test_test_time_augmentation_is_refused_and_a_failed_export_leaves_no_file(tmp_path, tiny_detector_onnx, monkeypatch):
    network = f"models.network={{_target_:ocr.models.ppocr.PPOCRDetector,onnx_path:'{tiny_detector_onnx}'}}"
    tta = save_untrained_checkpoint(tmp_path / "tta.ckpt", [network, "lightning_module.tta_scales=[1.0,1.5]"])
    with pytest.raises(ExportError, match=r"tta_scales=\[1.0, 1.5\].*lightning_module.tta_scales=null"):
        Detector.from_checkpoint(tta).export_onnx(tmp_path / "tta.onnx")
    assert list(tmp_path.glob("*.onnx*")) == []

    # ONNX Runtime disagreeing with PyTorch: an error, and neither file (nor a temporary one) is left
    import ocr.export

    monkeypatch.setattr(ocr.export, "compare_with_onnxruntime", lambda *args, **kwargs: {"shapes": [], "max_abs_diff": 0.5})
    plain = Detector.from_checkpoint(save_untrained_checkpoint(tmp_path / "plain.ckpt", [network]))
    with pytest.raises(ExportError, match="disagree by 5.00e-01"):
        plain.export_onnx(tmp_path / "plain.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.ckpt", "tta.ckpt"]


class FakeRun:
    """Records log_artifact calls, as W&B's run would upload them."""

    def __init__(self):
        self.settings = type("S", (), {"_offline": False})()
        self.logged = []

    def log_artifact(self, artifact, aliases=None):
        self.logged.append((artifact, aliases))
        return artifact


def test_the_wandb_artifact_names_the_checkpoints_artifact(tmp_path, tiny_detector_onnx):
    network = f"models.network={{_target_:ocr.models.ppocr.PPOCRDetector,onnx_path:'{tiny_detector_onnx}'}}"
    tracking = {"metrics": {"val/hmean": 0.75}, "wandb": {"run_id": "abc123", "project": "proj", "entity": "team",
                                                          "run_path": "team/proj/abc123", "artifact": "model-abc123"}}  # fmt: skip
    checkpoint = save_untrained_checkpoint(tmp_path / "best.ckpt", [network], tracking=tracking)
    onnx_path, sidecar = Detector.from_checkpoint(checkpoint).export_onnx(tmp_path / "best.onnx")
    notes = json.loads(sidecar.read_text())
    assert notes["wandb"] == {"model_artifact": "model-abc123", "source_run": "team/proj/abc123", "run_id": "abc123",
                              "project": "proj", "entity": "team"}  # fmt: skip
    assert notes["checkpoint"]["metrics"] == {"val/hmean": 0.75}
    run = FakeRun()
    artifact = log_onnx_artifact(run, onnx_path, sidecar, checkpoint)
    assert run.logged == [(artifact, ["latest", "onnx"])]
    assert artifact.name.startswith("model-abc123-onnx") and artifact.type == "model"
    assert {"model.onnx", "model.onnx.json"} <= set(artifact.manifest.entries)
    assert artifact.metadata["checkpoint_artifact"] == "model-abc123" and artifact.metadata["source_run"] == "team/proj/abc123"
    assert artifact.metadata["checkpoint_sha256"] == notes["checkpoint"]["sha256"] and artifact.metadata["val/hmean"] == 0.75
    assert log_onnx_artifact(None, onnx_path, sidecar, checkpoint) is None
    # a quantised copy (its sidecar has a quantization block) is an artifact of its own
    int8_path, int8_sidecar = tmp_path / "best.int8.onnx", tmp_path / "best.int8.onnx.json"
    int8_path.write_bytes(onnx_path.read_bytes())
    int8_notes = {**notes, "model_file": int8_path.name,
                  "quantization": {"method": "int8", "from_model": "best.onnx", "calibration_images": ["a.jpg", "b.jpg"]}}  # fmt: skip
    int8_sidecar.write_text(json.dumps(int8_notes))
    int8 = log_onnx_artifact(run, int8_path, int8_sidecar, checkpoint)
    assert run.logged[-1] == (int8, ["latest", "onnx-int8"]) and int8.name.startswith("model-abc123-onnx-int8")
    assert int8.metadata["quantized_from"] == "best.onnx" and int8.metadata["calibration_count"] == 2
    assert int8.metadata["checkpoint_artifact"] == "model-abc123"


def test_int8_quantisation_writes_a_calibrated_model_close_to_the_float_one(trained, tmp_path):
    """quantize=int8 writes <stem>.int8.onnx and its sidecar (calibration recorded) beside the float
    export; its maps stay close to the float model's; without calibration images it stops at once."""
    root, checkpoint = trained
    pages = tmp_path / "pages"
    pages.mkdir()
    for seed in (7, 8):
        render_receipt(seed)[0].save(pages / f"r{seed}.jpg")
    output = tmp_path / "detector.onnx"
    run_runner("export.py", f"checkpoint_path={checkpoint}", f"output={output}", "quantize=int8",
               f"calibration_images={pages}", "calibration_count=2", f"output_dir={tmp_path / 'run'}")  # fmt: skip
    quantised = tmp_path / "detector.int8.onnx"
    notes = json.loads(sidecar_path(quantised).read_text())
    assert notes["model_file"] == "detector.int8.onnx" and notes["quantization"]["calibration_images"] == ["r7.jpg", "r8.jpg"]
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob("*prepared*"))
    page = np.asarray(render_receipt(3)[0])
    float_map = Detector.from_onnx(output).probabilities(page)
    int8_map = Detector.from_onnx(quantised).probabilities(page)
    assert int8_map.shape == float_map.shape and np.abs(int8_map - float_map).mean() < 0.02
    assert quantised.stat().st_size < output.stat().st_size / 2  # int8 weights
    from ocr.export import export

    for bad in ([], [f"calibration_images={tmp_path / 'absent'}"]):
        cfg = compose_config("export", [f"checkpoint_path={checkpoint}", "quantize=int8", f"output={tmp_path / 'other.onnx'}", *bad])
        with pytest.raises(ExportError, match="quantize=int8 needs calibration_images="):
            export(cfg)  # before any work
        assert not (tmp_path / "other.onnx").exists()
