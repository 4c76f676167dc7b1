"""Small synthetic inputs for tests and examples: polygons, splits in the competition layout,
synthetic receipt batches, tiny ONNX stand-ins for PP-OCR's files, and the runners run as a user
runs them. Nothing here downloads anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ocr.data.dataset import collate_receipts
from ocr.data.synthetic import render_receipt
from ocr.data.targets import make_db_targets
from ocr.data.transforms import ResizeForEval

ROOT = Path(__file__).resolve().parents[1]


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_split(root: Path, split: str, images: dict[str, dict], size=(200, 120)) -> tuple[Path, Path]:
    """Write ``images`` ({name: {"words": ...}}) in the competition layout with blank JPEGs."""
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.fromarray(np.full((size[1], size[0], 3), 255, np.uint8)).save(image_dir / name)
    json_path = root / "jsons" / f"{split}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images}))
    return image_dir, json_path


def config_leaves(tree, prefix: str = "") -> dict:
    """A nested config (``OmegaConf.to_container``) as ``{"a.b.c": leaf}``: presets compared key by key."""
    if isinstance(tree, dict):
        return {
            key: value for k, v in tree.items() for key, value in config_leaves(v, f"{prefix}.{k}" if prefix else str(k)).items()
        }
    return {prefix: tree}


def tiny_run_overrides(root: Path) -> list[str]:
    """Hydra overrides for end-to-end runner tests: a 4/2/3-image synthetic set under ``root``,
    256-pixel pages, a narrow decoder, no DataLoader workers."""
    return [
        f"datasets.synthetic.root={root / 'data'}",
        "datasets.synthetic.num_train=4",
        "datasets.synthetic.num_val=2",
        "datasets.synthetic.num_test=3",
        "datasets.num_workers=0",
        "datasets.batch_size=2",
        "datasets.eval_batch_size=2",
        "image_size=256",
        "models.decoder.inner_channels=64",
    ]


def write_tiny_detector_onnx(
    path: Path, weight: np.ndarray | None = None, final_sigmoid: bool = True, batch_norm: bool = False
) -> Path:
    """A stand-in for PP-OCR's exported detector: one 3x3 convolution (3 -> 1 channels, any
    image size), optionally a batch norm, and a Sigmoid, its weights stored as Constant nodes as
    Paddle's exporter does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (1, 3, 3, 3)).astype(np.float32) if weight is None else weight.astype(np.float32)
    bias = np.array([-0.5], np.float32)
    nodes = [
        helper.make_node("Constant", [], ["conv.weight"], value=numpy_helper.from_array(weight)),
        helper.make_node("Constant", [], ["conv.bias"], value=numpy_helper.from_array(bias)),
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["logits"], pads=[1, 1, 1, 1]),
    ]
    if batch_norm:  # scale 2, shift 0.1, running mean 0, running variance 1
        for name, value in (("bn.scale", 2.0), ("bn.shift", 0.1), ("bn.mean", 0.0), ("bn.var", 1.0)):
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array([value], np.float32))))
        nodes[2].output[0] = "conv_out"
        nodes.append(
            helper.make_node("BatchNormalization", ["conv_out", "bn.scale", "bn.shift", "bn.mean", "bn.var"], ["logits"])
        )
    if final_sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["probabilities"]))
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("probabilities" if final_sigmoid else "logits", TensorProto.FLOAT, ["n", 1, "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_tiny_backbone_detector_onnx(
    path: Path, widths: tuple[int, ...] = (4, 6, 8, 10), paddle_blocks: bool = False
) -> tuple[Path, dict[str, np.ndarray]]:
    """A stand-in for PP-OCR's exported detector with a backbone: four strided 3x3 convolutions
    (strides 4, 2, 2, 2, so features at 4, 8, 16 and 32, named ``f4`` ... ``f32``), then a head
    convolution on ``f4`` and a Sigmoid; weights as Constant nodes. Returns the path and weights.

    ``paddle_blocks``: each convolution is followed as in PP-OCR's PPLCNetV3 export: a scalar affine
    (``a * x + b``), hardswish spelled ``x * clip(x + 3, 0, 6) / 6``, another scalar affine and a 1x1
    convolution (which gives the feature): one of each of ``simplify_for_inference``'s rewrites."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, previous, channels = [], {}, "x", 3

    def constant(name: str, value) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32))))
        return name

    for level, (stride, width) in enumerate(zip((4, 2, 2, 2), widths)):
        name = f"f{4 * 2**level}"
        weights[name] = rng.normal(0, 0.3, (width, channels, 3, 3)).astype(np.float32)
        constant(f"{name}.w", weights[name])
        conv_out = f"{name}.conv" if paddle_blocks else name
        nodes.append(helper.make_node("Conv", [previous, f"{name}.w"], [conv_out], strides=[stride, stride], pads=[1, 1, 1, 1]))
        if paddle_blocks:
            a1, b1, a2, b2 = (float(v) for v in rng.uniform(0.5, 1.5, 2).tolist() + rng.uniform(-0.5, 0.5, 2).tolist())
            p = f"{name}."
            nodes += [
                helper.make_node("Mul", [constant(p + "a1", [a1]), conv_out], [p + "scaled"]),
                helper.make_node("Add", [p + "scaled", constant(p + "b1", [b1])], [p + "affine"]),
                helper.make_node("Add", [p + "affine", constant(p + "three", 3.0)], [p + "shifted"]),
                helper.make_node("Clip", [p + "shifted", constant(p + "zero", 0.0), constant(p + "six", 6.0)], [p + "clipped"]),
                helper.make_node("Mul", [p + "affine", p + "clipped"], [p + "product"]),
                helper.make_node("Div", [p + "product", constant(p + "six_", 6.0)], [p + "hardswish"]),
                helper.make_node("Mul", [constant(p + "a2", [a2]), p + "hardswish"], [p + "scaled2"]),
                helper.make_node("Add", [p + "scaled2", constant(p + "b2", [b2])], [p + "affine2"]),
            ]
            weights[p + "pointwise"] = rng.normal(0, 0.3, (width, width, 1, 1)).astype(np.float32)
            nodes.append(helper.make_node("Conv", [p + "affine2", constant(p + "pw", weights[p + "pointwise"])], [name]))
        previous, channels = name, width
    weights["head"] = rng.normal(0, 0.3, (1, widths[0], 1, 1)).astype(np.float32)
    nodes.append(helper.make_node("Constant", [], ["head.w"], value=numpy_helper.from_array(weights["head"])))
    nodes.append(helper.make_node("Conv", ["f4", "head.w"], ["logits"]))
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["probabilities"]))
    graph = helper.make_graph(
        nodes,
        "tiny_backbone_detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 1, "h4", "w4"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path, weights


def receipt_item(seed: int, size: int) -> dict:
    """A synthetic receipt as the dataset gives it: long side ``size``, with its targets."""
    image, words = render_receipt(seed, degrade=False)
    polygons = [np.asarray(w["points"], float) for w in words]
    image, polygons, scale = ResizeForEval(size)(np.asarray(image), polygons)
    item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
    item.update({k: torch.from_numpy(v) for k, v in make_db_targets(image.shape[:2], polygons).items()})
    for key, value in (("name", f"r{seed}"), ("raw_size", (0, 0)), ("orientation", 1), ("scale", scale)):
        item[key] = value
    item.update(gt_polygons=polygons, gt_ignore=np.zeros(len(polygons), bool), gt_texts=[None] * len(polygons))
    return item


def two_receipts(size=512):
    return collate_receipts([receipt_item(seed, size) for seed in (1, 2)])


def run_runner(script: str, *overrides: str) -> subprocess.CompletedProcess:
    """``python runners/<script> <overrides>`` from the checkout's root, offline; fails the test
    with the output's end when it exits non-zero."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "runners" / script), *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def text_page(width: int = 96, height: int = 64, colour: bool = False) -> np.ndarray:
    """A small white (H, W, 3) uint8 page with three black words and a mid-gray one; ``colour``
    adds a red word (for readers that could swap channels). Cheap to detect on: ``1 - gray/255``."""
    page = np.full((height, width, 3), 255, np.uint8)
    for x0, y0, x1, y1 in ((6, 6, 40, 14), (50, 6, 88, 14), (6, 24, 60, 32)):
        page[y0:y1, x0:x1] = 0
    page[42:50, 6:40] = 128
    if colour:
        page[42:50, 50:88] = (200, 40, 30)
    return page


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` and that holds no pixels: opening it reads
    the size only (a stand-in for a huge scan, or a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path
