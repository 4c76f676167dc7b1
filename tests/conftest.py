"""Fixtures shared by the tests. No network: downloads fail fast, W&B is never reached."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from ocr.testing import tiny_run_overrides, write_tiny_backbone_detector_onnx, write_tiny_detector_onnx  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder for tiny end-to-end runs and the overrides that make them tiny."""
    root = tmp_path_factory.mktemp("runs")
    return root, tiny_run_overrides(root)


@pytest.fixture(scope="module")
def tiny_detector_onnx(tmp_path_factory):
    """A stand-in for PP-OCR's detector ONNX file."""
    return write_tiny_detector_onnx(tmp_path_factory.mktemp("onnx") / "detector.onnx")


@pytest.fixture(scope="module")
def tiny_backbone_onnx(tmp_path_factory):
    """A stand-in for PP-OCR's detector ONNX file with a four-stage backbone (features f4-f32)."""
    return write_tiny_backbone_detector_onnx(tmp_path_factory.mktemp("onnx") / "backbone.onnx")[0]


@pytest.fixture(scope="session")
def paddle_backbone_onnx(tmp_path_factory):
    """The same with PPLCNetV3's exported patterns around each convolution (scalar affines, hardswish
    spelled out, a 1x1 convolution): what ``simplify_for_inference`` rewrites."""
    return write_tiny_backbone_detector_onnx(tmp_path_factory.mktemp("onnx") / "paddle.onnx", paddle_blocks=True)[0]
