"""Build the W&B logger of a run: choose the mode without prompting, fall back to offline when the
server cannot be used, attach metadata to model artifacts, and say how to sync an offline run."""

from __future__ import annotations

import configparser
import logging
import netrc
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.utilities import _scan_checkpoints
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
MODES = ("online", "offline", "disabled", "shared")
# Config keys whose values are never logged (matched case-insensitively inside the key).
SECRET_KEY_PARTS = ("api_key", "apikey", "password", "secret", "token")
# scalar history rows a checkpoint keeps (TrackedWandbLogger.journal): far more than W&B buffers
# before uploading, unless the server was unreachable for a long stretch
JOURNAL_ROWS = 2000


# -- where the server is and whether we can talk to it ------------------------------------------
def resolve_base_url() -> str:
    """``WANDB_BASE_URL``, else the ``base_url`` that ``wandb login --host`` saved, else W&B cloud."""
    url = os.environ.get("WANDB_BASE_URL")
    if url:
        return url.rstrip("/")
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path("~/.config/wandb").expanduser())
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "settings")
        url = parser.get("default", "base_url", fallback=None)
    except (configparser.Error, OSError):
        url = None
    return (url or DEFAULT_BASE_URL).rstrip("/")


def _netrc_paths() -> list[Path]:
    if os.environ.get("NETRC"):
        return [Path(os.environ["NETRC"]).expanduser()]
    return [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]


def netrc_has_key(base_url: str) -> bool:
    """Whether a netrc file (``NETRC`` or ``~/.netrc``) holds a password for the server, as
    ``wandb login`` writes it (machine = host[:port]). Read only; never printed."""
    parts = urlsplit(base_url)
    for path in _netrc_paths():
        if not path.is_file():
            continue
        try:
            entries = netrc.netrc(path)
        except (netrc.NetrcParseError, OSError):
            return False
        for machine in dict.fromkeys(m for m in (parts.netloc, parts.hostname) if m):
            entry = entries.authenticators(machine)
            if entry and entry[2]:
                return True
        return False
    return False


def has_credentials(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    return netrc_has_key(base_url)


def server_reachable(base_url: str, timeout: float) -> bool:
    """A TCP connection to the server's port opens within ``timeout`` seconds (DNS included).

    Behind an HTTP(S) proxy the direct connection says nothing: assume reachable and rely on
    ``init_timeout`` and the fallback around ``wandb.init``."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    import socket

    parts = urlsplit(base_url)
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # bounds a slow DNS lookup too
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def stdin_is_interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def choose_mode(
    requested: str | None = None,
    *,
    fallback: bool = True,
    probe_timeout: float = 5.0,
    interactive: bool | None = None,
) -> tuple[str, str | None]:
    """The W&B mode to use and, when it had to fall back to offline, why.

    ``requested`` (``logger.wandb.mode``) wins over ``WANDB_MODE``; the default is online. Online
    without credentials in a process that cannot prompt (stdin not a terminal), or with a server
    that does not answer, becomes offline: the run is kept locally and can be synced later.
    """
    mode = str(requested or os.environ.get("WANDB_MODE") or "online").strip().lower()
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"W&B mode must be one of {', '.join(MODES)} (got {mode!r} from logger.wandb.mode / WANDB_MODE)")
    if mode != "online" or not fallback:
        return mode, None
    base_url = resolve_base_url()
    if not has_credentials(base_url):
        if interactive is None:
            interactive = stdin_is_interactive()
        if interactive:
            return "online", None  # wandb asks for the key on the terminal
        host = urlsplit(base_url).netloc
        return "offline", (
            f"W&B: no API key found for {base_url} (WANDB_API_KEY, or a ~/.netrc entry for {host} from "
            "`wandb login`) and no terminal to ask for one: logging this run OFFLINE. Set WANDB_API_KEY "
            "(or run `wandb login`) to log online, or WANDB_MODE=offline to silence this warning."
        )
    if not server_reachable(base_url, probe_timeout):
        return "offline", (
            f"W&B: server {base_url} is not reachable (no connection within {probe_timeout:g} s): logging "
            "this run OFFLINE; upload it later with the `wandb sync` command printed at the end."
        )
    return "online", None


# -- never log a secret ---------------------------------------------------------------------------
def scrub_secrets(value: Any) -> Any:
    """A copy of a config container without secret-looking keys, and with the API key (if it
    somehow appears in a value) masked."""
    key = os.environ.get("WANDB_API_KEY")
    if isinstance(value, dict):
        return {k: scrub_secrets(v) for k, v in value.items() if not any(part in str(k).lower() for part in SECRET_KEY_PARTS)}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_secrets(v) for v in value)
    if isinstance(value, str) and key and key in value:
        return value.replace(key, "***")
    return value


# -- the logger -----------------------------------------------------------------------------------
class TrackedWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with

    - a fallback: when ``wandb.init`` fails online (server down, key rejected, timeout), one warning
      and the run is logged offline instead; training never dies because W&B is unreachable;
    - model artifacts (``log_model=True``: aliases ``best``/``latest``) whose metadata carry
      ``val/hmean``, ``epoch``, ``backbone`` and ``image_size`` read from the checkpoint.
    """

    def __init__(self, *args: Any, fallback: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # wandb 0.31 warns about the setting even when unset
        self._fallback = fallback
        self.fell_back_offline = False
        # the latest scalar rows logged, as [W&B step, row]: checkpoints keep them (WandbHistoryJournal)
        # so that a run resumed after kill -9 can send the rows the killed process never uploaded
        self.journal: list[list] = []

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.is_disabled:
            return super().log_metrics(metrics, step)
        row_step = getattr(self.experiment, "step", None)  # the history step this row gets
        super().log_metrics(metrics, step)
        if isinstance(row_step, int):
            row = {
                key: float(value)
                for key, value in metrics.items()
                if isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1)
            }
            if step is not None:
                row["trainer/global_step"] = step
            self.journal.append([row_step, row])
            del self.journal[:-JOURNAL_ROWS]

    @property
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        try:
            return super().experiment
        except Exception as error:  # noqa: BLE001  (any failure to start online: go offline)
            if not self._fallback or self._wandb_init.get("mode") in ("offline", "disabled"):
                raise
            log.warning(
                "W&B: could not start an online run (%s: %s); logging this run OFFLINE instead; upload it "
                "later with the `wandb sync` command printed at the end.",
                type(error).__name__,
                error,
            )
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1, quiet=True)
            self._experiment = None
            self._wandb_init["mode"] = "offline"
            self.fell_back_offline = True
            return super().experiment

    @property
    def is_disabled(self) -> bool:
        return self._wandb_init.get("mode") == "disabled"

    def finalize(self, status: str) -> None:
        """Upload the checkpoints as model artifacts whatever the status: a fit that ends in an
        exception or Ctrl-C keeps its latest checkpoint in W&B too (Lightning's uploads only on
        success)."""
        super().finalize("success")

    def _scan_and_log_checkpoints(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self.is_disabled:
            return  # W&B off: do not copy checkpoints into wandb's staging directory for nothing
        import wandb

        for timestamp, path, score, _ in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": score.item() if isinstance(score, Tensor) else score,
                "monitor": checkpoint_callback.monitor,
                "original_filename": Path(path).name,
                **checkpoint_metadata(path),
            }
            if checkpoint_callback.monitor and metadata["score"] is not None:
                metadata.setdefault(checkpoint_callback.monitor, metadata["score"])
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            # the latest-epoch callback (no monitor) also has a best_model_path: not a "best"
            best = checkpoint_callback.monitor is not None and path == checkpoint_callback.best_model_path
            aliases = ["latest", "best"] if best else ["latest"]
            try:
                artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
                artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
                self.experiment.log_artifact(artifact, aliases=aliases)
            except Exception as error:  # noqa: BLE001  (the checkpoint is on disk: never fail the job for W&B)
                log.warning("W&B: could not log checkpoint %s as a model artifact: %s", path, error)
            self._logged_model_time[path] = timestamp


def checkpoint_metadata(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model artifact says about its checkpoint: epoch, step, validation scores, backbone,
    image size (from the config and metrics the checkpoint carries)."""
    if checkpoint is None:
        import torch

        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as error:  # noqa: BLE001
            log.warning("Cannot read %s for artifact metadata: %s", path, error)
            return {}
    config = checkpoint.get("ocr_config") or {}
    tracking = checkpoint.get("tracking") or {}
    metadata: dict[str, Any] = {
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "backbone": ((config.get("models") or {}).get("encoder") or {}).get("model_name"),
        "image_size": config.get("image_size"),
        "exp_name": config.get("exp_name"),
    }
    metadata.update({k: v for k, v in (tracking.get("metrics") or {}).items()})
    source = tracking.get("wandb") or {}
    if source.get("run_id"):
        metadata["source_run"] = source.get("run_path") or source["run_id"]
    return {k: v for k, v in metadata.items() if v is not None}


def wandb_options(cfg_wandb: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``configs/logger/wandb.yaml`` that go to ``WandbLogger`` / ``wandb.init``."""
    passed = ("project", "entity", "name", "group", "tags", "notes", "id", "log_model", "save_dir", "checkpoint_name")
    options = {k: cfg_wandb.get(k) for k in passed if cfg_wandb.get(k) is not None}
    if options.get("id"):
        options["resume"] = "allow"  # continue that run (resume=), or start it under that id
    if "tags" in options:
        options["tags"] = [str(tag) for tag in options["tags"]]
    return options


def build_wandb_logger(cfg_wandb: dict[str, Any], job_type: str, save_dir: str | Path) -> TrackedWandbLogger:
    """``TrackedWandbLogger`` for ``job_type`` (train, test, predict, rescore) with the mode chosen
    by :func:`choose_mode` (one warning when it falls back to offline)."""
    import wandb

    fallback = bool(cfg_wandb.get("offline_fallback", True))
    mode, reason = choose_mode(cfg_wandb.get("mode"), fallback=fallback, probe_timeout=float(cfg_wandb.get("probe_timeout", 5)))
    if reason:
        log.warning(reason)  # the one warning of a fallback
    options = {"save_dir": str(save_dir), **wandb_options(cfg_wandb)}
    Path(options["save_dir"]).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(init_timeout=float(cfg_wandb.get("init_timeout", 90)))
    return TrackedWandbLogger(job_type=job_type, mode=mode, settings=settings, fallback=fallback, **options)


def find_wandb_logger(loggers: Iterable[Any]) -> TrackedWandbLogger | None:
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)  # type: ignore[return-value]


def active_run(loggers: Iterable[Any]) -> Any | None:
    """The W&B run of ``loggers`` (started if needed) on rank zero; None when disabled or absent."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    logger = find_wandb_logger(loggers)
    if logger is None or rank_zero_only.rank != 0 or getattr(logger, "is_disabled", False):
        return None
    return logger.experiment


def finish_wandb(loggers: Iterable[Any], exit_code: int = 0) -> str | None:
    """Finish the W&B run; for an offline run, print where it is and the exact ``wandb sync``
    command (returned too)."""
    logger = find_wandb_logger(loggers)
    if logger is None or logger._experiment is None:
        return None
    run = logger._experiment
    settings = getattr(run, "settings", None)
    offline = bool(settings is not None and getattr(settings, "_offline", False))
    sync_dir = getattr(settings, "sync_dir", None) if offline else None
    try:
        run.finish(exit_code=exit_code)
    except Exception as error:  # noqa: BLE001  (finishing must not fail the job)
        log.warning("W&B: finishing the run failed: %s", error)
    logger._experiment = None
    if not sync_dir:
        return None
    directory = Path(sync_dir).resolve()
    command = f"wandb sync {shlex.quote(str(directory))}"
    base_url = resolve_base_url()
    server = "" if base_url == DEFAULT_BASE_URL else f" (self-hosted server: set WANDB_BASE_URL={base_url} first)"
    message = f"W&B run saved offline in {directory}\nUpload it with{server}:\n  {command}"
    print(message, flush=True)  # stdout, whatever the logging set-up
    return command
