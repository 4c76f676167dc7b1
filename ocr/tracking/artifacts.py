"""W&B artifacts around test / predict: the model a run used (lineage) and the predictions it wrote."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ocr.tracking.wandb_setup import checkpoint_metadata

log = logging.getLogger(__name__)

ARTIFACT_PREFIXES = ("wandb-artifact://", "wandb:")


def is_artifact_reference(path: Any) -> bool:
    """``checkpoint_path=wandb:<entity>/<project>/model-<run id>:<alias or version>``
    (``wandb-artifact://...`` works too)."""
    return isinstance(path, str) and path.startswith(ARTIFACT_PREFIXES)


def artifact_name(reference: str) -> str:
    for prefix in ARTIFACT_PREFIXES:
        if reference.startswith(prefix):
            reference = reference[len(prefix) :]
            break
    return reference.lstrip("/")


def safe_name(text: str) -> str:
    """Artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def fetch_model_artifact(reference: str, run: Any | None, download_root: Path) -> tuple[Path, Any]:
    """Download a model artifact and return its checkpoint file and the artifact. With an online
    run it goes through ``run.use_artifact`` so W&B records that this run used that model."""
    import wandb

    name = artifact_name(reference)
    online = run is not None and not getattr(run.settings, "_offline", False)
    try:
        artifact = run.use_artifact(name, type="model") if online else wandb.Api().artifact(name, type="model")
    except Exception as error:  # noqa: BLE001
        raise RuntimeError(
            f"cannot fetch the W&B model artifact {name!r} ({type(error).__name__}: {error}). It needs the W&B server "
            "and an API key; on a machine without network, download it where there is one "
            f"(`wandb artifact get {name} --root <dir>`) and pass checkpoint_path=<dir>/model.ckpt"
        ) from error
    target = download_root / safe_name(name)
    directory = Path(artifact.download(root=str(target)))
    files = sorted(directory.glob("*.ckpt"))
    if not files:
        raise FileNotFoundError(f"the W&B artifact {name!r} holds no .ckpt file (downloaded to {directory})")
    checkpoint = directory / "model.ckpt" if (directory / "model.ckpt").is_file() else files[0]
    log.info("Using checkpoint %s from W&B artifact %s", checkpoint, name)
    return checkpoint, artifact


def use_local_checkpoint(run: Any | None, path: str | Path, checkpoint: dict[str, Any]) -> Any | None:
    """Record a local checkpoint file as the model artifact this run used.

    The artifact takes the name the training run gave its model artifact (``model-<run id>``,
    stored in the checkpoint by :class:`~ocr.tracking.callbacks.CheckpointRunInfo`) and the file
    under the same name (``model.ckpt``): W&B deduplicates by content, so when that training run
    logged this very file, this run is linked to the same artifact version; otherwise a new version
    is created from the file. Offline runs cannot record artifact use (W&B raises): then the
    reference is kept in the run config only (``job.model_artifact``)."""
    if run is None:
        return None
    import wandb

    source = (checkpoint.get("tracking") or {}).get("wandb") or {}
    name = safe_name(source.get("artifact") or f"model-{Path(path).stem}")
    if getattr(run.settings, "_offline", False):
        log.info("W&B offline: model artifact %s is recorded in the config only (no lineage offline)", name)
        return None
    metadata = {**checkpoint_metadata(path, checkpoint), "local_path": str(Path(path).resolve())}
    artifact = wandb.Artifact(name=name, type="model", metadata=metadata)
    artifact.add_file(str(path), name="model.ckpt", policy="immutable")
    try:
        return run.use_artifact(artifact)
    except Exception as error:  # noqa: BLE001  (lineage is a nice-to-have: never fail the job)
        log.warning("W&B: could not record model artifact %s as used: %s", name, error)
        return None


def model_reference(path: str | Path, checkpoint: dict[str, Any], artifact: Any | None = None) -> dict[str, Any]:
    """What the run config says about the model it evaluated."""
    source = (checkpoint.get("tracking") or {}).get("wandb") or {}
    reference = {
        "checkpoint_path": str(path),
        "model_artifact": getattr(artifact, "qualified_name", None) or getattr(artifact, "name", None) or source.get("artifact"),
        "source_run": source.get("run_path"),
        **{f"checkpoint_{k}": v for k, v in checkpoint_metadata(path, checkpoint).items() if k in ("epoch", "global_step")},
    }
    return {k: v for k, v in reference.items() if v is not None}


def log_predictions_artifact(run: Any | None, paths: dict[str, Path], metadata: dict[str, Any], kind: str) -> Any | None:
    """Upload the JSON + CSV predictions as a ``dataset`` artifact ``predictions-<run id>``."""
    if run is None:
        return None
    import wandb

    artifact = wandb.Artifact(name=f"predictions-{run.id}", type="dataset", metadata={"kind": kind, **metadata})
    for path in paths.values():
        artifact.add_file(str(path), name=Path(path).name)
    try:
        return run.log_artifact(artifact, aliases=["latest", kind])
    except Exception as error:  # noqa: BLE001
        log.warning("W&B: could not log the predictions artifact: %s", error)
        return None
