"""Round trips against a real W&B-compatible server: openwandb (test-only dependency) started on a
free loopback port with a temporary data directory.

(a) a short training run logged online, then test.py online from its checkpoint;
(b) a run with no API key (falls back to offline with one warning), then the printed
    ``wandb sync`` command uploads it.

What arrived is read from the server's own REST API (``wandb.Api().runs`` does not work against
openwandb). openwandb stores run config, summary, history metrics, media files (images, table
JSON) and artifact *rows* (name, type, metadata) but no artifact files, aliases or artifact use
(its ``useArtifact`` is a stub): those are read from the offline run with
``wandb leet inspect --json``.

openwandb 0.5.25 has no sweep API either (no ``upsertSweep`` / agent mutations: ``wandb sweep``
against it fails with ``Unknown operation named ""``). The sweep test therefore runs wandb's own
agent (``wandb.wandb_agent.Agent``, what ``wandb agent --count 2`` runs) with a stand-in for the
server's sweep controller; the trials it starts log to the openwandb server as usual.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import multiprocessing
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ocr.testing import tiny_run_overrides
from ocr.tracking.callbacks import TABLE_COLUMNS

pytestmark = [
    pytest.mark.wandb_server,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("openwandb") is None, reason="openwandb (test-only W&B server) not installed"),
]

ROOT = Path(__file__).resolve().parents[1]
KEY = "local0000000000000000000000000000000000000000"  # openwandb's built-in local key
PROJECT = "receipt-text-detection"
ENTITY = "default"
TRAIN_METRICS = (
    "train/loss", "train/loss_prob", "train/loss_thresh", "train/loss_binary",
    "train/grad_norm", "train/samples_per_sec", "train/epoch_time", "lr-AdamW", "epoch",
    "val/loss", "val/loss_prob", "val/loss_thresh", "val/loss_binary",
    "val/recall", "val/precision", "val/hmean", "val/iou_hmean",
    "best/val_hmean", "test/hmean", "test/recall", "test/precision",
)  # fmt: skip


# openwandb answers W&B's resume query (RunResumeStatus) with a history length of 0, so a resumed
# run would restart at step 0 over its own rows; W&B's server reports the length and the last row.
# The test server is openwandb with that answer filled in from its own metrics table.
SERVE_WITH_RESUME_STATUS = """
import json, sys
from openwandb import graphql_schema as schema
from openwandb import database as db
from openwandb.cli import main

plain = schema._run_to_type

def with_history(run):
    typed = plain(run)
    steps = [row["step"] for row in db.get_metrics(run["run_id"], limit=10**9)]
    if steps:
        typed.history_line_count = max(steps) + 1
        typed.history_tail = json.dumps([json.dumps({"_step": max(steps)})])
    return typed

schema._run_to_type = with_history
sys.argv[0] = "openwandb"
main()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """openwandb on 127.0.0.1:<free port> with a temporary data dir; stopped afterwards."""
    data_dir = tmp_path_factory.mktemp("openwandb")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = (data_dir / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_WITH_RESUME_STATUS, "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        # openwandb reads these when first imported, before its command line (SERVE_WITH_RESUME_STATUS imports it first)
        env={**os.environ, "OPENWANDB_DATA_DIR": str(data_dir), "OPENWANDB_HOST": "127.0.0.1", "OPENWANDB_PORT": str(port)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{url}/api/v2/projects")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"openwandb did not start:\n{(data_dir / 'server.log').read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield {"url": url, "data_dir": data_dir}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-runs")
    return root, tiny_run_overrides(root)


def base_env(root: Path) -> dict[str, str]:
    """The test process's environment minus any W&B credentials / mode, with private W&B dirs
    and an empty netrc: only what a test adds reaches the subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    netrc = root / "empty-netrc"
    netrc.write_text("")
    env.update(
        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", NETRC=str(netrc),
        WANDB_CONFIG_DIR=str(root / "wandb-config"), WANDB_DATA_DIR=str(root / "wandb-data"),
        WANDB_CACHE_DIR=str(root / "wandb-cache"),
    )  # fmt: skip
    return env


def run_script(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "runners" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def short_fit(name: str, out: Path, common: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """runners/train.py with wandb=true: one epoch of 2 steps, every step logged."""
    args = ["wandb=true", f"exp_name={name}", f"output_dir={out}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "trainer.log_every_n_steps=1", *common]  # fmt: skip
    return run_script("train.py", args, env)


def server_run(server: dict, name: str) -> dict:
    runs = get_json(f"{server['url']}/api/v2/projects/{ENTITY}/{PROJECT}/runs")["runs"]
    matching = [run for run in runs if run["display_name"] == name]
    assert len(matching) == 1, [run["display_name"] for run in runs]
    return matching[0]


def unwrap(config: dict) -> dict:
    """W&B stores each top-level config key as {"value": ..., "desc": ...}."""
    return {
        k: v["value"] if isinstance(v, dict) and set(v) <= {"value", "desc"} and "value" in v else v for k, v in config.items()
    }


def server_files(server: dict, run_id: str) -> dict[str, str]:
    files = get_json(f"{server['url']}/api/v1/runs/{run_id}/files")["files"]
    return {f["name"]: f["path"] for f in files}


def server_artifacts(server: dict, run_id: str) -> list[dict]:
    return get_json(f"{server['url']}/api/v2/runs/{run_id}/artifacts")["artifacts"]


def read_server_file(server: dict, run_id: str, name: str) -> bytes:
    with urllib.request.urlopen(f"{server['url']}/files/{ENTITY}/{PROJECT}/{run_id}/{name}", timeout=10) as response:
        return response.read()


def assert_training_run_stored(server: dict, name: str) -> dict:
    """Metric names, resolved config, summary, images, table and model artifact on the server."""
    run = server_run(server, name)
    run_id = run["run_id"]
    assert run["state"] == "finished"
    keys = set(get_json(f"{server['url']}/api/v2/runs/{run_id}/metrics")["keys"])
    assert set(TRAIN_METRICS) <= keys, set(TRAIN_METRICS) - keys

    config = unwrap(run["config"])
    assert config["image_size"] == 256 and config["crop_size"] == 160  # resolved interpolation
    assert config["exp_name"] == name and "${" not in json.dumps(config)
    assert config["models"]["encoder"]["model_name"] == "resnet18"
    for key in ("python", "torch", "lightning", "timm", "wandb", "git_commit", "git_dirty"):
        assert key in config["system"], key
    assert config["num_params"] > 0 and config["dataset_sizes"]["train"] == 4 and config["dataset_sizes"]["val"] == 2
    assert config["job"]["job_type"] == "train"

    summary = run["summary"]
    for key in ("best/val_hmean", "best/epoch", "total_training_time", "test/hmean"):
        assert key in summary, key
    assert summary["total_training_time"] > 0

    files = server_files(server, run_id)
    images = [f for f in files if f.startswith("media/images/val/examples_") and f.endswith(".png")]
    assert len(images) == 2  # num_val images, 1 epoch
    assert read_server_file(server, run_id, images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    tables = [f for f in files if f.startswith("media/table/val/per_image_")]
    assert len(tables) == 1
    table = json.loads(read_server_file(server, run_id, tables[0]))
    assert table["columns"] == list(TABLE_COLUMNS) and len(table["data"]) == 2
    hmeans = [row[1] for row in table["data"]]
    assert hmeans == sorted(hmeans)  # worst first

    artifacts = server_artifacts(server, run_id)
    models = [a for a in artifacts if a["artifact_type"] == "model"]
    assert models and all(a["name"] == f"model-{run_id}" for a in models)
    for artifact in models:
        for key in ("val/hmean", "epoch", "backbone", "image_size"):
            assert key in artifact["metadata"], key
        assert artifact["metadata"]["backbone"] == "resnet18" and artifact["metadata"]["image_size"] == 256
    predictions = [a for a in artifacts if a["artifact_type"] == "dataset"]
    assert [a["name"] for a in predictions] == [f"predictions-{run_id}"]
    assert predictions[0]["metadata"]["num_images"] == 3
    return run


def assert_no_key_in(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert KEY.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def online_fit(server, workspace):
    """A short training run logged online to the server (WANDB_BASE_URL / WANDB_API_KEY in the
    subprocess environment only)."""
    root, common = workspace
    env = {**base_env(root), "WANDB_BASE_URL": server["url"], "WANDB_API_KEY": KEY}
    out = root / "online"
    result = short_fit("online-fit", out, common, env)
    return {"out": out, "env": env, "output": result.stdout + result.stderr}


def test_online_training_run_reaches_the_server(server, online_fit):
    assert "OFFLINE" not in online_fit["output"]
    assert_training_run_stored(server, "online-fit")
    assert_no_key_in(online_fit["out"], server["data_dir"] / "files")


def test_test_run_is_its_own_run_naming_the_model_it_used(server, workspace, online_fit):
    root, common = workspace
    trained = server_run(server, "online-fit")["run_id"]
    checkpoint = next((online_fit["out"] / "checkpoints").glob("epoch*.ckpt"))
    args = ["wandb=true", "exp_name=online-test", f"checkpoint_path={checkpoint}", f"output_dir={root / 'test'}", *common]
    run_script("test.py", args, online_fit["env"])
    tested = server_run(server, "online-test")
    job = unwrap(tested["config"])["job"]
    assert job["job_type"] == "test" and job["model_artifact"] == f"model-{trained}"
    assert job["source_run"].endswith(trained)
    assert "test/hmean" in tested["summary"]
    artifacts = {a["name"]: a for a in server_artifacts(server, tested["run_id"])}
    predictions = artifacts[f"predictions-{tested['run_id']}"]
    assert predictions["artifact_type"] == "dataset" and predictions["metadata"]["split"] == "test"
    assert any(f.startswith("media/table/test/per_image_") for f in server_files(server, tested["run_id"]))
    assert_no_key_in(root / "test")


def test_export_logs_the_onnx_model_as_an_artifact_linked_to_the_checkpoints(server, workspace, online_fit):
    """runners/export.py wandb=true quantize=int8: its own run logs model-<trained run>-onnx (model.onnx
    and its sidecar), whose metadata names the checkpoint's artifact and run, and the int8 copy as
    model-<trained run>-onnx-int8 with its calibration."""
    root, common = workspace
    trained = server_run(server, "online-fit")["run_id"]
    checkpoint = next((online_fit["out"] / "checkpoints").glob("epoch*.ckpt"))
    args = ["wandb=true", "exp_name=online-export", f"checkpoint_path={checkpoint}", f"output={root / 'export' / 'model.onnx'}",
            f"output_dir={root / 'export-run'}", "quantize=int8", f"calibration_images={root / 'data' / 'images' / 'train'}",
            "calibration_count=2", *common]  # fmt: skip
    run_script("export.py", args, online_fit["env"])
    exported = server_run(server, "online-export")
    artifacts = {a["name"]: a for a in server_artifacts(server, exported["run_id"])}
    onnx = artifacts[f"model-{trained}-onnx"]
    assert onnx["artifact_type"] == "model" and onnx["metadata"]["format"] == "onnx"
    assert onnx["metadata"]["checkpoint_artifact"].split(":")[0].endswith(f"model-{trained}")
    assert onnx["metadata"]["source_run"].endswith(trained) and onnx["metadata"]["parity_max_abs_diff"] <= 1e-4
    assert (root / "export" / "model.onnx").is_file() and (root / "export" / "model.onnx.json").is_file()
    int8 = artifacts[f"model-{trained}-onnx-int8"]
    assert int8["artifact_type"] == "model" and int8["metadata"]["quantized_from"] == "model.onnx"
    assert int8["metadata"]["calibration_count"] == 2 and int8["metadata"]["checkpoint_artifact"] == onnx["metadata"]["checkpoint_artifact"]
    assert (root / "export" / "model.int8.onnx").is_file()
    assert_no_key_in(root / "export-run")


def test_rescore_run_scores_the_validation_split_with_new_post_processing(server, workspace, online_fit):
    """One trial of configs/sweep/postprocess.yaml, as the W&B agent would start it."""
    root, common = workspace
    checkpoint = next((online_fit["out"] / "checkpoints").glob("epoch*.ckpt"))
    args = [
        "wandb=true", "exp_name=rescore-trial", f"checkpoint_path={checkpoint}", f"output_dir={root / 'rescore'}",
        "models.postprocess.box_thresh=0.3", "models.postprocess.use_polygon=True", *common,
    ]  # fmt: skip
    run_script("rescore.py", args, online_fit["env"])
    run = server_run(server, "rescore-trial")
    config = unwrap(run["config"])
    assert config["job"]["job_type"] == "rescore" and config["job"]["split"] == "val"
    assert config["models"]["postprocess"]["box_thresh"] == 0.3 and config["models"]["postprocess"]["use_polygon"] is True
    for key in ("val/hmean", "val/recall", "val/precision", "val/iou_hmean"):
        assert key in run["summary"], key  # the sweep's metric
    assert config["dataset_sizes"]["test"] == 2  # the val split went through the test path


def leet_records(run_dir: Path) -> list[dict]:
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    done = subprocess.run(
        [wandb_cli, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120, cwd=run_dir.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_run_without_a_key_goes_offline_then_wandb_sync_uploads_it(server, workspace):
    root, common = workspace
    env = {**base_env(root), "WANDB_BASE_URL": server["url"]}  # no key, no mode, no netrc entry, stdin closed
    out = root / "offline"
    result = short_fit("offline-fit", out, common, env)
    output = result.stdout + result.stderr
    assert output.count("logging this run OFFLINE") == 1  # one clear warning
    sync_lines = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("wandb sync ")]
    assert len(sync_lines) == 1, result.stdout[-2000:]
    run_dir = Path(shlex.split(sync_lines[0])[2])
    assert run_dir.is_dir() and run_dir.parent == out / "wandb" and run_dir.name.startswith("offline-run-")

    # what the server cannot hold (artifact files, aliases) is read from the offline run itself
    records = leet_records(run_dir)
    logged = [r["artifact"] for r in records if r["type"] == "artifact"]
    models = [a for a in logged if a["type"] == "model"]
    assert {alias for a in models for alias in a["aliases"]} >= {"best", "latest"}
    best = next(a for a in models if "best" in a["aliases"])
    assert [entry["path"] for entry in best["manifest"]["contents"]] == ["model.ckpt"]
    metadata = json.loads(best["metadata"])
    assert metadata["backbone"] == "resnet18" and metadata["image_size"] == 256 and "val/hmean" in metadata
    predictions = next(a for a in logged if a["type"] == "dataset")
    assert sorted(e["path"] for e in predictions["manifest"]["contents"]) == ["submission.csv", "submission.json"]
    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    assert any(
        m.get("name") == "val/hmean" and m.get("step_metric") == "epoch" and m.get("summary", {}).get("max") for m in metrics
    )

    # the exact printed command, with the server address and key in its environment only
    sync_env = {**base_env(root), "WANDB_BASE_URL": server["url"], "WANDB_API_KEY": KEY}
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    synced = subprocess.run(
        [wandb_cli, *shlex.split(sync_lines[0])[1:]], env=sync_env, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, cwd=root,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stdout[-2000:] + synced.stderr[-2000:]
    assert_training_run_stored(server, "offline-fit")
    assert_no_key_in(out)


class LocalSweepController:
    """Stands in for the W&B server's sweep controller (which openwandb lacks): serves the sweep
    file's config, registers the agent and hands out one trial per heartbeat while none is
    running, walking a grid of the parameters (``values``; ``min``/``max`` of distributions)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        grid = []
        for name, options in spec["parameters"].items():
            if "value" in options:
                grid.append([(name, options["value"])])
            elif "values" in options:
                grid.append([(name, value) for value in options["values"]])
            else:
                grid.append([(name, options["min"]), (name, options["max"])])
        self.trials = itertools.product(*grid)
        self.started: list[tuple[str, dict]] = []

    def sweep_with_runs(self, api, sweep, specs, **kwargs) -> dict:
        return {"config": yaml.safe_dump(self.spec), "runs": []}

    def register_agent(self, api, host, **kwargs) -> dict:
        return {"id": "local-agent"}

    def heartbeat(self, api, agent_id, metrics, run_states) -> list[dict]:
        if run_states:  # a trial is still running: one at a time, as one agent on one machine
            return []
        trial = next(self.trials, None)
        if trial is None:
            return [{"type": "exit"}]
        run_id = f"sweeptrial{len(self.started)}"
        args = {name: {"value": value} for name, value in trial}
        self.started.append((run_id, dict(trial)))
        return [{"type": "run", "run_id": run_id, "program": self.spec["program"], "args": args}]


def test_postprocess_sweep_runs_two_trials_through_the_wandb_agent(server, workspace, online_fit, monkeypatch):
    """configs/sweep/postprocess.yaml as `wandb agent --count 2` runs it: wandb's Agent expands the
    file's command (${env} ${interpreter} ${program} wandb=true ${args_no_hyphens}) and starts
    runners/rescore.py twice; each trial is a run on the server with its post-processing."""
    from wandb import wandb_agent
    from wandb.apis.public import sweeps as wandb_sweeps

    root, common = workspace
    spec = yaml.safe_load((ROOT / "configs" / "sweep" / "postprocess.yaml").read_text())
    checkpoint = next((online_fit["out"] / "checkpoints").glob("epoch*.ckpt"))
    # as the file's comment says: point checkpoint_path at the model; the small-data settings of
    # this workspace go in as fixed parameters, as a user adds their own
    spec["parameters"]["checkpoint_path"] = {"value": str(checkpoint)}
    for override in [*common, f"output_dir={root / 'sweep'}/${{exp_name}}"]:
        key, value = override.split("=", 1)
        spec["parameters"][key] = {"value": value}

    controller = LocalSweepController(spec)
    monkeypatch.setattr(wandb_sweeps, "_sweep_with_runs", controller.sweep_with_runs)
    monkeypatch.setattr(wandb_sweeps, "_register_agent", controller.register_agent)
    monkeypatch.setattr(wandb_sweeps, "_agent_heartbeat", controller.heartbeat)
    monkeypatch.setattr(wandb_agent.Agent, "POLL_INTERVAL", 1)
    # the agent hands its own environment to the trials: none of this process's W&B settings
    # (conftest.py's WANDB_MODE=disabled), only the server's address and key
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    for key, value in {**base_env(root), "WANDB_BASE_URL": server["url"], "WANDB_API_KEY": KEY}.items():
        monkeypatch.setenv(key, value)
    # what `wandb agent <entity>/<project>/<sweep id>` sets before it starts the agent: inside a sweep
    # wandb takes the project from here and ignores the one the run asks for
    monkeypatch.setenv("WANDB_SWEEP_ID", "localsweep")
    monkeypatch.setenv("WANDB_PROJECT", PROJECT)
    monkeypatch.setenv("WANDB_ENTITY", ENTITY)
    monkeypatch.setenv("WANDB_DIR", str(root / "agent"))
    # the agent starts `python`: this interpreter's environment
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(ROOT)  # the sweep file's program path is relative to the project root
    (root / "agent").mkdir(exist_ok=True)

    agent = wandb_agent.Agent(api=None, queue=multiprocessing.Queue(), sweep_id="localsweep", count=2)
    agent.run()

    assert [run_id for run_id, _ in controller.started] == ["sweeptrial0", "sweeptrial1"]
    assert agent._failed == 0 and agent._finished == 2
    runs = {run["run_id"]: run for run in get_json(f"{server['url']}/api/v2/projects/{ENTITY}/{PROJECT}/runs")["runs"]}
    for run_id, trial in controller.started:
        run = runs[run_id]  # the agent's run id reached wandb.init through WANDB_RUN_ID
        assert run["state"] == "finished"
        config = unwrap(run["config"])
        assert config["job"]["job_type"] == "rescore" and config["job"]["split"] == "val"
        for key in ("thresh", "box_thresh", "box_unclip_ratio", "polygon_unclip_ratio", "use_polygon"):
            assert config["models"]["postprocess"][key] == trial[f"models.postprocess.{key}"], key
        for key in ("val/hmean", "val/recall", "val/precision", "val/iou_hmean"):
            assert key in run["summary"], key  # the sweep's metric, per trial


KILLER = '''
import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL of the training process itself after global step ``step`` (no clean-up runs)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def test_a_run_killed_mid_epoch_resumes_into_the_same_wandb_run(server, workspace, tmp_path):
    """kill -9 in the middle of the second epoch, resume= from last.ckpt: one run on the server whose
    history covers every epoch: the rows the killed process never uploaded (here: all of them, its
    uploads held back) are sent again from the checkpoint's journal at their own steps, the resumed
    part's rows after them (no two rows at one step); best/* and the training time carried over."""
    import torch

    root, common = workspace
    env = {**base_env(root), "WANDB_BASE_URL": server["url"], "WANDB_API_KEY": KEY}
    (tmp_path / "killer.py").write_text(KILLER)
    out = root / "killed"
    args = [*common, "wandb=true", "exp_name=killed", f"output_dir={out}", "trainer.max_epochs=3", "datasets.batch_size=1",
            "checkpoint.every_n_train_steps=1", "trainer.log_every_n_steps=1", "test_after_fit=false",
            "predict_after_fit=false"]  # fmt: skip
    killed = subprocess.run(
        [sys.executable, str(ROOT / "runners" / "train.py"), *args, "+callbacks.killer={_target_: killer.KillAtStep, step: 6}"],
        # history uploads held back for two minutes: the kill loses every row the process logged
        cwd=ROOT, env={**env, "PYTHONPATH": str(tmp_path), "WANDB__FILE_STREAM_TRANSMIT_INTERVAL": "120"},
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = out / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 5  # 4 steps an epoch: killed inside the second
    run_id = state["tracking"]["wandb"]["run_id"]
    best_before = next(v for k, v in state["callbacks"].items() if "WandbBestSummary" in k)
    assert best_before["best"]["val/hmean"][1] is not None and best_before["training_time"] > 0

    resumed = run_script("train.py", [*args, f"resume={last}"], env)
    output = resumed.stdout + resumed.stderr
    assert f"W&B: resuming run default/{PROJECT}/{run_id}" in output
    assert re.search(r"W&B: sent \d+ history rows \(steps 0-\d+\) the interrupted run had not uploaded", output), output[-3000:]

    runs = [run for run in get_json(f"{server['url']}/api/v2/projects/{ENTITY}/{PROJECT}/runs")["runs"] if run["display_name"] == "killed"]
    assert [run["run_id"] for run in runs] == [run_id]  # one run, the checkpoint's
    metrics = get_json(f"{server['url']}/api/v2/runs/{run_id}/metrics")["metrics_by_key"]
    for key, rows in metrics.items():  # no history row of the resumed part lands on one of the first part's
        steps = [row["step"] for row in rows]
        assert len(steps) == len(set(steps)), f"{key}: rows at the same step {sorted(steps)}"
    # the resumed part goes on from the checkpoint (global step 5, inside epoch 1) to the end
    assert max(int(row["value"]) for row in metrics["trainer/global_step"]) == 12  # the last validation's best/* row
    # every epoch: the killed part's epoch 0 (re-sent) and the resumed epochs 1 and 2, validated once each
    assert {int(row["value"]) for row in metrics["epoch"]} == {0, 1, 2}
    assert len(metrics["val/hmean"]) == 3 and len(metrics["best/val_hmean"]) == 3
    summary = get_json(f"{server['url']}/api/v2/runs/{run_id}")["run"]["summary"]
    assert summary["total_training_time"] > best_before["training_time"]  # both parts counted
    assert summary["best/val_hmean"] >= best_before["best"]["val/hmean"][1] and "best/epoch" in summary
