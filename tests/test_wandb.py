"""W&B tracking without a server: mode choice and offline fallback, secrets, artifacts, media,
sweep files, and a run with WANDB_MODE=disabled. (The server round trips are in
tests/test_wandb_server.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ocr.render import GT_COLOUR, PRED_COLOUR, draw_detections
from ocr.testing import tiny_run_overrides
from ocr.tracking import artifacts as tracking_artifacts
from ocr.tracking.wandb_setup import (
    TrackedWandbLogger,
    build_wandb_logger,
    checkpoint_metadata,
    choose_mode,
    finish_wandb,
    scrub_secrets,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = "local0000000000000000000000000000000000000000"


@pytest.fixture
def clean_wandb_env(monkeypatch, tmp_path):
    """No credentials, no mode, private config/data dirs and an empty netrc."""
    for name in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_BASE_URL",
        "WANDB_IDENTITY_TOKEN_FILE",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return tmp_path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("requested", "env", "expected"),
    [
        (None, "offline", "offline"),
        (None, "dryrun", "offline"),
        (None, "disabled", "disabled"),
        ("offline", "online", "offline"),  # logger.wandb.mode wins over WANDB_MODE
        ("disabled", None, "disabled"),
    ],
)
def test_explicit_modes_need_no_credentials(clean_wandb_env, monkeypatch, requested, env, expected):
    if env:
        monkeypatch.setenv("WANDB_MODE", env)
    assert choose_mode(requested, interactive=False) == (expected, None)


def test_online_without_a_key_falls_back_to_offline_without_prompting(clean_wandb_env):
    mode, reason = choose_mode(None, interactive=False)
    assert mode == "offline"
    assert "WANDB_API_KEY" in reason and "OFFLINE" in reason
    # on a terminal wandb may ask for the key itself
    assert choose_mode(None, interactive=True) == ("online", None)
    # the fallback can be switched off
    assert choose_mode(None, fallback=False, interactive=False) == ("online", None)


def test_unreachable_server_falls_back_to_offline_quickly(clean_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    mode, reason = choose_mode(None, probe_timeout=2, interactive=False)
    assert mode == "offline" and "not reachable" in reason


def test_netrc_entry_counts_as_credentials(clean_wandb_env, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        Path(os.environ["NETRC"]).write_text(f"machine 127.0.0.1:{port}\n  login user\n  password {KEY}\n")
        assert choose_mode(None, interactive=False) == ("online", None)


def test_invalid_mode_is_an_error(clean_wandb_env):
    with pytest.raises(ValueError, match="W&B mode"):
        choose_mode("sometimes")


def test_secrets_never_reach_the_config(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    config = {"logger": {"wandb": {"api_key": KEY, "project": "p"}}, "notes": f"key={KEY}", "tags": [KEY], "token": "t"}
    scrubbed = scrub_secrets(config)
    assert KEY not in repr(scrubbed)
    assert scrubbed["logger"]["wandb"] == {"project": "p"} and "token" not in scrubbed


def test_failed_online_init_falls_back_to_an_offline_run(clean_wandb_env, monkeypatch, caplog):
    """A server that cannot be used at wandb.init time (key rejected, timeout): one warning,
    the run continues offline and says how to sync it."""
    import wandb

    real_init = wandb.init

    def flaky_init(*args, **kwargs):
        if kwargs.get("mode") == "online":
            raise wandb.errors.CommError("server unreachable")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setattr("ocr.tracking.wandb_setup.server_reachable", lambda *a, **k: True)
    logger = build_wandb_logger({"project": "p", "name": "n", "log_model": False}, "train", save_dir=clean_wandb_env / "run")
    assert isinstance(logger, TrackedWandbLogger)
    with caplog.at_level("WARNING"):
        run = logger.experiment
    assert logger.fell_back_offline and run.settings._offline
    assert sum("OFFLINE" in record.getMessage() for record in caplog.records) == 1
    run.log({"train/loss": 1.0})
    command = finish_wandb([logger])
    assert command.startswith("wandb sync ") and "offline-run-" in command
    assert Path(command.split(" ", 2)[2]).is_dir()


def fake_checkpoint(path: Path, run_id: str | None = "abc123") -> dict:
    checkpoint = {
        "epoch": 3,
        "global_step": 40,
        "state_dict": {},
        "ocr_config": {"image_size": 256, "exp_name": "x", "models": {"encoder": {"model_name": "resnet18"}}},
        "tracking": {
            "metrics": {"val/hmean": 0.75},
            "wandb": {"run_id": run_id, "run_path": f"team/proj/{run_id}", "artifact": f"model-{run_id}"} if run_id else None,
        },
    }
    torch.save(checkpoint, path)
    return checkpoint


def test_checkpoint_metadata_for_model_artifacts(tmp_path):
    path = tmp_path / "best.ckpt"
    fake_checkpoint(path)
    metadata = checkpoint_metadata(path)
    assert metadata["val/hmean"] == 0.75 and metadata["epoch"] == 3
    assert metadata["backbone"] == "resnet18" and metadata["image_size"] == 256
    assert metadata["source_run"] == "team/proj/abc123"


class FakeRun:
    """Records use_artifact calls (online W&B links the run to the model artifact)."""

    def __init__(self, offline: bool = False):
        self.settings = type("S", (), {"_offline": offline})()
        self.used = []

    def use_artifact(self, artifact, type=None):  # noqa: A002
        self.used.append(artifact)
        return artifact


def test_a_local_checkpoint_is_used_as_its_training_runs_model_artifact(tmp_path):
    path = tmp_path / "epoch003.ckpt"
    checkpoint = fake_checkpoint(path)
    run = FakeRun()
    artifact = tracking_artifacts.use_local_checkpoint(run, path, checkpoint)
    assert run.used == [artifact]
    # same name and file name as the training run's model artifact: W&B links the same version
    assert artifact.name.startswith("model-abc123") and artifact.type == "model"
    assert "model.ckpt" in artifact.manifest.entries
    assert artifact.metadata["val/hmean"] == 0.75
    # no run info in the checkpoint: named after the file
    other = tmp_path / "other.ckpt"
    run2 = FakeRun()
    tracking_artifacts.use_local_checkpoint(run2, other, fake_checkpoint(other, run_id=None))
    assert run2.used[0].name.startswith("model-other")
    # offline runs cannot record artifact use: the config keeps the reference
    offline = FakeRun(offline=True)
    assert tracking_artifacts.use_local_checkpoint(offline, path, checkpoint) is None and offline.used == []
    reference = tracking_artifacts.model_reference(path, checkpoint)
    assert reference["model_artifact"] == "model-abc123" and reference["source_run"] == "team/proj/abc123"


def test_a_wandb_model_reference_is_fetched_through_the_run(tmp_path):
    class FakeArtifact:
        name = "model-abc123:v0"
        qualified_name = "team/proj/model-abc123:v0"

        def download(self, root):
            Path(root).mkdir(parents=True, exist_ok=True)
            (Path(root) / "model.ckpt").write_bytes(b"weights")
            return root

    class Run(FakeRun):
        def use_artifact(self, artifact, type=None):  # noqa: A002
            self.used.append((artifact, type))
            return FakeArtifact()

    run = Run()
    path, artifact = tracking_artifacts.fetch_model_artifact("wandb:team/proj/model-abc123:best", run, tmp_path)
    assert run.used == [("team/proj/model-abc123:best", "model")]  # lineage: this run used that model
    assert path.name == "model.ckpt" and path.read_bytes() == b"weights"
    assert tracking_artifacts.model_reference(path, {}, artifact)["model_artifact"] == "team/proj/model-abc123:v0"


def test_init_from_a_wandb_reference_fetches_the_model_and_the_run_records_it_as_used(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import ocr.run as run_module
    from ocr.config import compose_config

    reference = "wandb:team/proj/model-abc123:best"
    cfg = compose_config("train", [f"init_from={reference}", f"output_dir={tmp_path / 'out'}", "models.decoder.inner_channels=32"])
    # the checkpoint's network: the same decoder at 96 channels
    decoder = {**OmegaConf.to_container(cfg.models.decoder, resolve=True), "inner_channels": 96}
    path = tmp_path / "download" / "model.ckpt"
    path.parent.mkdir()
    checkpoint = {**fake_checkpoint(path), "ocr_config": {"models": {"decoder": decoder}}}
    torch.save(checkpoint, path)
    artifact, calls = object(), []

    def fetch(name, run, root):
        calls.append((name, run, root))
        return path, artifact

    monkeypatch.setattr(run_module, "fetch_model_artifact", fetch)
    start = run_module._weights_to_start_from(cfg)
    assert calls == [(reference, None, tmp_path / "out" / "artifacts")]  # before any run: W&B's public API
    assert start.path == str(path) and start.artifact is artifact and start.checkpoint["epoch"] == 3
    assert cfg.models.decoder.inner_channels == 96  # its network, whatever the command line says

    run = FakeRun()
    monkeypatch.setattr(run_module, "active_run", lambda loggers: run)
    run_module._record_starting_model(compose_config("train", ["wandb=true"]), [], start)
    assert run.used == [artifact]  # lineage: the fine-tuned run used that model
    local = run_module.StartingWeights(str(path), checkpoint, None)
    run_module._record_starting_model(compose_config("train", ["wandb=true"]), [], local)
    assert run.used[1].name.startswith("model-abc123") and run.used[1].type == "model"  # the local file, by its run's name
    run_module._record_starting_model(compose_config("train", ["wandb=false"]), [], start)
    assert len(run.used) == 2


def test_artifact_references():
    assert tracking_artifacts.is_artifact_reference("wandb:team/proj/model-abc:best")
    assert tracking_artifacts.artifact_name("wandb:team/proj/model-abc:best") == "team/proj/model-abc:best"
    assert tracking_artifacts.artifact_name("wandb-artifact://team/proj/model-abc:v3") == "team/proj/model-abc:v3"
    assert not tracking_artifacts.is_artifact_reference("outputs/x/checkpoints/last.ckpt")


def test_draw_detections_colours_ground_truth_and_predictions(tmp_path):
    from PIL import Image

    path = tmp_path / "receipt.png"
    Image.new("RGB", (200, 100), "white").save(path)
    gt = [np.array([[10, 10], [90, 10], [90, 40], [10, 40]], float)]
    found = [np.array([[110, 50], [190, 50], [190, 90], [110, 90]], float)]
    picture = np.asarray(draw_detections(path, gt, [False], found, max_side=100))
    assert picture.shape[:2] == (50, 100)  # scaled to the long side
    colours = {tuple(int(c) for c in p) for p in picture.reshape(-1, 3)}
    assert GT_COLOUR in colours and PRED_COLOUR in colours


@pytest.mark.parametrize("sweep", sorted((ROOT / "configs" / "sweep").glob("*.yaml")), ids=lambda p: p.stem)
def test_sweep_files_drive_the_runners_with_hydra_overrides(sweep):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ocr.config import register_resolvers

    spec = yaml.safe_load(sweep.read_text())
    program = ROOT / spec["program"]
    assert program.is_file()
    assert "${args_no_hyphens}" in spec["command"] and "wandb=true" in spec["command"]
    assert spec["metric"]["name"] and spec["metric"]["goal"] in ("maximize", "minimize")
    overrides = []
    for key, options in spec["parameters"].items():
        if "value" in options:
            value = options["value"]
        elif "values" in options:
            value = options["values"][-1]
        else:
            value = options["min"]
        overrides.append(f"{key}={value}")
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name=program.stem, overrides=overrides)
    for override in overrides:
        key, value = override.split("=", 1)
        assert str(OmegaConf.select(cfg, key)).lower() == str(value).lower(), override


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-data")
    return root, tiny_run_overrides(root)


def test_wandb_true_with_wandb_mode_disabled_trains(tiny_data):
    root, common = tiny_data
    data_dir = root / "wandb-data"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
        "WANDB_DATA_DIR": str(data_dir),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "runners" / "train.py"), "wandb=true", "exp_name=disabled", f"output_dir={root / 'disabled'}",
         "trainer.max_epochs=1", "trainer.limit_train_batches=1", "test_after_fit=false", "predict_after_fit=false", *common],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert (root / "disabled" / "checkpoints" / "last.ckpt").is_file()
    assert not (root / "disabled" / "wandb").exists() or not any((root / "disabled" / "wandb").glob("*run-*"))
    assert "OFFLINE" not in result.stdout + result.stderr
    assert not data_dir.exists() or not any(p.is_file() for p in data_dir.rglob("*"))  # no checkpoint staged


def test_a_failed_or_interrupted_fit_still_uploads_its_checkpoints(monkeypatch, tmp_path):
    # Lightning calls finalize("failed") on an exception or Ctrl-C; its WandbLogger uploads nothing then
    from ocr.tracking.wandb_setup import TrackedWandbLogger

    logger = TrackedWandbLogger(project="p", save_dir=str(tmp_path), mode="offline", log_model=True)
    scanned = []
    monkeypatch.setattr(TrackedWandbLogger, "_scan_and_log_checkpoints", lambda self, callback: scanned.append(callback))
    logger._experiment = object()
    logger._checkpoint_callbacks = {1: "best", 2: "last"}
    logger.finalize("failed")
    assert scanned == ["best", "last"]


def test_resume_logs_into_the_checkpoints_wandb_run_unless_another_is_named():
    from ocr.config import compose_config
    from ocr.run import continue_wandb_run

    checkpoint = {"tracking": {"wandb": {"run_id": "abc123", "run_path": "team/proj/abc123"}}}
    cfg = compose_config("train", ["wandb=true", "resume=last.ckpt"])
    continue_wandb_run(cfg, checkpoint)
    assert cfg.logger.wandb.id == "abc123"
    named = compose_config("train", ["wandb=true", "resume=last.ckpt", "logger.wandb.id=other"])
    continue_wandb_run(named, checkpoint)
    assert named.logger.wandb.id == "other"
    off = compose_config("train", ["resume=last.ckpt"])
    continue_wandb_run(off, checkpoint)
    assert off.logger.wandb.id is None
    from ocr.tracking.wandb_setup import wandb_options

    assert wandb_options({"id": "abc123", "project": "p"})["resume"] == "allow"
    assert "resume" not in wandb_options({"project": "p"})


def test_best_values_and_training_time_carry_over_a_resume():
    from ocr.tracking.callbacks import WandbBestSummary

    first = WandbBestSummary(monitor="val/iou_hmean")
    first.best["val/hmean"][1], first.best["val/iou_hmean"][1], first.best_epoch = 0.9, 0.8, 3
    first._trained_before = 100.0
    resumed = WandbBestSummary(monitor="val/iou_hmean")
    resumed.load_state_dict(first.state_dict())
    assert resumed.best == {"val/hmean": ["max", 0.9], "val/iou_hmean": ["max", 0.8]} and resumed.best_epoch == 3
    assert resumed.training_time() == 100.0
