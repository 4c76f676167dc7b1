"""GPU training and inference throughput of the example preset's network; prints Markdown tables.

    python -m benchmarks.gpu_throughput --json gpu.json                   # on a GPU machine
    python -m benchmarks.gpu_throughput --quick --device cpu              # a check on a CPU (~1-2 min)
    python -m benchmarks.gpu_throughput datasets.synthetic.num_train=800  # Hydra overrides, last

What it measures, on the device it finds (``--device auto``: CUDA when there is one):

1. **Training images/s** of ``preset=example`` (timm ResNet18 from random init + FPN 128 + DB
   head) on 640×640 crops through the real training path: ``ocr.config.compose_config("train",
   ["preset=example", "crop_size=640", ...])``, ``ocr.factory.build_module`` /
   ``build_datamodule`` on the synthetic receipt set (built under ``--data-root``) and
   ``ocr.factory.build_trainer`` (bf16-mixed + channels_last on a GPU; the preset's automatic
   choice on a CPU), ``--warmup`` steps then ``--steps`` timed steps, for each ``--batch-sizes``.
   The DataLoader has the config's workers (half the CPUs, at most 8), pinned memory and, on a GPU, prefetching across epochs.
   Each batch size is also run on one real collated batch repeated from (pinned) host memory, with
   no DataLoader: its host-to-device copy is still made, so the ratio of the two rows is what the
   CPU data pipeline (decoding, augmentation, target maps, collation) costs. One extra row runs the
   middle batch size with ``os.cpu_count() - 1`` workers, and one per batch size the DataLoader
   with ``datasets.prefetch_across_epochs`` the other way (on a GPU: off, the plain DataLoader whose
   workers idle at each epoch's end; ``ocr/data/loader.py``). With ``--compile`` (default on CUDA), the
   in-memory run at the largest batch size is repeated with ``torch.compile`` of the network:
   compile time (its warm-up wall time minus the eager run's) and speed-up.
2. **Inference images/s** at 640×640 and 1600×1216 (H×W, the receipt recipe's long side 1600),
   ``--infer-batch`` images per batch, bf16 autocast (on a CPU: the preset's precision), network
   only (input already on the device) and network + post-processing: host-to-device copy,
   network, sigmoid, device-to-host copy of the probability maps, then
   ``ocr.models.postprocess.DBPostProcessor`` on each image. An untrained network's probability
   map is no trained one's, so the post-processor is fed realistic maps instead (each page's
   ground-truth text kernels, blurred, from ``benchmarks.pages.make_page``: 110 words at 640²,
   440 at 1600×1216) while the network's own maps are still computed and copied back.
3. **Peak GPU memory** (``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``) of each
   DataLoader training run, a least-squares line (fixed + per image) through them, and from it
   the largest batch that fits 24 / 40 / 80 GiB cards after the memory CUDA itself holds outside
   PyTorch's allocator on this machine (measured: device memory in use minus PyTorch's reserved).

Throughput is the images of the timed steps over their wall time (device synchronised at both
ends): epoch ends fall inside it (the preset's 400 synthetic training receipts are 25 steps of
16, 6 of 64). ``--json PATH`` writes every figure (after each part, so a run cut short keeps what
it measured) and ``PATH`` with ``.md`` writes the tables. Without the ``cleval`` package (it
builds from source, so a lent GPU machine may lack it) a stub stands in: the LightningModule
imports it for its metrics, which a throughput run never computes; the JSON notes it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

CLEVAL_STUB = {
    "__init__.py": '"""Stub of cleval (benchmarks/gpu_throughput.py): metrics are never computed here."""\n',
    "box_types.py": "class POLY:\n    pass\n",
    "eval_functions.py": "def evaluation(*args, **kwargs):\n    raise RuntimeError('cleval stub: no CLEval here')\n",
    "torchmetric.py": "class Options:\n    def __init__(self, **kwargs):\n        self.__dict__.update(kwargs)\n",
}


def ensure_cleval() -> bool:
    """Put a stub ``cleval`` on sys.path when the real one is not installed; True when stubbed."""
    try:
        if importlib.util.find_spec("cleval") is not None:
            return False
    except (ImportError, ValueError):
        pass
    folder = Path(tempfile.mkdtemp(prefix="cleval_stub_")) / "cleval"
    folder.mkdir()
    for name, text in CLEVAL_STUB.items():
        (folder / name).write_text(text, encoding="utf-8")
    sys.path.insert(0, str(folder.parent))
    return True


STUBBED_CLEVAL = ensure_cleval()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ocr  # noqa: E402,F401  (torchvision workaround before anything imports timm)

GIB = 2**30
CARDS_GIB = (24, 40, 80)


# -- helpers ------------------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


class ThroughputTimer:
    """Lightning callback: wall time of the batches after the first ``warmup`` (the device
    synchronised when the clock starts and stops), and each batch end's time."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device = warmup, device
        self.batches, self.images = 0, 0
        self.train_start = self.start = self.stop = None
        self.ends: list[float] = []

    # Lightning looks hooks up by name: the class is made a Callback in make_timer()
    def on_train_start(self, trainer, pl_module) -> None:
        synchronize(self.device)
        self.train_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()
        elif self.batches > self.warmup:
            self.images += int(batch["image"].shape[0])
            self.ends.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        synchronize(self.device)
        self.stop = time.perf_counter()

    def result(self) -> dict[str, Any]:
        if self.start is None or not self.images:
            raise RuntimeError(f"only {self.batches} batches ran: fewer than warm-up + 1")
        seconds = self.stop - self.start
        gaps = np.diff([self.start, *self.ends])
        return {
            "images": self.images,
            "timed_steps": len(self.ends),
            "seconds": seconds,
            "images_per_s": self.images / seconds,
            "median_step_ms": float(np.median(gaps) * 1000),
            "warmup_seconds": self.start - self.train_start,
        }


def make_timer(warmup: int, device: str):
    from lightning.pytorch.callbacks import Callback

    class Timer(ThroughputTimer, Callback):
        pass

    return Timer(warmup, device)


class RepeatedBatch:
    """One collated batch, yielded ``count`` times: a training "loader" with no DataLoader."""

    def __init__(self, batch: dict[str, Any], count: int):
        self.batch, self.count = batch, count

    def __iter__(self):
        for _ in range(self.count):
            yield self.batch

    def __len__(self) -> int:
        return self.count


# -- configuration --------------------------------------------------------------------------------
def base_overrides(args: argparse.Namespace, device: str) -> list[str]:
    overrides = [
        "preset=example",
        "crop_size=640",
        "wandb=false",
        f"datasets.synthetic.root={args.data_root}",
        f"datasets.synthetic.num_val={args.num_val}",
        *([f"datasets.synthetic.num_train={args.num_train}"] if args.num_train else []),
        "datasets.synthetic.num_test=2",
        "trainer.max_epochs=-1",
        f"++trainer.max_steps={args.warmup + args.steps}",
        "trainer.limit_val_batches=0",
        "trainer.devices=1",
        "++trainer.enable_checkpointing=false",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
    ]
    if device == "cuda":
        overrides += ["trainer.precision=bf16-mixed", "lightning_module.channels_last=true"]
    return overrides + list(args.overrides)


def compose(args: argparse.Namespace, device: str, extra: list[str] = ()):
    from ocr.config import compose_config

    return compose_config("train", base_overrides(args, device) + list(extra))


def release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# -- part 1: training -----------------------------------------------------------------------------
def train_run(
    args,
    device: str,
    batch_size: int,
    loader: str,
    real_batch: dict | None = None,
    workers: int | None = None,
    compile_model: bool = False,
    extra: list[str] = (),
    variant: str | None = None,
) -> dict[str, Any]:
    """One short fit; ``loader``: "dataloader" (the datamodule's) or "memory" (``real_batch``
    repeated)."""
    import lightning as L

    from ocr.factory import build_datamodule, build_module, build_trainer

    extra = [f"datasets.batch_size={batch_size}", *extra]
    if workers is not None:
        extra.append(f"datasets.num_workers={workers}")
    cfg = compose(args, device, extra)
    release_memory(device)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    if compile_model:
        module.model.compile()
    timer = make_timer(args.warmup, device)
    trainer = build_trainer(cfg, [timer], [])
    if loader == "dataloader":
        datamodule = build_datamodule(cfg)
        trainer.fit(module, datamodule=datamodule)
        steps_per_epoch = len(datamodule.datasets["train"]) // batch_size
        used_workers = datamodule.num_workers
    else:
        trainer.fit(module, train_dataloaders=RepeatedBatch(real_batch, args.warmup + args.steps))
        steps_per_epoch, used_workers = None, 0
    result = timer.result()
    result.update(
        batch_size=batch_size,
        loader=loader,
        workers=used_workers,
        prefetch_across_epochs=bool(cfg.datasets.prefetch_across_epochs) if loader == "dataloader" else None,
        steps_per_epoch=steps_per_epoch,
        precision=str(cfg.trainer.precision),
        channels_last=bool(cfg.lightning_module.channels_last),
        compiled=compile_model,
        variant=variant,
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
    )
    if device == "cuda":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    del trainer, module
    release_memory(device)
    print(
        f"  train bs={batch_size} {loader:<10} workers={used_workers} compiled={compile_model}: "
        f"{result['images_per_s']:.1f} images/s (median step {result['median_step_ms']:.1f} ms)"
        + (f", peak {result['peak_allocated_gib']:.2f} GiB allocated" if device == "cuda" else ""),
        flush=True,
    )
    return result


def real_batch_of(args, device: str, size: int) -> dict[str, Any]:
    """``size`` training items of the synthetic set (augmented, with targets), collated, pinned on CUDA."""
    from ocr.data.dataset import collate_receipts
    from ocr.factory import build_datamodule

    datamodule = build_datamodule(compose(args, device))
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    batch = collate_receipts([dataset[i % len(dataset)] for i in range(size)])
    return batch


def sub_batch(batch: dict[str, Any], size: int, device: str) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        value = value[:size]
        if isinstance(value, torch.Tensor):
            value = value.clone()
            if device == "cuda":
                value = value.pin_memory()
        out[key] = value
    return out


# -- part 2: inference ----------------------------------------------------------------------------
def realistic_maps(height: int, width: int, words: int, count: int) -> list[np.ndarray]:
    import cv2

    from benchmarks.pages import make_page
    from ocr.data.targets import make_db_targets

    maps = []
    for seed in range(count):
        _, polygons = make_page(width, height, words, seed=seed)
        maps.append(cv2.GaussianBlur(make_db_targets((height, width), polygons)["shrink_map"], (5, 5), 1.5))
    return maps


def timed_loop(function: Callable[[], Any], iterations: int, repeats: int, device: str) -> tuple[float, list[float]]:
    """Median over ``repeats`` of the mean seconds per call of ``iterations`` calls (after one warm-up
    repeat), and every repeat's mean."""
    means = []
    for repeat in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iterations):
            function()
        synchronize(device)
        if repeat:
            means.append((time.perf_counter() - start) / iterations)
    return statistics.median(means), means


def autocast(device: str, dtype: torch.dtype | None):
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


def infer_size(args, module, device: str, dtype: torch.dtype | None, height: int, width: int, words: int) -> dict[str, Any]:
    """Inference images/s at one page size: network only, and network + post-processing."""
    from ocr.lightning_module import probability_maps

    batch, postprocess = args.infer_batch, module.postprocess
    generator = torch.Generator().manual_seed(height)
    host = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)
    if device == "cuda":
        host = host.pin_memory()
    on_device = host.to(device)
    maps = realistic_maps(height, width, words, batch)
    boxes = [len(postprocess(m).polygons) for m in maps]

    def network():
        with torch.inference_mode(), autocast(device, dtype):
            return module(on_device, with_threshold=False)["prob_logits"]

    def pipeline():
        with torch.inference_mode(), autocast(device, dtype):
            logits = module(host.to(device, non_blocking=True), with_threshold=False)["prob_logits"]
        probability_maps(logits)  # the network's own maps, back on the host
        for prob in maps:  # decoded: realistic maps of the same size (see the module doc)
            postprocess(prob)

    def post_only():
        for prob in maps:
            postprocess(prob)

    network_s, network_all = timed_loop(network, args.infer_iters, args.infer_repeats, device)
    pipeline_s, pipeline_all = timed_loop(pipeline, max(1, args.infer_iters // 4), args.infer_repeats, device)
    post_s, _ = timed_loop(post_only, 1, args.infer_repeats, "cpu")
    row = {
        "size_hw": [height, width],
        "batch": batch,
        "words_per_page": words,
        "network_images_per_s": batch / network_s,
        "network_ms_per_batch": network_s * 1000,
        "network_repeat_ms": [m * 1000 for m in network_all],
        "pipeline_images_per_s": batch / pipeline_s,
        "pipeline_ms_per_batch": pipeline_s * 1000,
        "pipeline_repeat_ms": [m * 1000 for m in pipeline_all],
        "postprocess_ms_per_image": post_s * 1000 / batch,
        "boxes_per_image": float(np.mean(boxes)),
    }
    print(
        f"  infer {height}x{width} batch {batch}: network {row['network_images_per_s']:.1f} images/s, "
        f"+ post-processing {row['pipeline_images_per_s']:.1f} images/s "
        f"(post-processing {row['postprocess_ms_per_image']:.1f} ms/image, {row['boxes_per_image']:.0f} boxes)",
        flush=True,
    )
    return row


def inference(args, device: str) -> list[dict[str, Any]]:
    from ocr.factory import build_module

    cfg = compose(args, device)
    module = build_module(cfg).to(device).eval()
    precision = "bf16-mixed" if device == "cuda" else str(cfg.trainer.precision)
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else None
    rows = []
    for height, width, words in ((640, 640, 110), (1600, 1216, 440)):
        row = infer_size(args, module, device, dtype, height, width, words)
        row.update(precision=precision, channels_last=bool(cfg.lightning_module.channels_last))
        rows.append(row)
    release_memory(device)
    return rows


# -- part 3: memory -------------------------------------------------------------------------------
def memory_fit(training: list[dict[str, Any]], context_gib: float | None) -> dict[str, Any] | None:
    points = [
        (r["batch_size"], r["peak_allocated_gib"], r["peak_reserved_gib"])
        for r in training
        if r["loader"] == "dataloader" and "peak_allocated_gib" in r and not r.get("variant")
    ]
    if len(points) < 2:
        return None
    sizes = np.array([p[0] for p in points], dtype=float)
    fit = {}
    for index, name in ((1, "allocated"), (2, "reserved")):
        per_image, fixed = np.polyfit(sizes, np.array([p[index] for p in points]), 1)
        fit[name] = {"fixed_gib": float(fixed), "per_image_gib": float(per_image)}
    context = context_gib or 0.0
    fit["cuda_context_gib"] = context_gib
    fit["cards"] = []
    for card in CARDS_GIB:
        largest = {
            name: int((card - context - fit[name]["fixed_gib"]) // fit[name]["per_image_gib"])
            for name in ("allocated", "reserved")
        }
        fit["cards"].append(
            {
                "card_gib": card,
                "largest_batch_allocated_fit": largest["allocated"],
                "largest_batch_reserved_fit": largest["reserved"],
                "rule_batch": max(0, (min(largest.values()) // 8) * 8),
            }
        )
    return fit


# -- report ---------------------------------------------------------------------------------------
def machine(device: str) -> dict[str, Any]:
    import lightning

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cleval_stub": STUBBED_CLEVAL,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=props.total_memory / GIB,
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        from ocr.config import cpu_has_native_bf16, cpuinfo_field

        info.update(
            cpu=cpuinfo_field("model name") or platform.processor(),
            native_bf16=cpu_has_native_bf16(),
            threads=torch.get_num_threads(),
        )
    return info


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    what = (
        f"GPU {m['gpu']} ({m['gpu_memory_gib']:.0f} GiB, {m['multiprocessors']} SMs), cuDNN {m['cudnn']}"
        if m["device"] == "cuda"
        else f"CPU {m.get('cpu')} ({m['threads']} threads, native bf16: {m.get('native_bf16')})"
    )
    parts = [
        f"Machine: {what}; {m['cpus']} CPUs; torch {m['torch']} (CUDA {m['cuda']}), Lightning {m['lightning']}, "
        f"Python {m['python']}; {m['date_utc']}" + ("; cleval stubbed (no metrics computed)" if m["cleval_stub"] else "")
    ]
    setup = report.get("setup", {})
    if setup:
        parts.append(
            f"Synthetic set: {setup.get('num_train')} training receipts under {setup.get('data_root')} "
            f"(built in {fmt(setup.get('build_seconds'))} s); "
            f"{setup.get('warmup')} warm-up + {setup.get('steps')} timed steps per run."
        )
    training = report.get("training", [])
    plain = [r for r in training if not r.get("variant") and not r["compiled"]]
    if plain:
        rows = []
        for r in plain:
            if r["loader"] != "dataloader":
                continue
            memory = next((x for x in plain if x["loader"] == "memory" and x["batch_size"] == r["batch_size"]), None)
            ratio = memory["images_per_s"] / r["images_per_s"] if memory else None
            rows.append(
                [
                    r["batch_size"],
                    r["workers"],
                    r["steps_per_epoch"],
                    fmt(r["images_per_s"]),
                    fmt(r["median_step_ms"]),
                    fmt(memory["images_per_s"]) if memory else "n/a",
                    fmt(memory["median_step_ms"]) if memory else "n/a",
                    fmt(ratio, 2),
                    fmt(r.get("peak_allocated_gib"), 2),
                    fmt(r.get("peak_reserved_gib"), 2),
                ]
            )
        first = plain[0]
        parts.append(
            f"### Training, preset=example, 640×640 crops, {first['precision']}, channels_last {first['channels_last']}\n\n"
            + table(
                [
                    "batch",
                    "DataLoader workers",
                    "steps/epoch",
                    "images/s (DataLoader)",
                    "median step ms (DataLoader)",
                    "images/s (in-memory batch)",
                    "median step ms (in-memory)",
                    "in-memory / DataLoader",
                    "peak allocated GiB",
                    "peak reserved GiB",
                ],
                rows,
            )
        )
    variants = [r for r in training if r.get("variant")]
    if variants:
        rows = []
        for r in variants:
            base = next((x for x in plain if x["loader"] == r["loader"] and x["batch_size"] == r["batch_size"]), None)
            rows.append(
                [
                    r["variant"],
                    r["batch_size"],
                    "DataLoader" if r["loader"] == "dataloader" else "in-memory batch",
                    fmt(r["images_per_s"]),
                    fmt(base["images_per_s"]) if base else "n/a",
                    fmt(r["images_per_s"] / base["images_per_s"], 2) if base else "n/a",
                ]
            )
        parts.append(
            "### Training variants\n\n"
            + table(["variant", "batch", "loader", "images/s", "images/s as configured", "ratio"], rows)
        )
    compiled = report.get("compile")
    if compiled:
        if compiled.get("error"):
            parts.append(f"torch.compile: failed ({compiled['error']})")
        else:
            parts.append(
                f"torch.compile (in-memory batch {compiled['batch_size']}): {fmt(compiled['images_per_s'])} images/s against "
                f"{fmt(compiled['eager_images_per_s'])} eager (×{compiled['speedup']:.2f}); compile ≈ "
                f"{compiled['compile_seconds']:.1f} s (warm-up {compiled['warmup_seconds']:.1f} s "
                f"against {compiled['eager_warmup_seconds']:.1f} s eager)"
            )
    infer = report.get("inference", [])
    if infer:
        rows = [
            [
                f"{r['size_hw'][0]}×{r['size_hw'][1]}",
                r["batch"],
                fmt(r["network_images_per_s"]),
                fmt(r["network_ms_per_batch"], 2),
                fmt(r["pipeline_images_per_s"]),
                fmt(r["postprocess_ms_per_image"], 2),
                fmt(r["boxes_per_image"], 0),
            ]
            for r in infer
        ]
        parts.append(
            f"### Inference, {infer[0]['precision']} autocast, channels_last {infer[0]['channels_last']}\n\n"
            + table(
                [
                    "H×W",
                    "batch",
                    "images/s network",
                    "ms/batch network",
                    "images/s network + post-processing",
                    "post-processing ms/image (1 CPU thread)",
                    "boxes/image",
                ],
                rows,
            )
        )
    fit = report.get("memory_fit")
    if fit:
        rows = [
            [f"{c['card_gib']} GiB", c["largest_batch_allocated_fit"], c["largest_batch_reserved_fit"], c["rule_batch"]]
            for c in fit["cards"]
        ]
        parts.append(
            "### Peak memory fit (training, 640×640 crops)\n\n"
            f"allocated ≈ {fit['allocated']['fixed_gib']:.3f} + {fit['allocated']['per_image_gib']:.4f} × batch GiB; "
            f"reserved ≈ {fit['reserved']['fixed_gib']:.3f} + {fit['reserved']['per_image_gib']:.4f} × batch GiB; "
            f"CUDA context outside PyTorch's allocator {fmt(fit['cuda_context_gib'], 2)} GiB\n\n"
            + table(
                ["card", "largest batch (allocated fit)", "largest batch (reserved fit)", "rule: batch ≤ (multiple of 8)"], rows
            )
        )
    for error in report.get("errors", []):
        parts.append(f"Error: {error}")
    return "\n\n".join(parts)


def save(report: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(report) + "\n", encoding="utf-8")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short check: batch sizes 1,2, 1 + 2 steps, 16 training receipts, inference batch 1",
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (and the tables beside it as .md)")
    parser.add_argument("--batch-sizes", default=None, help="training batch sizes (default 16,32,64; --quick 1,2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default 10; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 60; --quick 2)")
    parser.add_argument("--infer-batch", type=int, default=None, help="inference batch (default 8; --quick 1)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="torch.compile run (auto: on CUDA only)")
    parser.add_argument(
        "--data-root", default=None, help="synthetic receipts are built here (default: <tmp>/gpu_throughput_receipts)"
    )
    parser.add_argument("--parts", default="train,infer,compile", help="comma-separated subset of train,infer,compile")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, applied last")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.quick else "16,32,64")).split(",")]
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 60)
    args.infer_batch = args.infer_batch or (1 if args.quick else 8)
    args.infer_iters = 2 if args.quick else 20
    args.infer_repeats = 1 if args.quick else 3
    args.num_val = 2
    args.num_train = 16 if args.quick else None  # None: the preset's
    args.data_root = args.data_root or str(Path(tempfile.gettempdir()) / "gpu_throughput_receipts")
    args.parts = set(args.parts.split(","))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.gpu_throughput", *(argv or sys.argv[1:])]),
        "machine": machine(device),
        "errors": [],
    }
    print(markdown({"machine": report["machine"]}), flush=True)

    def attempt(name: str, function: Callable[..., Any], *args_: Any, **kwargs: Any) -> Any:
        try:
            return function(*args_, **kwargs)
        except Exception as error:  # one part failing must not lose the others' figures
            import traceback

            traceback.print_exc()
            report["errors"].append(f"{name}: {type(error).__name__}: {error}")
            return None
        finally:
            save(report, args.json)

    start = time.perf_counter()
    big = None
    if "train" in args.parts or "compile" in args.parts:
        from ocr.factory import build_datamodule

        cfg = compose(args, device)
        build_start = time.perf_counter()
        build_datamodule(cfg).prepare_data()
        report["setup"] = {
            "data_root": args.data_root,
            "num_train": int(cfg.datasets.synthetic.num_train),
            "build_seconds": time.perf_counter() - build_start,
            "warmup": args.warmup,
            "steps": args.steps,
            "default_workers": int(cfg.datasets.num_workers),
        }
        big = attempt("real batch", real_batch_of, args, device, max(args.batch_sizes))
        report["training"] = []
        if "train" in args.parts and big is not None:
            for size in args.batch_sizes:
                for loader in ("dataloader", "memory"):
                    batch = sub_batch(big, size, device) if loader == "memory" else None
                    row = attempt(f"train bs={size} {loader}", train_run, args, device, size, loader, batch)
                    if row:
                        report["training"].append(row)
                        save(report, args.json)
            middle = args.batch_sizes[len(args.batch_sizes) // 2]
            workers = (os.cpu_count() or 2) - 1
            if workers != report["setup"]["default_workers"] and not args.quick:
                label = f"{workers} DataLoader workers (cpu_count - 1)"
                row = attempt(
                    f"train bs={middle} {label}", train_run, args, device, middle, "dataloader", workers=workers, variant=label
                )
                if row:
                    report["training"].append(row)
            # the other loader at every batch size: on a GPU (where the config streams) the plain one
            label = f"datasets.prefetch_across_epochs={str(not cfg.datasets.prefetch_across_epochs).lower()}"
            for size in [] if args.quick else args.batch_sizes:
                row = attempt(
                    f"train bs={size} {label}", train_run, args, device, size, "dataloader", extra=[label], variant=label
                )
                if row:
                    report["training"].append(row)
            if device == "cuda":
                size = max(args.batch_sizes)
                label = "cudnn.benchmark (trainer.benchmark=true)"
                try:
                    batch = sub_batch(big, size, device)
                    row = attempt(
                        f"train bs={size} {label}",
                        train_run,
                        args,
                        device,
                        size,
                        "memory",
                        batch,
                        extra=["trainer.benchmark=true"],
                        variant=label,
                    )
                finally:
                    torch.backends.cudnn.benchmark = False  # the runs after it as configured (null: off)
                if row:
                    report["training"].append(row)
    if "infer" in args.parts:
        report["inference"] = attempt("inference", inference, args, device) or []
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        report["machine"]["cuda_context_gib"] = (total - free - torch.cuda.memory_reserved()) / GIB
    report["memory_fit"] = memory_fit(report.get("training", []), report["machine"].get("cuda_context_gib"))
    save(report, args.json)
    use_compile = args.compile == "on" or (args.compile == "auto" and device == "cuda")
    if "compile" in args.parts and use_compile and big is not None:
        size = max(args.batch_sizes)
        eager = next((r for r in report["training"] if r["loader"] == "memory" and r["batch_size"] == size), None)

        def compiled_run():
            nonlocal eager
            if eager is None:
                eager = train_run(args, device, size, "memory", sub_batch(big, size, device))
            row = train_run(args, device, size, "memory", sub_batch(big, size, device), compile_model=True)
            return {
                "batch_size": size,
                "images_per_s": row["images_per_s"],
                "eager_images_per_s": eager["images_per_s"],
                "speedup": row["images_per_s"] / eager["images_per_s"],
                "warmup_seconds": row["warmup_seconds"],
                "eager_warmup_seconds": eager["warmup_seconds"],
                "compile_seconds": row["warmup_seconds"] - eager["warmup_seconds"],
                "run": row,
            }

        result = attempt("torch.compile", compiled_run)
        report["compile"] = result if result is not None else {"error": report["errors"][-1]}
    report["seconds"] = time.perf_counter() - start
    save(report, args.json)
    print("\n" + markdown(report), flush=True)
    print(f"\n{report['seconds']:.0f} s in all", flush=True)
    return report


if __name__ == "__main__":
    main()
