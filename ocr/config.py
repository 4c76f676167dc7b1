"""OmegaConf resolvers used by the configs, registered on import of the runners."""

from __future__ import annotations

import functools
import logging
from typing import Any

from omegaconf import OmegaConf

from ocr.data.datamodule import default_num_workers

log = logging.getLogger(__name__)


def multiple_of_32(value: float, factor: float = 1.0) -> int:
    """``value * factor`` rounded to a multiple of 32 (at least 32): network input sides."""
    return max(32, int(round(float(value) * float(factor) / 32)) * 32)


def cpuinfo_field(name: str) -> str | None:
    """The first ``name`` line of Linux's /proc/cpuinfo (e.g. ``flags``, ``model name``); None
    where there is no such file or line."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16) and oneDNN uses it.

    Elsewhere (AVX2-only CPUs: AMD Zen 1-3, many laptops) PyTorch emulates bf16 on the CPU:
    on a 2-core AMD EPYC with AVX2 only, a DBNet training step (ResNet18, 384², batch 4) took
    30.4 s under bf16 autocast against 3.35 s in float32 (``benchmarks/speed.py``, README
    "Performance"). Not Linux: no /proc/cpuinfo to read, so float32, the safe choice."""
    import torch

    flags = (cpuinfo_field("flags") or "").split()
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and ("avx512_bf16" in flags or "amx_bf16" in flags)
    if not native:
        log.info(
            "this CPU has no native bf16 (AVX512-BF16 or AMX): CPU runs use float32, contiguous tensors "
            "and the config's choices for float32 CPUs (if_float32_cpu)"
        )
    return native


def auto_precision() -> str:
    """bf16 mixed precision where it is fast and safe (bf16 GPUs, CPUs that compute bf16 in
    hardware), fp16 mixed on other GPUs, float32 on other CPUs (see ``cpu_has_native_bf16``).

    On a 2-core CPU with native bf16, bf16 autocast + channels_last trains DBNet ~2x faster than float32.
    """
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def auto_channels_last() -> bool:
    """channels_last where the convolutions are faster with it: GPUs and bf16 CPUs. In float32
    on an AVX2 CPU it made the training step slower (3.73 s against 3.35 s, ``benchmarks/speed.py``)."""
    return not trains_in_float32_on_cpu()


def trains_in_float32_on_cpu() -> bool:
    """Whether training here runs on a CPU without native bf16 (no CUDA GPU either): the machines
    where ``auto_precision`` gives ``32-true`` and a training step costs ~4x what it does with
    native bf16."""
    import torch

    return not torch.cuda.is_available() and not cpu_has_native_bf16()


def if_float32_cpu(value: Any, otherwise: Any) -> Any:
    """``value`` on a CPU that trains in float32 (see ``trains_in_float32_on_cpu``), else
    ``otherwise``: a recipe's cheaper choice for the machines where its steps cost the most."""
    return value if trains_in_float32_on_cpu() else otherwise


def register_resolvers() -> None:
    resolvers = {
        "multiple_of_32": multiple_of_32,
        "num_workers": default_num_workers,
        "auto_precision": auto_precision,
        "auto_channels_last": auto_channels_last,
        "if_float32_cpu": if_float32_cpu,
    }
    for name, function in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
