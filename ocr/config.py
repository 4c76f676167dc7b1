"""OmegaConf resolvers used by the configs, registered on import of the runners."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from ocr.geometry import round_to_multiple

log = logging.getLogger(__name__)

# configs/ of this checkout (the package is installed editable from it)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """The run config ``configs/<name>.yaml`` with ``overrides``, as the runners compose it (outside
    a Hydra app: benchmarks, tests)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def multiple_of_32(value: float, factor: float = 1.0) -> int:
    """``value * factor`` rounded to a multiple of 32 (at least 32): network input sides."""
    return round_to_multiple(float(value) * float(factor))


def default_num_workers() -> int:
    """Half the CPUs (the rest feed the model), at least 1 and at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


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
    30.4 s under bf16 autocast against 3.35 s in float32 (``python -m benchmarks.speed``,
    docs/experiments.md). Not Linux: no /proc/cpuinfo to read, so float32, the safe choice."""
    import torch

    flags = (cpuinfo_field("flags") or "").split()
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and ("avx512_bf16" in flags or "amx_bf16" in flags)
    if not native:
        log.info(
            "this CPU has no native bf16 (AVX512-BF16 or AMX): CPU runs use float32 and contiguous tensors"
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
    on an AVX2 CPU it made the training step slower (3.73 s against 3.35 s,
    ``python -m benchmarks.speed``)."""
    return not trains_in_float32_on_cpu()


def trains_in_float32_on_cpu() -> bool:
    """Whether training here runs on a CPU without native bf16 (no CUDA GPU either): the machines
    where ``auto_precision`` gives ``32-true`` and a training step costs ~4x what it does with
    native bf16."""
    import torch

    return not torch.cuda.is_available() and not cpu_has_native_bf16()


def cuda_available() -> bool:
    """Whether a CUDA GPU is present (``${cuda_available:}``)."""
    import torch

    return torch.cuda.is_available()


def hardware_note(cfg: Any) -> str:
    """One line on what this machine changes in a run: numerics only (precision, memory format,
    DataLoader workers), never the network."""
    import torch

    machine = (
        f"GPU {torch.cuda.get_device_name(0)}"
        if torch.cuda.is_available()
        else f"CPU {'with' if cpu_has_native_bf16() else 'without'} hardware bf16"
    )
    return (
        f"{machine}: precision {cfg.trainer.precision}, channels_last {cfg.lightning_module.get('channels_last')}, "
        f"{cfg.datasets.num_workers} DataLoader workers"
        f"{' prefetching across epochs' if cfg.datasets.get('prefetch_across_epochs') else ''}"
        " (the network is the preset's on every machine)"
    )


def float32_cpu_suggestion(cfg: Any) -> str | None:
    """The preset to suggest on a CPU that trains in float32, where the configured one names a
    cheaper network for such machines (``time_budget.float32_cpu_preset``); else None."""
    budget = cfg.get("time_budget") or {}
    preset = budget.get("float32_cpu_preset")
    if not preset or not budget.get("minutes") or not trains_in_float32_on_cpu():
        return None
    return (
        f"this CPU trains in float32 (no hardware bf16), at about a quarter of the speed: preset={preset} "
        "names a cheaper network that fits the time budget better here"
    )


# The id of the run a process belongs to, for the processes Lightning starts itself (trainer.devices=N
# on one machine: it runs the same command again with LOCAL_RANK=1..N-1 in the environment).
RUN_ID_ENV = "OCR_RUN_ID"
RUN_ID_OWNER_ENV = "OCR_RUN_ID_OWNER"  # the pid of the process that chose it


def run_id() -> str:
    """A short id that tells this run from every other, and is the same in every process of one
    distributed run (``${run_id:}``: the end of the default ``exp_name``, so of ``output_dir`` and
    the W&B run name).

    - ``OCR_RUN_ID`` when set by hand (pin one id on every node of another launcher), or by the
      process that started this one as its DDP worker (Lightning's own launcher,
      ``trainer.devices=N`` on one machine);
    - under torchrun: one id for all its workers, agreed through the store that torchrun's agent
      serves at MASTER_ADDR:MASTER_PORT (static and c10d rendezvous; a new one for each torchrun
      launch and restart), else the rendezvous id (``--rdzv_id``);
    - under SLURM with several tasks (``srun``, what Lightning's SLURMEnvironment reads): the job
      step, ``slurm<job id>.<step>`` (``<array job>_<array task>`` for array jobs);
    - else a new one: ``<YYYYmmdd-HHMMSS>-<6 random hex digits>``, so runs started in the same
      second (sweep trials, parallel jobs) still differ.
    """
    inherited = os.environ.get(RUN_ID_ENV)
    owner = os.environ.get(RUN_ID_OWNER_ENV)
    if inherited and (owner is None or (owner == str(os.getppid()) and os.environ.get("LOCAL_RANK", "0") != "0")):
        return inherited
    value = _launcher_run_id() or _new_run_id()
    os.environ[RUN_ID_ENV] = value  # the DDP workers Lightning starts from this process inherit it
    os.environ[RUN_ID_OWNER_ENV] = str(os.getpid())
    return value


def _new_run_id() -> str:
    import secrets
    import time

    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _launcher_run_id() -> str | None:
    """The run's id as every process of a torchrun or multi-task SLURM launch sees it; None outside."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        agreed = _agree_through_torchelastic_store()
        if agreed:
            return agreed
        rendezvous = _safe_name(os.environ["TORCHELASTIC_RUN_ID"])
        if rendezvous and rendezvous != "none":
            return f"torchrun-{rendezvous}"
        log.warning("torchrun without an agent store or --rdzv_id: every launch on this port gets one run id; pass exp_name=")
        return f"torchrun-{_safe_name(os.environ.get('MASTER_ADDR', ''))}-{os.environ.get('MASTER_PORT', '')}"
    tasks = os.environ.get("SLURM_NTASKS", "1")
    if (
        "SLURM_JOB_ID" in os.environ
        and tasks.isdigit()
        and int(tasks) > 1
        and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")  # Lightning's own test
    ):
        job = os.environ["SLURM_JOB_ID"]
        if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        step = os.environ.get("SLURM_STEP_ID")
        return _safe_name(f"slurm{job}" + (f".{step}" if step else ""))
    return None


def _agree_through_torchelastic_store(timeout_s: float = 120.0) -> str | None:
    """One new id for every worker of this torchrun launch: the first to ask stores one in the
    agent's TCP store (MASTER_ADDR:MASTER_PORT, which torchrun serves for its workers when
    TORCHELASTIC_USE_AGENT_STORE is True), the others read it. None when there is no such store."""
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT", "")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not address or not port.isdigit():
        return None
    from datetime import timedelta

    from torch.distributed import TCPStore

    key = f"ocr/run_id/{os.environ['TORCHELASTIC_RUN_ID']}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    try:
        store = TCPStore(address, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))
        if store.add(f"{key}/claimed", 1) == 1:
            store.set(key, _new_run_id())
        return store.get(key).decode()
    except Exception as error:  # noqa: BLE001 - any failure: fall back to the rendezvous id
        log.warning("could not agree on a run id through torchrun's store at %s:%s (%s)", address, port, error)
        return None


def _safe_name(text: str) -> str:
    """``text`` with only letters, digits and ``._-`` (a folder and W&B run name)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def register_resolvers() -> None:
    resolvers = {
        "multiple_of_32": multiple_of_32,
        "num_workers": default_num_workers,
        "auto_precision": auto_precision,
        "auto_channels_last": auto_channels_last,
        "cuda_available": cuda_available,
    }
    for name, function in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
    if not OmegaConf.has_resolver("run_id"):
        # cached per composed config: every ${run_id:} of one config is one value
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)


def backbone_blocks(block: Any, key: str) -> list[tuple[str, DictConfig]]:
    """``(key, block)`` for a model config block and for each encoder block it combines
    (``ocr.models.encoder.ConcatEncoder``'s ``encoders``, keyed ``<key>.encoders.<i>``): the blocks
    that may name pretrained weights to fetch or to skip. Nothing for a block that is not a mapping."""
    if not isinstance(block, DictConfig):
        return []
    nested = block.get("encoders")
    items = enumerate(nested) if isinstance(nested, ListConfig) else ()
    return [(key, block)] + [(f"{key}.encoders.{i}", item) for i, item in items if isinstance(item, DictConfig)]
