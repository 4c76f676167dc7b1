"""Seconds per receipt of the deployable detector on this CPU: PyTorch, ONNX Runtime, and the
pretrained peer (RapidOCR's PP-OCRv4 detector, detection only) when it is importable; prints one
Markdown table.

    python -m benchmarks.inference_speed                                   # the example preset's network, untrained
    python -m benchmarks.inference_speed checkpoint_path=outputs/x/checkpoints/best.ckpt images=receipts/
    python -m benchmarks.inference_speed --quick                           # 3 pages, one timed pass
    python -m benchmarks.inference_speed --int8 calibration=DIR            # + ONNX Runtime int8 row

Each backend runs :class:`ocr.detector.Detector` (``from_checkpoint``: PyTorch in float32 and, on a
CPU with hardware bf16, with ``precision="bf16"`` as the runners infer there; ``from_onnx``
on the checkpoint exported by ``ocr.export``: ONNX Runtime with every graph optimisation and one
intra-op thread per physical core) on the same image files at the same size: the long side
``image_size`` (1600 by default, the receipt recipe's inference size; the checkpoint's sizing mode
otherwise). A row's seconds per image cover everything ``Detector.predict(path)`` does: read and
resize, network, post-processing; "network" is the network's share. Without ``images=`` the pages
are synthetic receipts (``ocr.data.synthetic.render_receipt``: 360-480 px wide, with margins and a
slight rotation), written as JPEG. The untrained network's post-processing time is not a trained
one's (its probability map has other regions): pass a checkpoint for that.

``--int8`` adds ONNX Runtime on the export quantised to int8 as ``runners/export.py quantize=int8``
does it (static: weights and activations, QOperator, per channel), calibrated on up to 16 images of
``calibration=DIR`` or on four other synthetic pages. (Dynamic int8, weights only, measured 5-9x
slower than float32 here: docs/experiments.md.)

The RapidOCR row needs ``rapidocr_onnxruntime`` importable (it pulls opencv-python, which clashes
with this project's opencv-python-headless: e.g. ``pip download rapidocr_onnxruntime==1.4.4
--no-deps``, unzip the wheel somewhere and put that on PYTHONPATH); each page is resized to our
network input size first, then run through its detector with its default post-processing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import ocr  # noqa: F401  (torchvision workaround before anything imports timm)
from ocr.config import cpu_has_native_bf16, cpuinfo_field
from ocr.detector import Detector
from ocr.export import physical_cores


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 pages, one timed pass (default: 8 pages, best of 3 passes)")
    parser.add_argument("--int8", action="store_true", help="also ONNX Runtime on int8-quantised exports")
    parser.add_argument(
        "options", nargs="*", help="checkpoint_path=... images=DIR image_size=1600 threads=N pages=N calibration=DIR"
    )
    args = parser.parse_args(argv)
    known = {"checkpoint_path", "images", "image_size", "threads", "pages", "calibration"}
    options = {}
    for option in args.options:
        key, sep, value = option.partition("=")
        if not sep or key not in known:
            parser.error(f"unknown option {option!r}: expected {', '.join(f'{k}=...' for k in sorted(known))}")
        options[key] = value
    return args, options


def example_checkpoint(folder: Path) -> Path:
    """The example preset's network, untrained, saved as a checkpoint (its weights and run config)."""
    import torch

    from ocr.config import compose_config
    from ocr.factory import build_module

    module = build_module(compose_config("train", ["preset=example", "models.encoder.pretrained=false"]))
    path = folder / "example_untrained.ckpt"
    torch.save({"state_dict": module.state_dict(), "ocr_config": module.run_config, "epoch": 0, "global_step": 0}, path)
    return path


def synthetic_pages(folder: Path, count: int, first_seed: int = 1000) -> list[Path]:
    """``count`` synthetic receipts (as generated for training: margins, rotation, noise) as JPEG files."""
    from ocr.data.synthetic import render_receipt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first_seed, first_seed + count):
        path = folder / f"receipt_{seed}.jpg"
        render_receipt(seed)[0].save(path, quality=92)
        paths.append(path)
    return paths


class TimedNetwork:
    """A detector's network that adds up the seconds it runs."""

    def __init__(self, network: Callable[..., Any]):
        self.network, self.seconds = network, 0.0
        self.kind = getattr(network, "kind", "network")

    def __call__(self, images):
        start = time.perf_counter()
        try:
            return self.network(images)
        finally:
            self.seconds += time.perf_counter() - start


def time_per_image(
    run: Callable[[Path], Any], paths: list[Path], network: TimedNetwork | None, passes: int
) -> tuple[float, float | None]:
    """Mean over ``paths`` of the best of ``passes`` timings of ``run(path)``, and the network's share
    in those best runs; one warm-up call first."""
    run(paths[0])
    totals, networks = [], []
    for path in paths:
        best = (float("inf"), None)
        for _ in range(passes):
            if network is not None:
                network.seconds = 0.0
            start = time.perf_counter()
            run(path)
            elapsed = time.perf_counter() - start
            if elapsed < best[0]:
                best = (elapsed, network.seconds if network is not None else None)
        totals.append(best[0])
        networks.append(best[1])
    mean_network = float(np.mean(networks)) if network is not None else None
    return float(np.mean(totals)), mean_network


def timed_detector(detector: Detector) -> tuple[Detector, TimedNetwork]:
    timed = TimedNetwork(detector.network)
    detector.network = timed
    return detector, timed


def quantised_detector(onnx_path: Path, resize, calibration: Path | None, folder: Path, threads: int) -> Detector:
    """The export quantised to int8 as ``runners/export.py quantize=int8`` does it
    (:func:`ocr.export.quantize_int8`), calibrated on ``calibration`` (a folder of receipts) or, by
    default, on 4 synthetic pages other than the timed ones."""
    from ocr.export import quantize_int8

    images = calibration if calibration is not None else synthetic_pages(folder / "calibration", 4, 5000)
    quantised, _ = quantize_int8(onnx_path, images, folder / "detector.int8.onnx", count=16)
    detector = Detector.from_onnx(quantised, threads=threads)
    detector.resize = resize
    return detector


def rapidocr_runner(resize) -> tuple[Callable[[Path], Any], TimedNetwork] | None:
    """RapidOCR's PP-OCRv4 detector, detection only, with its default post-processing (the steps of
    ``RapidOCR.__call__`` with ``use_det`` only, as benchmarks/rapidocr_baseline.py runs them), on
    each page first resized to the network input size ``resize`` gives ours (its ``limit_type=max``
    only ever shrinks a page); None when it is not importable."""
    try:
        import cv2
        from rapidocr_onnxruntime import RapidOCR
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
    except ImportError:
        return None
    engine = RapidOCR()
    detector = engine.text_det
    postprocess = DBPostProcess(
        thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6, use_dilation=True, score_mode="fast"
    )
    network = TimedNetwork(detector.infer)

    def run(path: Path) -> Any:
        raw = engine.load_img(str(path))
        raw = cv2.resize(raw, resize.target_size(raw.shape[1], raw.shape[0]), interpolation=cv2.INTER_LINEAR)
        image, ratio_h, ratio_w = engine.preprocess(raw)
        image, record = engine.maybe_add_letterbox(image, {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}})
        preprocess = DetPreProcess(max(image.shape[:2]), "max", detector.mean, detector.std)
        probability = network(preprocess(image))[0]
        boxes, _ = postprocess(probability, image.shape[:2])
        boxes = detector.filter_tag_det_res(boxes, image.shape[:2])
        return engine._get_origin_points(boxes, record, raw.shape[0], raw.shape[1]) if len(boxes) else boxes

    return run, network


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import onnxruntime
    import torch

    args, options = parse(argv)
    image_size = int(options.get("image_size", 1600))
    threads = int(options.get("threads") or physical_cores())
    passes = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="inference_speed_") as scratch:
        scratch = Path(scratch)
        checkpoint = Path(options["checkpoint_path"]) if options.get("checkpoint_path") else example_checkpoint(scratch)
        if options.get("images"):
            from ocr.detector import expand_inputs

            paths = expand_inputs(options["images"])
            paths = paths[: int(options.get("pages", 3 if args.quick else len(paths)))]
        else:
            paths = synthetic_pages(scratch / "pages", int(options.get("pages", 3 if args.quick else 8)))
        if not paths:
            raise SystemExit(f"no images in {options.get('images')}")

        pytorch = Detector.from_checkpoint(checkpoint)
        resize = dataclasses.replace(pytorch.resize, image_size=image_size)
        pytorch.resize = resize
        onnx_path, _ = pytorch.export_onnx(scratch / "detector.onnx")
        onnx = Detector.from_onnx(onnx_path, threads=threads)
        onnx.resize = resize
        detectors: dict[str, Detector] = {"PyTorch (float32)": pytorch}
        if cpu_has_native_bf16():  # how the runners infer on this machine (auto_precision, auto_channels_last)
            detectors["PyTorch (bf16 autocast, channels_last)"] = Detector.from_checkpoint(checkpoint, precision="bf16")
            detectors["PyTorch (bf16 autocast, channels_last)"].resize = resize
        detectors["ONNX Runtime (float32)"] = onnx
        if args.int8:
            calibration = Path(options["calibration"]) if options.get("calibration") else None
            detectors["ONNX Runtime (int8 static)"] = quantised_detector(onnx_path, resize, calibration, scratch, threads)

        sizes = sorted({resize.target_size(*upright_image_size(path)) for path in paths})
        rows = []
        for name, detector in detectors.items():
            detector, network = timed_detector(detector)
            total, net = time_per_image(detector.predict, paths, network, passes)
            rows.append({"backend": name, "seconds": total, "network": net})
        peer = rapidocr_runner(resize)
        if peer is not None:
            run, network = peer
            total, net = time_per_image(run, paths, network, passes)
            rows.append({"backend": "RapidOCR PP-OCRv4 det (same input size)", "seconds": total, "network": net})

    cpu = cpuinfo_field("model name") or platform.processor() or "unknown CPU"
    print(
        f"Machine: {cpu}, {os.cpu_count()} CPUs ({physical_cores()} physical cores); torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__} ({threads} intra-op threads, ORT_ENABLE_ALL)"
    )
    print(
        f"Checkpoint: {options.get('checkpoint_path') or 'none (example preset, untrained)'}; {len(paths)} images "
        f"({'synthetic receipts' if not options.get('images') else options['images']}), network input (w, h) {sizes}, "
        f"{'1 pass' if passes == 1 else f'best of {passes} passes'}\n"
    )
    reference = rows[0]["seconds"]
    print("| backend | s / image | network | read + resize + post-processing | × PyTorch time |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        network = f"{row['network']:.3f}" if row["network"] is not None else "-"
        rest = f"{row['seconds'] - row['network']:.3f}" if row["network"] is not None else "-"
        print(f"| {row['backend']} | {row['seconds']:.3f} | {network} | {rest} | {row['seconds'] / reference:.2f} |")
    if peer is None:
        print("| RapidOCR PP-OCRv4 det | not measured: rapidocr_onnxruntime is not importable | | | |")
    return rows


def upright_image_size(path: Path) -> tuple[int, int]:
    """The upright (width, height) of an image file, as ``read_image`` gives it."""
    from ocr.data.dataset import read_image
    from ocr.geometry import upright_size

    _, orientation, raw_size = read_image(path)
    return upright_size(orientation, raw_size)


if __name__ == "__main__":
    main()
