"""Reading checkpoints, and the rules by which a checkpoint's settings reach the run config.

A checkpoint carries the resolved config of the run that wrote it (``checkpoint["ocr_config"]``):
test, predict, export and resume rebuild its network from it, whatever the command line's preset
says, and infer as it was validated unless the command line names a setting.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ocr.config import backbone_blocks

log = logging.getLogger(__name__)

# Parts of the config that define the network's weights: a checkpoint carries them so test
# and predict rebuild the same architecture whatever the command line says.
ARCHITECTURE_KEYS = ("network", "encoder", "decoder", "head")
# How a checkpoint was validated while it trained: test, predict and the benchmarks infer the same
# way (a receipt checkpoint trained at long side 1600 is not scored at the default 640) unless the
# command line names the setting. A preset alone does not count: `checkpoint_path=` is enough.
INFERENCE_KEYS = ("image_size", "datasets.eval_resize", "models.postprocess", "lightning_module.tta_scales")
# a setting that follows another one: `image_size=...` on the command line sizes evaluation too
FOLLOWS = {"datasets.eval_resize.image_size": "image_size"}
_ABSENT = object()
# Classes that moved: a checkpoint's config names them at their old place
MOVED_TARGETS = {"ocr.postprocess.DBPostProcessor": "ocr.models.postprocess.DBPostProcessor"}


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this trainer (named in the message)."""


def with_current_targets(value: Any) -> Any:
    """``value`` (a config tree) with every ``_target_`` of a moved class at its current place."""
    if isinstance(value, dict):
        return {k: (MOVED_TARGETS.get(v, v) if k == "_target_" else with_current_targets(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [with_current_targets(v) for v in value]
    return value


def load_checkpoint_into(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read ``cfg.checkpoint_path``; put its architecture into ``cfg.models`` (the weights
    only fit the network they were trained with) and its inference settings (``INFERENCE_KEYS``)
    into ``cfg`` except those named in ``overrides`` (by default the Hydra command line), and
    return the checkpoint."""
    checkpoint = read_checkpoint(cfg.checkpoint_path)
    run_config = with_current_targets(checkpoint.get("ocr_config") or {})
    adopt_architecture(cfg, run_config)
    adopt_inference_settings(cfg, run_config, command_line_keys(overrides))
    return checkpoint


def read_checkpoint(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint of this trainer onto the CPU. ``mmap``: tensors stay on disk until
    touched (for reading only its config).

    Raises FileNotFoundError for a missing file and CheckpointError for anything that is not such
    a checkpoint (empty, truncated, random bytes, another program's file), naming the file, ``what``
    it was for and what was expected."""
    path = Path(path)
    expected = "a .ckpt file written by runners/train.py (Lightning checkpoint with state_dict)"
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found; expected {expected}")
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is not a file; expected {expected}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: {what} is empty (0 bytes); expected {expected}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: {what} is not a PyTorch checkpoint (truncated or another format); expected {expected}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as error:  # a damaged archive fails in many ways inside torch
        raise CheckpointError(
            f"{path}: {what} could not be read ({type(error).__name__}: {error}); expected {expected}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: {what} holds no state_dict (not a Lightning checkpoint); expected {expected}")
    return checkpoint


def read_architecture_into(cfg: DictConfig, path: str | Path, what: str) -> dict[str, Any]:
    """Read the checkpoint at ``path`` (``what`` it is for, named in errors) memory-mapped, put its
    network into ``cfg.models`` (:func:`adopt_architecture`) and return it: resume= and init_from=
    train the network the weights were trained with."""
    checkpoint = read_checkpoint(path, what, mmap=True)
    adopt_architecture(cfg, with_current_targets(checkpoint.get("ocr_config") or {}))
    return checkpoint


def adopt_architecture(cfg: DictConfig, run_config: dict[str, Any]) -> None:
    """Put the checkpoint's network (``ARCHITECTURE_KEYS`` of its resolved ``run_config``) into
    ``cfg.models``: its weights fit only that network, whatever this machine's config resolves to
    (``preset=sroie`` builds a narrower ResNet18 on float32 CPUs). A timm encoder is built without
    its ImageNet weights (``pretrained: false``): the checkpoint's replace them, and a machine without
    internet could not fetch them."""
    stored = run_config.get("models", {})
    if stored and "network" not in stored:  # saved before models.network existed: a DBNet
        stored = {**stored, "network": None}
    for key in ARCHITECTURE_KEYS:
        if key in stored:
            current = cfg.models.get(key)
            if (OmegaConf.to_container(current, resolve=True) if isinstance(current, DictConfig) else current) != stored[key]:
                log.info("Using the checkpoint's models.%s settings: %s", key, stored[key])
            with open_dict(cfg.models):
                cfg.models[key] = stored[key]
    for _, block in backbone_blocks(cfg.models.get("encoder"), "models.encoder"):
        if block.get("pretrained"):
            with open_dict(block):
                block.pretrained = False


def load_weights_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Copy a checkpoint's ``state_dict`` into ``module``; raise CheckpointError naming the file and
    the tensors that do not fit (missing, unexpected, or of another shape) instead of torch's error."""
    own = module.state_dict()
    problems = {
        "missing": [k for k in own if k not in state_dict],
        "unexpected": [k for k in state_dict if k not in own],
        "of another shape": [
            f"{k} {tuple(state_dict[k].shape)} for {tuple(own[k].shape)}"
            for k in own
            if k in state_dict and state_dict[k].shape != own[k].shape
        ],
    }
    found = [
        f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" for what, keys in problems.items() if keys
    ]
    if found:
        raise CheckpointError(f"{path}: its weights do not fit the network built for them: " + "; ".join(found))
    module.load_state_dict(state_dict)


def command_line_keys(overrides: list[str] | None = None) -> set[str]:
    """The config keys set by ``overrides`` (``key=value``, ``+key=value``...); by default
    the command line of the running Hydra app, none outside one."""
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides}


def _leaves(value: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, f"{prefix}.{key}")]
    return [(prefix, value)]


def _nested(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def adopt_inference_settings(cfg: DictConfig, run_config: dict[str, Any], named: set[str]) -> dict[str, Any]:
    """Put the checkpoint's ``INFERENCE_KEYS`` (from its resolved ``run_config``) into ``cfg``,
    leaf by leaf, except the leaves ``named`` (or under a named key) on the command line;
    returns what changed."""

    def is_named(leaf: str) -> bool:
        keys = [leaf, FOLLOWS.get(leaf, leaf)]
        return any(k == name or k.startswith(name + ".") for k in keys for name in named)

    changed = {}
    for key in INFERENCE_KEYS:
        for leaf, value in _leaves(_nested(run_config, key), key):
            if value is _ABSENT or is_named(leaf):
                continue
            current = OmegaConf.select(cfg, leaf, default=_ABSENT)
            if current is _ABSENT:  # a setting this version no longer has
                continue
            if isinstance(current, (DictConfig, ListConfig)):
                current = OmegaConf.to_container(current, resolve=True)
            if current != value:
                OmegaConf.update(cfg, leaf, value, merge=False)
                changed[leaf] = value
    if changed:
        log.info(
            "Inferring as the checkpoint was validated (name a setting on the command line to change it): %s",
            ", ".join(f"{k}={v}" for k, v in changed.items()),
        )
    return changed


