"""Export a trained detector for deployment: its network as an ONNX model, plus a JSON sidecar with
everything inference needs around it.

    python runners/export.py checkpoint_path=outputs/x/checkpoints/best.ckpt [output=detector.onnx]

The ONNX graph is the LightningModule's own forward pass (``DBNetModule.forward``: normalisation,
then the network), probability branch only, with the sigmoid applied:

* input ``image``: **uint8 RGB**, (batch, 3, height, width), dynamic batch, height and width; each side
  a multiple of 32 (:class:`~ocr.data.transforms.ResizeForEval`'s sizes, then zero padding at the
  bottom/right). The normalisation ``(x - 255 mean) / (255 std)`` (ImageNet's, or the network's own
  ``input_mean``/``input_std``: RapidOCR's 0.5/0.5 for PP-OCR's networks by default) happens inside
  the graph, and so does PP-OCR's RGB -> BGR flip: callers feed the pixels as read.
* output ``probability``: (batch, 1, height, width) float32 text probabilities at input size.

The sidecar ``<output>.json`` holds the sizing rule (``resize``: ``ResizeForEval`` fields with
``_target_``), the post-processing settings (``postprocess``: ``DBPostProcessor`` fields with
``_target_``), the input normalisation (for the record: it is in the graph), the checkpoint (path,
sha256, epoch, step, validation scores) and the W&B model artifact and run it came from.
:meth:`ocr.detector.Detector.from_onnx` reads both files and infers exactly as the checkpoint does.

Test-time augmentation (``lightning_module.tta_scales``) is refused with an :class:`ExportError`: the
graph holds one pass at the input size, and a checkpoint validated with TTA would otherwise infer
differently from its export without saying so. Export it with ``lightning_module.tta_scales=null``.

Imported PP-OCR graphs are exported with their scalar affines folded into the convolutions and
hardswish as one operation (:func:`inference_copy`), ~25% faster in ONNX Runtime and equivalent.
Both files are written under temporary names, checked (ONNX checker; ONNX Runtime against PyTorch
at several sizes and batch sizes, which proves the dynamic axes), then moved into place with
``os.replace``: a failed export leaves no half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ocr.config import register_resolvers
from ocr.data.transforms import ResizeForEval
from ocr.lightning_module import DBNetModule

log = logging.getLogger(__name__)
register_resolvers()  # the configs' ${multiple_of_32:...} and the like, before the runner composes one

FORMATS = ("onnx",)
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "probability"
SIDECAR_FORMAT = "receipt-text-detection/onnx-detector/1"
# (batch, height, width) the export is checked at: several batch sizes and shapes (dynamic axes)
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 96, 64), (2, 128, 192), (1, 224, 160))
CHECK_TOLERANCE = 1e-4  # max abs difference of the probabilities, ONNX Runtime vs PyTorch


class ExportError(ValueError):
    """A checkpoint or setting that cannot be exported as asked; the message says why and what to do."""


class ProbabilityGraph(nn.Module):
    """What the ONNX graph computes: uint8 RGB images (N, 3, H, W) -> text probabilities (N, 1, H, W),
    through the module's own ``forward`` (normalisation + network, probability branch only)."""

    def __init__(self, module: DBNetModule):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.module(images, with_threshold=False)["prob_logits"].float())


def inference_copy(module: DBNetModule) -> DBNetModule:
    """A copy of ``module`` for export, its imported ONNX graphs (PP-OCR's backbone or detector)
    rewritten into fewer, equivalent operations (:func:`ocr.models.onnx_import.simplify_for_inference`);
    other networks are copied as they are. The export is checked against the original."""
    import copy

    from torch import fx

    from ocr.models.onnx_import import simplify_for_inference

    duplicate = copy.deepcopy(module).eval()
    for name, submodule in duplicate.named_modules():
        if isinstance(submodule, fx.GraphModule):
            counts = simplify_for_inference(submodule)
            if any(counts.values()):
                log.info("Export: %s simplified for inference (%s)", name, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return duplicate


def sidecar_path(onnx_path: str | Path) -> Path:
    """``<onnx_path>.json``: the sidecar next to an exported model."""
    return Path(f"{onnx_path}.json")


def default_output(checkpoint_path: str | Path, fmt: str = "onnx") -> Path:
    """``<checkpoint dir>/<checkpoint stem>.<fmt>``."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.{fmt}")


def target_and_fields(instance: Any) -> dict[str, Any]:
    """A dataclass instance as the config that builds it: ``_target_`` and its fields."""
    cls = type(instance)
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **dataclasses.asdict(instance)}


def input_normalisation(module: DBNetModule) -> dict[str, Any]:
    """The normalisation the graph applies, in the 0-1 range of ``x / 255``."""
    mean = (module.mean.flatten() / 255).tolist()
    std = (module.std.flatten() / 255).tolist()
    return {"mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std], "scale": 255.0}


def sidecar(
    module: DBNetModule,
    resize: ResizeForEval,
    onnx_file: str,
    opset: int,
    source: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON sidecar of an export (see the module docstring). ``source``: where the weights came
    from (:func:`checkpoint_source`)."""
    import onnx

    import ocr

    source = source or {}
    normalisation = input_normalisation(module)
    return {
        "format": SIDECAR_FORMAT,
        "model_file": onnx_file,
        "opset": opset,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": ["batch", 3, "height", "width"],
            "layout": "NCHW",
            "channel_order": "RGB",
            "normalisation": "inside the graph: (x - 255 * mean) / (255 * std); feed the uint8 pixels as read",
            **normalisation,
            "sides": "multiples of 32: resize with `resize`, then pad the bottom and right with zeros",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 1, "height", "width"], "dtype": "float32", "activation": "sigmoid"},
        "resize": target_and_fields(resize),
        "postprocess": target_and_fields(module.postprocess),
        "tta_scales": list(module.tta_scales) or None,  # always None: export refuses TTA
        "architecture": source.get("architecture"),
        "checkpoint": source.get("checkpoint"),
        "wandb": source.get("wandb"),
        "parity": parity,
        "exported_with": {
            "package": getattr(ocr, "__version__", None),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
        },
    }


def checkpoint_source(
    checkpoint_path: str | Path | None, checkpoint: dict[str, Any] | None, artifact: Any | None = None
) -> dict[str, Any]:
    """What the sidecar says about the weights: the checkpoint (path, sha256, epoch, step, scores),
    the network's config and the W&B model artifact and run (``checkpoint["tracking"]``, or the
    artifact it was fetched from)."""
    from ocr.pretrained import sha256_of
    from ocr.tracking.artifacts import model_reference

    if checkpoint_path is None or checkpoint is None:
        return {}
    tracking = checkpoint.get("tracking") or {}
    reference = model_reference(checkpoint_path, checkpoint, artifact)
    models = (checkpoint.get("ocr_config") or {}).get("models") or {}
    run = {key: value for key, value in (tracking.get("wandb") or {}).items() if key in ("run_id", "project", "entity")}
    wandb = {"model_artifact": reference.get("model_artifact"), "source_run": reference.get("source_run"), **run}
    wandb = {key: value for key, value in wandb.items() if value is not None}
    return {
        "checkpoint": {
            "path": str(Path(checkpoint_path).resolve()),
            "sha256": sha256_of(Path(checkpoint_path)),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
            "metrics": tracking.get("metrics") or {},
        },
        "architecture": {key: models.get(key) for key in ("network", "encoder", "decoder", "head") if key in models},
        "wandb": wandb or None,
    }


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op threads
    (default: the physical cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); ``os.cpu_count()``
    where Linux's topology files are missing."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            return len(cpus) or 1
    return len(cores) or 1


def compare_with_onnxruntime(
    graph: nn.Module, onnx_path: str | Path, shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES, seed: int = 0
) -> dict[str, Any]:
    """Run PyTorch and ONNX Runtime on random uint8 images of each (batch, height, width) of
    ``shapes``; returns the sizes and the largest absolute difference of the probabilities."""
    session = onnx_session(onnx_path)
    generator = torch.Generator().manual_seed(seed)
    device = next(graph.parameters()).device
    worst = 0.0
    for batch, height, width in shapes:
        images = torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)
        with torch.inference_mode():
            expected = graph(images.to(device)).cpu().numpy()
        (found,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        if found.shape != expected.shape:
            raise ExportError(
                f"the ONNX model gives shape {found.shape} for input {tuple(images.shape)}, PyTorch {expected.shape}"
            )
        worst = max(worst, float(np.abs(found - expected).max()))
    return {"shapes": [list(shape) for shape in shapes], "max_abs_diff": worst}


def export_onnx(
    module: DBNetModule,
    resize: ResizeForEval,
    output: str | Path,
    opset: int = DEFAULT_OPSET,
    source: dict[str, Any] | None = None,
    check_shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES,
    tolerance: float = CHECK_TOLERANCE,
) -> tuple[Path, Path]:
    """Write ``module``'s network as ONNX to ``output`` and its sidecar to ``<output>.json`` (see the
    module docstring), after checking ONNX Runtime against PyTorch at ``check_shapes``; returns both
    paths. ``source``: what the sidecar says about the weights (:func:`checkpoint_source`)."""
    import onnx

    if module.tta_scales:
        raise ExportError(
            f"lightning_module.tta_scales={module.tta_scales}: test-time augmentation cannot be exported (the ONNX graph "
            "is one pass at the input size). Export the single-scale network with lightning_module.tta_scales=null "
            "(its detections then differ from the TTA-validated ones)"
        )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sidecar_file = sidecar_path(output)
    device = module.mean.device
    graph = ProbabilityGraph(module).eval()
    exported = ProbabilityGraph(inference_copy(module)).eval()  # checked against `graph` below
    example = torch.zeros((1, 3, 256, 192), dtype=torch.uint8, device=device)
    axes = {0: "batch", 2: "height", 3: "width"}
    # both files under temporary names first, moved into place once both are complete and checked
    model_temporary, sidecar_temporary = _temporary(output), _temporary(sidecar_file)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript;
            # tracer warnings about shapes are answered by the check at several sizes below
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                exported, (example,), str(model_temporary), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, do_constant_folding=True,
            )  # fmt: skip
        exported.eval()  # the exporter puts back the mode it found; make sure no train(True) reached the module
        onnx.checker.check_model(str(model_temporary))
        parity = compare_with_onnxruntime(graph, model_temporary, check_shapes)
        if not parity["max_abs_diff"] <= tolerance:
            raise ExportError(
                f"ONNX Runtime and PyTorch disagree by {parity['max_abs_diff']:.2e} (> {tolerance:g}) on the probability "
                f"map at (batch, height, width) {list(check_shapes)}: the export is not faithful"
            )
        notes = sidecar(module, resize, output.name, opset, source, parity)
        sidecar_temporary.write_text(json.dumps(notes, indent=2) + "\n", encoding="utf-8")
        os.replace(model_temporary, output)
        os.replace(sidecar_temporary, sidecar_file)
    finally:
        model_temporary.unlink(missing_ok=True)
        sidecar_temporary.unlink(missing_ok=True)
    log.info(
        "Exported %s (%.1f MB) and %s; ONNX Runtime matches PyTorch within %.1e at %s",
        output, output.stat().st_size / 1e6, sidecar_file.name, parity["max_abs_diff"], list(check_shapes),
    )  # fmt: skip
    return output, sidecar_file


def int8_output(onnx_path: str | Path) -> Path:
    """``<stem>.int8.onnx`` next to the float export."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.int8{onnx_path.suffix}")


def quantize_int8(
    onnx_path: str | Path, calibration_images: Any, output: str | Path | None = None, count: int = 16
) -> tuple[Path, Path]:
    """Quantise an export to int8 with ONNX Runtime's static quantisation (QOperator; weights int8
    per channel, activations uint8, ranges calibrated by running the float model on up to ``count``
    of ``calibration_images``: a folder, a file or a list, receipts like those it will see, sized by
    the export's own rule). Writes ``output`` (default ``<stem>.int8.onnx``) and its sidecar (the float
    export's, plus a ``quantization`` block), both atomically; returns both paths. Its maps differ
    from the float model's by quantisation error: measure its accuracy (``python -m
    benchmarks.inference_speed --int8 ...``, docs/experiments.md)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ocr.detector import build_setting, expand_inputs, load_input, network_item, read_export_notes

    if not (isinstance(count, int) and count >= 1):
        raise ExportError(f"calibration_count={count!r}: must be an integer >= 1")
    onnx_path = Path(onnx_path)
    output = Path(output) if output else int8_output(onnx_path)
    notes = read_export_notes(onnx_path)
    resize = build_setting(notes["resize"])  # calibration pages sized as the export infers
    images = expand_inputs(calibration_images)[:count]
    if not images:
        raise ExportError(f"quantize=int8 needs calibration images: none found in {calibration_images}")

    class Pages(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.items, None)
            if image is None:
                return None
            return {INPUT_NAME: network_item(*load_input(image), resize=resize)["image"][None].numpy()}

    output.parent.mkdir(parents=True, exist_ok=True)
    model_temporary, sidecar_temporary = _temporary(output), _temporary(sidecar_path(output))
    prepared = _temporary(output.with_name(output.stem + ".prepared.onnx"))
    try:
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(
            str(prepared), str(model_temporary), Pages(), quant_format=QuantFormat.QOperator, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        notes["model_file"] = output.name
        notes["quantization"] = {
            "method": "onnxruntime static int8, QOperator: weights int8 per channel, activations uint8",
            "from_model": onnx_path.name,
            "calibration_images": [getattr(image, "name", str(image)) for image in images],
        }
        sidecar_temporary.write_text(json.dumps(notes, indent=2) + "\n", encoding="utf-8")
        os.replace(model_temporary, output)
        os.replace(sidecar_temporary, sidecar_path(output))
    finally:
        for path in (model_temporary, sidecar_temporary, prepared):
            path.unlink(missing_ok=True)
    log.info(
        "Quantised %s to int8: %s (%.1f MB), calibrated on %d images",
        onnx_path.name, output, output.stat().st_size / 1e6, len(images),
    )
    return output, sidecar_path(output)


# -- W&B --------------------------------------------------------------------------------------------
def onnx_artifact_kind(notes: dict[str, Any]) -> str:
    """``onnx`` for a float export, ``onnx-int8`` for its quantised copy (the sidecar says which)."""
    return "onnx-int8" if notes.get("quantization") else "onnx"


def onnx_artifact_name(notes: dict[str, Any], checkpoint_path: str | Path) -> str:
    """``<the checkpoint's model artifact>-onnx`` (``model-<run id>-onnx``), or ``model-<stem>-onnx``;
    ``-onnx-int8`` for a quantised export."""
    from ocr.tracking.artifacts import safe_name

    source = ((notes.get("wandb") or {}).get("model_artifact") or "").split("/")[-1].split(":")[0]
    return safe_name(f"{source or f'model-{Path(checkpoint_path).stem}'}-{onnx_artifact_kind(notes)}")


def log_onnx_artifact(run: Any | None, onnx_path: Path, sidecar_file: Path, checkpoint_path: str | Path) -> Any | None:
    """Log the ONNX model and its sidecar as a W&B ``model`` artifact ``<checkpoint artifact>-onnx``
    (``-onnx-int8`` for a quantised export, with its calibration in the metadata) whose metadata names
    the checkpoint's artifact and run; None without a run or when W&B refuses."""
    if run is None:
        return None
    import wandb

    notes = json.loads(Path(sidecar_file).read_text(encoding="utf-8"))
    checkpoint = notes.get("checkpoint") or {}
    source = notes.get("wandb") or {}
    metadata = {
        "format": "onnx",
        "opset": notes.get("opset"),
        "checkpoint_artifact": source.get("model_artifact"),
        "source_run": source.get("source_run"),
        "checkpoint_sha256": checkpoint.get("sha256"),
        "checkpoint_epoch": checkpoint.get("epoch"),
        "image_size": (notes.get("resize") or {}).get("image_size"),
        "parity_max_abs_diff": (notes.get("parity") or {}).get("max_abs_diff"),
        **(checkpoint.get("metrics") or {}),
    }
    quantization = notes.get("quantization") or {}
    if quantization:
        metadata.update({
            "quantization": quantization.get("method"),
            "quantized_from": quantization.get("from_model"),
            "calibration_count": len(quantization.get("calibration_images") or []),
        })  # fmt: skip
    kind = onnx_artifact_kind(notes)
    artifact = wandb.Artifact(
        name=onnx_artifact_name(notes, checkpoint_path),
        type="model",
        metadata={k: v for k, v in metadata.items() if v is not None},
    )
    artifact.add_file(str(onnx_path), name="model.onnx")
    artifact.add_file(str(sidecar_file), name="model.onnx.json")
    try:
        return run.log_artifact(artifact, aliases=["latest", kind])
    except Exception as error:  # noqa: BLE001  (the files are written: never fail the export for W&B)
        log.warning("W&B: could not log the %s artifact: %s", kind, error)
        return None


# -- the runner ---------------------------------------------------------------------------------------
def export(cfg: DictConfig) -> tuple[Path, Path]:
    """``runners/export.py``: the checkpoint of ``cfg.checkpoint_path`` (a file or a W&B model
    reference), rebuilt as test/predict rebuild it (its architecture and inference settings, the
    command line's named settings winning), exported to ``cfg.output`` (default: next to the
    checkpoint). With ``wandb=true`` the files are logged as a model artifact."""
    from ocr.validation import validate_settings

    validate_settings(cfg, "export")
    fmt = str(cfg.get("format", "onnx")).lower()
    if fmt not in FORMATS:
        raise ExportError(f"format={fmt}: only {', '.join(FORMATS)} can be exported")
    if cfg.get("quantize") not in (None, "int8"):
        raise ExportError(f"quantize={cfg.quantize}: must be int8 or null")
    if cfg.get("quantize") == "int8":
        images = cfg.get("calibration_images")
        if not images or not Path(str(images)).exists():
            raise ExportError(
                f"quantize=int8 needs calibration_images=<folder of receipts like those it will see> (got {images}): "
                "int8 ranges are calibrated on them"
            )
    if not cfg.get("wandb"):
        return _export(cfg, run=None)
    from ocr.factory import build_loggers
    from ocr.tracking.wandb_setup import active_run, finish_wandb

    loggers = build_loggers(cfg, "export")
    status = 1
    try:
        paths = _export(cfg, active_run(loggers))
        status = 0
        return paths
    finally:
        finish_wandb(loggers, exit_code=status)


def _export(cfg: DictConfig, run: Any | None) -> tuple[Path, Path]:
    from hydra.utils import instantiate

    from ocr.checkpoints import load_checkpoint_into, load_weights_into
    from ocr.factory import build_module
    from ocr.pretrained import fetch_missing_files
    from ocr.tracking.artifacts import fetch_model_artifact, is_artifact_reference, use_local_checkpoint

    artifact = None
    if is_artifact_reference(cfg.checkpoint_path):
        path, artifact = fetch_model_artifact(str(cfg.checkpoint_path), run, Path(cfg.output_dir) / "artifacts")
        cfg.checkpoint_path = str(path)
    checkpoint = load_checkpoint_into(cfg)
    fetch_missing_files(cfg)  # a PP-OCR network reads its structure from the pretrained file
    if run is not None and artifact is None:
        artifact = use_local_checkpoint(run, cfg.checkpoint_path, checkpoint)
    module = build_module(cfg)
    load_weights_into(module, checkpoint["state_dict"], cfg.checkpoint_path)
    module.eval()
    output = Path(cfg.output) if cfg.get("output") else default_output(cfg.checkpoint_path, "onnx")
    resize = instantiate(OmegaConf.to_container(cfg.datasets.eval_resize, resolve=True))
    paths = export_onnx(
        module,
        resize,
        output,
        opset=int(cfg.get("opset") or DEFAULT_OPSET),
        source=checkpoint_source(cfg.checkpoint_path, checkpoint, artifact),
    )
    print(f"Wrote {paths[0]} and {paths[1]}")
    if run is not None:
        log_onnx_artifact(run, *paths, checkpoint_path=cfg.checkpoint_path)
    if cfg.get("quantize") == "int8":
        quantised = quantize_int8(paths[0], cfg.calibration_images, count=cfg.get("calibration_count", 16))
        print(f"Wrote {quantised[0]} and {quantised[1]}")
        if run is not None:
            log_onnx_artifact(run, *quantised, checkpoint_path=cfg.checkpoint_path)
    return paths
