"""Text detection from Python, without Hydra: ``from ocr import Detector``.

    detector = Detector.from_checkpoint("outputs/x/checkpoints/best.ckpt")   # PyTorch
    detector = Detector.from_onnx("outputs/x/checkpoints/best.onnx")         # ONNX Runtime (runners/export.py)
    for result in detector.predict("receipts/"):                             # a folder, path, array, PIL image or a list
        print(result.name, len(result.polygons), result.scores[:3])

Every step is the one validation, test and ``runners/predict.py`` run: ``read_image`` (RGB, EXIF
orientation), :class:`~ocr.data.transforms.ResizeForEval` (the checkpoint's sizing rule), padding to
multiples of 32 (``collate_receipts``), each image through the network at its own padded size
(``size_groups``), the module's normalisation (in the ONNX graph for an export), and
:class:`~ocr.models.postprocess.DBPostProcessor` (``decode_probabilities``). Polygons come back in
each image's own stored pixel frame, as the submission writes them; the checkpoint and its ONNX
export give the same polygons.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ocr.data.annotations import IMAGE_SUFFIXES, list_images
from ocr.data.dataset import collate_receipts
from ocr.data.images import exif_orientation, pil_to_rgb8, read_image, upright
from ocr.data.transforms import ResizeForEval
from ocr.lightning_module import DBNetModule, decode_probabilities, probability_maps, size_groups
from ocr.models.postprocess import DBPostProcessor, Detections

log = logging.getLogger(__name__)


@dataclass
class Prediction(Detections):
    """The detections of one image: ``polygons`` ((N, 2) float64 arrays in the image's own stored
    pixel frame: for a file, before its EXIF rotation, as the submission writes them) and their
    ``scores``; ``name`` is the file name for a path (None for an array or PIL image) and
    ``raw_size`` the image's stored (width, height)."""

    name: str | None = None
    raw_size: tuple[int, int] | None = None


def default_download_root() -> Path:
    """Where W&B model artifacts are downloaded: ``$OCR_CACHE_DIR`` or ``~/.cache/receipt-text-detection``."""
    return Path(os.environ.get("OCR_CACHE_DIR") or Path("~/.cache/receipt-text-detection").expanduser()) / "artifacts"


def build_setting(spec: dict[str, Any]) -> Any:
    """The object a config block with ``_target_`` describes (a moved class at its current place); for
    a dataclass (``DBPostProcessor``, ``ResizeForEval``), keys it no longer has are dropped with a
    warning, as the runners ignore a checkpoint's settings that this version no longer has."""
    from hydra.utils import get_class, instantiate

    from ocr.checkpoints import with_current_targets

    spec = with_current_targets(dict(spec))
    cls = get_class(spec["_target_"])
    if dataclasses.is_dataclass(cls):
        known = {field.name for field in dataclasses.fields(cls)} | {"_target_"}
        dropped = sorted(set(spec) - known)
        if dropped:
            log.warning("%s: ignoring settings this version no longer has: %s", spec["_target_"], dropped)
        spec = {key: value for key, value in spec.items() if key in known}
    return instantiate(spec)


def inference_module(run_config: dict[str, Any]) -> DBNetModule:
    """The LightningModule of a checkpoint's resolved run config (``checkpoint["ocr_config"]``) for
    inference: its network (``ocr.checkpoints.adopt_architecture`` + ``ocr.factory.build_model``,
    untrained: load the weights next), post-processor and TTA scales; no loss, optimizer or metrics,
    and no Hydra composition. A PP-OCR network's file is fetched when missing, as the runners do."""
    from omegaconf import OmegaConf

    from ocr.checkpoints import adopt_architecture, with_current_targets
    from ocr.factory import build_model
    from ocr.pretrained import fetch_missing_files

    run_config = with_current_targets(run_config)
    cfg = OmegaConf.create({"models": {}})
    adopt_architecture(cfg, run_config)  # a timm encoder without its ImageNet weights: the checkpoint's follow
    fetch_missing_files(cfg)
    models = run_config.get("models") or {}
    postprocess = build_setting(models["postprocess"]) if models.get("postprocess") else DBPostProcessor()
    tta_scales = (run_config.get("lightning_module") or {}).get("tta_scales")
    return DBNetModule(model=build_model(cfg.models), loss=None, postprocess=postprocess, optimizer=None, tta_scales=tta_scales)


def eval_resize(run_config: dict[str, Any]) -> ResizeForEval:
    """The sizing rule a checkpoint was validated with (``datasets.eval_resize``)."""
    spec = ((run_config.get("datasets") or {}).get("eval_resize")) or {"image_size": run_config.get("image_size", 640)}
    return build_setting({"_target_": "ocr.data.transforms.ResizeForEval", **spec})


def upright_pil(image: Image.Image) -> tuple[np.ndarray, int, tuple[int, int]]:
    """An in-memory PIL image as ``read_image`` gives a file (``ocr.data.images``' rules: modes to
    8-bit RGB, transparency on white, EXIF orientation applied): the upright RGB uint8 array, the
    orientation and the stored (width, height)."""
    orientation = exif_orientation(image)
    return upright(np.ascontiguousarray(pil_to_rgb8(image)), orientation), orientation, image.size


def rgb_array(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array as it is; any other array PIL understands (gray (H, W) of any
    depth, gray + alpha (H, W, 2), RGBA (H, W, 4)) converted by the rules image files follow."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    try:
        converted = Image.fromarray(image)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"cannot read an image array of shape {image.shape} and dtype {image.dtype}: expected (H, W, 3) uint8 RGB "
            f"(or gray (H, W), RGBA (H, W, 4)) ({error})"
        ) from None
    return np.ascontiguousarray(pil_to_rgb8(converted))


def expand_inputs(images: Any) -> list[Any]:
    """``images`` as a flat list of single images: a folder becomes its image files (sorted by name;
    suffixes as ``ocr.data.annotations.IMAGE_SUFFIXES``), a list or tuple is expanded item by item."""
    if isinstance(images, (np.ndarray, Image.Image)):
        return [images]
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            files = [path / name for name in list_images(path)]
            if not files:
                log.warning("%s holds no image file (%s)", path, ", ".join(IMAGE_SUFFIXES))
            return files
        return [path]
    if isinstance(images, (list, tuple)):
        return [single for item in images for single in expand_inputs(item)]
    raise TypeError(
        f"cannot detect text in a {type(images).__name__}: give a path, a folder, a numpy RGB array, a PIL image or a list"
    )


def load_input(image: Any) -> tuple[np.ndarray, int, tuple[int, int], str | None]:
    """(upright RGB uint8 array, EXIF orientation, stored (width, height), name) of one input: a
    file through ``read_image``, a PIL image as its file would be, an array as the pixels it holds."""
    if isinstance(image, Image.Image):
        return (*upright_pil(image), None)
    if isinstance(image, np.ndarray):
        array = rgb_array(image)
        return array, 1, (array.shape[1], array.shape[0]), None
    path = Path(image)
    return (*read_image(path), path.name)


def network_item(
    image: np.ndarray, orientation: int, raw_size: tuple[int, int], name: str | None, resize: ResizeForEval
) -> dict[str, Any]:
    """One upright image as ``ReceiptDataset`` gives an unannotated one for evaluation: resized by
    ``resize``, CHW uint8, with what maps its detections back to the stored frame."""
    resized, _, scale = resize(image, [])
    return {
        "image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
        "name": name,
        "raw_size": tuple(raw_size),
        "orientation": orientation,
        "scale": scale,
        "gt_polygons": [],
        "gt_ignore": np.zeros(0, dtype=bool),
        "gt_texts": [],
    }


PRECISIONS = ("32", "bf16")


class TorchNetwork:
    """Probability maps from the LightningModule (``prob_logits``: the network, with TTA when the
    checkpoint validated with it), gradients off. ``precision="32"``: float32 (what the ONNX export
    computes); ``"bf16"``: bf16 autocast and channels_last, as the runners infer on GPUs and on CPUs
    with hardware bf16 (AMX / AVX512-BF16), where it is the fastest path (probabilities within ~1e-2)."""

    kind = "pytorch"

    def __init__(self, module: DBNetModule, device: str | torch.device = "cpu", precision: str = "32"):
        precision = str(precision)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device, self.precision = torch.device(device), precision
        self.module = module.eval().to(self.device)
        if precision == "bf16":
            self.module.channels_last = True  # normalize() hands the network channels_last images
            self.module.model.to(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), autocast:
            return probability_maps(self.module.prob_logits(images.to(self.device)))


def read_export_notes(path: str | os.PathLike, sidecar: str | os.PathLike | None = None) -> dict[str, Any]:
    """The JSON sidecar of the export at ``path`` (by default ``<path>.json``); an error naming the
    file when the model or its sidecar is missing."""
    from ocr.export import sidecar_path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found; write one with `python runners/export.py checkpoint_path=...`")
    sidecar = Path(sidecar) if sidecar else sidecar_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar}: the export's JSON sidecar (sizing and post-processing) not found next to {path}")
    return json.loads(sidecar.read_text(encoding="utf-8"))


class OnnxNetwork:
    """Probability maps from an exported graph (uint8 in, sigmoid probabilities out) in ONNX Runtime."""

    kind = "onnxruntime"

    def __init__(self, session: Any):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        (probabilities,) = self.session.run(None, {self.input_name: images.numpy()})
        return probabilities[:, 0]


class Detector:
    """A trained text detector: a network (PyTorch or ONNX Runtime), the sizing rule it was
    validated with (``resize``) and its post-processor (``postprocess``, overridable per call).
    Build one with :meth:`from_checkpoint` or :meth:`from_onnx`."""

    def __init__(self, network: TorchNetwork | OnnxNetwork, resize: ResizeForEval, postprocess: DBPostProcessor,
                 info: dict[str, Any] | None = None, batch_size: int = 1):  # fmt: skip
        self.network, self.resize, self.postprocess = network, resize, postprocess
        self.info = dict(info or {})
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        source = self.info.get("onnx_path") or self.info.get("checkpoint_path")
        return f"Detector({self.network.kind}, {source}, resize={self.resize}, postprocess={self.postprocess})"

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        precision: str = "32",
        batch_size: int = 1,
        download_root: str | os.PathLike | None = None,
    ) -> "Detector":
        """A checkpoint of ``runners/train.py`` (a ``.ckpt`` file, or a W&B model reference
        ``wandb:<entity>/<project>/model-<run id>:<alias>``, downloaded under ``download_root``),
        inferring as it was validated: its network, ``datasets.eval_resize``, ``models.postprocess``
        and ``lightning_module.tta_scales``. Runs in PyTorch on ``device``, in float32 or with
        ``precision="bf16"`` (see :class:`TorchNetwork`)."""
        from ocr.checkpoints import CheckpointError, read_checkpoint
        from ocr.tracking.artifacts import fetch_model_artifact, is_artifact_reference

        artifact = None
        if is_artifact_reference(path):
            path, artifact = fetch_model_artifact(str(path), None, Path(download_root or default_download_root()))
        checkpoint = read_checkpoint(path)
        run_config = checkpoint.get("ocr_config")
        if not run_config:
            raise CheckpointError(f"{path}: the checkpoint carries no run config (ocr_config): not written by runners/train.py")
        module = inference_module(run_config)
        module.load_state_dict(checkpoint["state_dict"], strict=False)  # no loss or metrics to restore
        missing = [k for k in module.model.state_dict() if f"model.{k}" not in checkpoint["state_dict"]]
        if missing:
            raise CheckpointError(f"{path}: the checkpoint lacks weights of its own network: {missing[:5]}")
        # what an export's sidecar says about the weights (not the weights: the module holds them)
        kept = {key: checkpoint.get(key) for key in ("epoch", "global_step", "tracking", "ocr_config")}
        info = {"checkpoint_path": str(path), "checkpoint": kept, "artifact": artifact}
        return cls(TorchNetwork(module, device, precision), eval_resize(run_config), module.postprocess, info, batch_size)

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike, sidecar: str | os.PathLike | None = None, threads: int | None = None, batch_size: int = 1
    ) -> "Detector":
        """A model written by ``runners/export.py`` and its sidecar (by default ``<path>.json``) in
        ONNX Runtime on the CPU (every graph optimisation; ``threads``: intra-op threads, by default
        the physical cores)."""
        from ocr.export import onnx_session

        path = Path(path)
        notes = read_export_notes(path, sidecar)
        resize, postprocess = build_setting(notes["resize"]), build_setting(notes["postprocess"])
        info = {"onnx_path": str(path), "sidecar": notes, "checkpoint_path": (notes.get("checkpoint") or {}).get("path")}
        return cls(OnnxNetwork(onnx_session(path, threads)), resize, postprocess, info, batch_size)

    # -- inference ---------------------------------------------------------------------------------
    @property
    def module(self) -> DBNetModule | None:
        """The LightningModule of a PyTorch detector (None for ONNX)."""
        return getattr(self.network, "module", None)

    def with_postprocess(self, **overrides: Any) -> DBPostProcessor:
        """The post-processor with ``overrides`` (``thresh=0.4, box_thresh=0.7``...) replaced."""
        if not overrides:
            return self.postprocess
        known = {f.name for f in dataclasses.fields(self.postprocess)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown post-processing setting(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self.postprocess, **overrides)

    def predict(self, images: Any, batch_size: int | None = None, **postprocess_overrides: Any) -> list[Prediction]:
        """Text polygons of ``images``: a path, a folder (its image files, sorted), a numpy RGB
        uint8 array, a PIL image, or a list of those; one :class:`Prediction` per image, in order.
        ``postprocess_overrides`` replace post-processing settings for this call
        (``thresh=0.4, box_thresh=0.7, use_polygon=True``...)."""
        return list(self.iter_predict(images, batch_size, **postprocess_overrides))

    def iter_predict(self, images: Any, batch_size: int | None = None, **postprocess_overrides: Any) -> Iterator[Prediction]:
        """:meth:`predict`, one image at a time (images are read as they are needed)."""
        postprocess = self.with_postprocess(**postprocess_overrides)
        inputs = expand_inputs(images)
        step = max(1, int(batch_size or self.batch_size))
        for start in range(0, len(inputs), step):
            yield from self._predict_batch(inputs[start : start + step], postprocess)

    def _predict_batch(self, inputs: Sequence[Any], postprocess: DBPostProcessor) -> Iterable[Prediction]:
        batch = collate_receipts([network_item(*load_input(image), resize=self.resize) for image in inputs])
        results: list[Prediction] = [None] * len(inputs)  # type: ignore[list-item]
        for index, images in size_groups(batch):
            for i, found in zip(index, decode_probabilities(postprocess, self.network(images), batch, index)):
                results[i] = Prediction(found.polygons, found.scores, name=batch["name"][i], raw_size=batch["raw_size"][i])
        return results

    def probabilities(self, image: Any) -> np.ndarray:
        """The probability map of one image at network input size (after resizing; unpadded)."""
        batch = collate_receipts([network_item(*load_input(image), resize=self.resize)])
        width, height = batch["valid_size"][0]
        (_, images), = size_groups(batch)  # fmt: skip
        return self.network(images)[0, :height, :width]

    # -- export ----------------------------------------------------------------------------------------
    def export_onnx(self, output: str | os.PathLike, opset: int | None = None) -> tuple[Path, Path]:
        """Export this (PyTorch) detector as ``runners/export.py`` does: ``output`` and ``<output>.json``."""
        from ocr.export import DEFAULT_OPSET, checkpoint_source, export_onnx

        if self.module is None:
            raise TypeError("only a detector built from a checkpoint can be exported")
        source = checkpoint_source(self.info.get("checkpoint_path"), self.info.get("checkpoint"), self.info.get("artifact"))
        return export_onnx(self.module, self.resize, output, opset=opset or DEFAULT_OPSET, source=source)
