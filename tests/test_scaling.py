"""Scaling out: two "nodes" under torchrun on loopback, the run id that keeps parallel runs apart and
every process of one run together, and the SLURM launcher config of Hydra multirun (docs/scaling.md)."""

import csv
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ocr.config import CONFIG_DIR, RUN_ID_ENV, RUN_ID_OWNER_ENV, compose_config, register_resolvers, run_id
from ocr.data.synthetic import build_synthetic_dataset
from ocr.testing import ROOT, run_runner

NEW_RUN_ID = r"\d{8}-\d{6}-[0-9a-f]{6}"  # <YYYYmmdd-HHMMSS>-<6 hex digits>
LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR",
                 "MASTER_PORT", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_STEP_ID",
                 "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", RUN_ID_ENV, RUN_ID_OWNER_ENV)  # fmt: skip


@pytest.fixture
def launcher_env(monkeypatch):
    """No launcher variables; those run_id() exports are undone after the test."""
    for name in LAUNCHER_VARS:
        monkeypatch.setenv(name, "")  # recorded, so restored (or removed) afterwards
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="module")
def data(tiny):
    """The tiny synthetic set built once, before processes that would each build it race."""
    root, common = tiny
    build_synthetic_dataset(root / "data", num_train=4, num_val=2, num_test=3)
    return root, common


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def runner_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for name in LAUNCHER_VARS:  # nothing of this process's own run id or launcher leaks in
        env.pop(name, None)
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's sockets on loopback only
    return env


def run_together(commands: list[list[str]], cwd: Path, timeout: float = 300) -> list[str]:
    """Start ``commands`` at the same moment, wait for all; fails with their output's end unless
    every one exits 0. Returns each one's output (stdout and stderr)."""
    processes = [
        subprocess.Popen(command, cwd=cwd, env=runner_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        for command in commands
    ]  # fmt: skip
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the process and its workers
                process.wait()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, f"{process.args} exited {process.returncode}:\n{output[-6000:]}"
    return outputs


def metrics_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def logged(rows: list[dict[str, str]], prefix: str) -> dict[str, float]:
    """The first row's values of ``prefix``'s scores (recall, precision, hmean, iou_*), as floats."""
    names = ("recall", "precision", "hmean", "iou_recall", "iou_precision", "iou_hmean")
    row = next(row for row in rows if row.get(f"{prefix}/hmean"))
    return {name: float(row[f"{prefix}/{name}"]) for name in names}


# -- the run id -----------------------------------------------------------------------------------
def test_default_run_names_differ_within_one_second_and_agree_within_one_config(launcher_env):
    first, second = compose_config("train"), compose_config("train")  # milliseconds apart
    for cfg in (first, second):
        assert cfg.exp_name == cfg.logger.wandb.name
        assert cfg.output_dir == f"outputs/{cfg.exp_name}"
        prefix = f"{cfg.models.encoder.model_name}-{cfg.image_size}-"
        assert cfg.exp_name.startswith(prefix)
        assert re.fullmatch(NEW_RUN_ID, cfg.exp_name[len(prefix) :]), cfg.exp_name
    assert first.exp_name != second.exp_name


def test_lightning_ddp_workers_inherit_the_run_id_of_the_process_that_started_them(launcher_env):
    chosen = run_id()
    assert os.environ[RUN_ID_ENV] == chosen and os.environ[RUN_ID_OWNER_ENV] == str(os.getpid())
    # a worker Lightning started from this run: LOCAL_RANK=1.., its parent the process that chose the id
    launcher_env.setenv(RUN_ID_OWNER_ENV, str(os.getppid()))
    launcher_env.setenv("LOCAL_RANK", "1")
    assert run_id() == chosen
    # the same variables inherited by an unrelated run started from that process (no LOCAL_RANK): a new id
    launcher_env.setenv(RUN_ID_ENV, chosen)
    launcher_env.setenv(RUN_ID_OWNER_ENV, str(os.getppid()))
    launcher_env.delenv("LOCAL_RANK")
    assert run_id() != chosen
    # set by hand (no owner): every process takes it
    launcher_env.setenv(RUN_ID_ENV, "pinned-7")
    launcher_env.delenv(RUN_ID_OWNER_ENV, raising=False)
    assert run_id() == "pinned-7"
    assert compose_config("train").exp_name.endswith("-pinned-7")


def test_slurm_tasks_of_one_job_step_share_the_run_id(launcher_env):
    launcher_env.setenv("SLURM_JOB_ID", "4242")
    launcher_env.setenv("SLURM_JOB_NAME", "train")
    launcher_env.setenv("SLURM_NTASKS", "8")
    launcher_env.setenv("SLURM_STEP_ID", "0")
    assert run_id() == "slurm4242.0"
    launcher_env.setenv("SLURM_ARRAY_JOB_ID", "4200")
    launcher_env.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_id() == "slurm4200_3.0"
    # one task (a W&B agent running trials one after another in one job), or Lightning's
    # interactive names: a new id each time
    launcher_env.setenv("SLURM_NTASKS", "1")
    assert re.fullmatch(NEW_RUN_ID, run_id())
    launcher_env.setenv("SLURM_NTASKS", "8")
    launcher_env.setenv("SLURM_JOB_NAME", "interactive")
    assert re.fullmatch(NEW_RUN_ID, run_id())


def test_torchrun_workers_agree_on_one_run_id_through_the_agent_store(launcher_env):
    from datetime import timedelta

    from torch.distributed import TCPStore

    port = free_port()
    store = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30), wait_for_workers=False)  # torchrun's agent
    for name, value in (("TORCHELASTIC_RUN_ID", "none"), ("TORCHELASTIC_USE_AGENT_STORE", "True"),
                        ("TORCHELASTIC_RESTART_COUNT", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):  # fmt: skip
        launcher_env.setenv(name, value)
    workers = []
    for _ in range(3):  # each worker resolves on its own
        launcher_env.delenv(RUN_ID_ENV, raising=False)
        launcher_env.delenv(RUN_ID_OWNER_ENV, raising=False)
        workers.append(run_id())
    assert len(set(workers)) == 1 and re.fullmatch(NEW_RUN_ID, workers[0])
    launcher_env.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # torchrun restarted the workers: a new run
    launcher_env.delenv(RUN_ID_ENV, raising=False)
    assert run_id() != workers[0]
    # no agent store (e.g. etcd rendezvous): the rendezvous id
    launcher_env.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    launcher_env.setenv("TORCHELASTIC_RUN_ID", "job 17")
    launcher_env.delenv(RUN_ID_ENV, raising=False)
    assert run_id() == "torchrun-job-17"
    del store


@pytest.mark.slow
def test_runs_started_at_the_same_moment_write_to_their_own_folders(data, tmp_path):
    """Two training runs started together without exp_name (parallel sweep trials): two output
    folders and two run names."""
    root, common = data
    command = [
        sys.executable,
        str(ROOT / "runners" / "train.py"),
        "trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        *common,
    ]
    run_together([command, command], cwd=tmp_path)
    folders = sorted((tmp_path / "outputs").iterdir())
    assert len(folders) == 2, folders
    names = []
    for folder in folders:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["exp_name"] == folder.name == config["logger"]["wandb"]["name"]
        assert (folder / "submissions" / "submission.csv").is_file()
        names.append(config["exp_name"])
    assert names[0] != names[1]


@pytest.mark.slow
def test_lightning_ddp_workers_write_to_the_default_folder_of_the_first(data, tmp_path):
    """trainer.devices=2 on one machine: Lightning starts the second process itself, which composes
    its own config; without exp_name it still resolves the first process's output_dir."""
    root, common = data
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.fast_dev_run=true"]
    run_together([[sys.executable, str(ROOT / "runners" / "train.py"), *ddp, *common]], cwd=tmp_path)
    folders = list((tmp_path / "outputs").iterdir())
    assert len(folders) == 1, folders
    assert (folders[0] / "submissions" / "submission.csv").is_file()


# -- two nodes under torchrun -----------------------------------------------------------------------
def whole_page_first(annotation: Path, target: Path) -> Path:
    """``annotation`` with its first image's words replaced by one word covering the whole page.

    With thresholds near 0 every page gets one whole-page box, whatever the network: the first page
    then scores 1 and the others 0, so one rank's pages alone score otherwise than all of them
    merged, and a single process's scores of the split are known to be the merged ones."""
    images = json.loads(annotation.read_text())["images"]
    first = sorted(images)[0]
    width, height = images[first]["img_w"], images[first]["img_h"]
    page = [[0, 0], [width, 0], [width, height], [0, height]]
    images[first]["words"] = {"0001": {"points": page, "transcription": "PAGE"}}
    target.write_text(json.dumps({"images": images}))
    return target


@pytest.mark.slow
def test_two_nodes_under_torchrun_train_as_one_run_and_score_like_one_process(data, tmp_path):
    """Two torchrun "nodes" of one process each on loopback (c10d rendezvous, gloo): both train one
    run in one output folder (no exp_name given: the default run id is agreed between them), the
    validation and test scores (merged across ranks) equal those of one process scoring the saved
    checkpoint, and the submission is written once with every test image once."""
    root, common = data
    synthetic = root / "data"
    splits = []
    for split in ("train", "val", "test"):
        annotation = synthetic / "jsons" / f"{split}.json"
        if split != "train":
            annotation = whole_page_first(annotation, tmp_path / f"{split}.json")
        splits += [
            f"datasets.splits.{split}.image_dir={synthetic / 'images' / split}",
            f"datasets.splits.{split}.annotation_path={annotation}",
        ]
    # every page one whole-page box (see whole_page_first); float32 on every CPU
    scoring = [
        "models.postprocess.thresh=0.001",
        "models.postprocess.box_thresh=0",
        "trainer.precision=32-true",
        *common,
        *splits,
    ]
    port = free_port()

    def node(rank: int) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=scaling-{port}",
            "--rdzv_conf=join_timeout=120", "--local_addr=127.0.0.1", "--max_restarts=0",
            str(ROOT / "runners" / "train.py"), "trainer.max_epochs=1", "trainer.num_nodes=2", "trainer.devices=1",
            "trainer.accelerator=cpu", "trainer.strategy=ddp", *scoring,
        ]  # fmt: skip

    outputs = run_together([node(0), node(1)], cwd=tmp_path)
    folders = list((tmp_path / "outputs").iterdir())
    assert len(folders) == 1, folders  # rank 1 resolved rank 0's output_dir
    out = folders[0]

    import torch

    best = next((out / "checkpoints").glob("epoch*.ckpt"))
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    # 4 training images, batch 2: one step per process when two processes share them (two alone)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 1)
    rows = metrics_rows(out / "logs" / "train" / "metrics.csv")
    fit_val, fit_test = logged(rows, "val"), logged(rows, "test")
    fit_val_loss = float(next(row["val/loss"] for row in rows if row.get("val/loss")))

    # the submission: written by rank 0 only, every test image exactly once
    assert sum(output.count("Wrote 3 predictions") for output in outputs) == 1
    with (out / "submissions" / "submission.csv").open(newline="") as handle:
        written = [row["filename"] for row in csv.DictReader(handle)]
    assert sorted(written) == sorted(json.loads((synthetic / "jsons" / "test.json").read_text())["images"])

    # one process scores the same checkpoint: the val split (rescore.py, test.py's job on that split)
    # one page a batch, so its mean loss is the mean of the two processes' single pages; the test split (test.py)
    single = [f"checkpoint_path={best}", "trainer.accelerator=cpu", *scoring]
    run_runner("rescore.py", *single, "datasets.eval_batch_size=1", f"output_dir={tmp_path / 'val_single'}")
    run_runner("test.py", *single, f"output_dir={tmp_path / 'test_single'}")
    val_rows = metrics_rows(tmp_path / "val_single" / "logs" / "rescore" / "metrics.csv")
    single_val, single_test = (
        logged(val_rows, "test"),
        logged(metrics_rows(tmp_path / "test_single" / "logs" / "test" / "metrics.csv"), "test"),
    )
    assert fit_val == pytest.approx(single_val, abs=1e-6)
    assert fit_test == pytest.approx(single_test, abs=1e-6)
    assert 0 < fit_val["hmean"] < 1 and 0 < fit_test["hmean"] < 1  # some pages scored 1, others 0: all merged
    # the loss depends on the weights: the fit validated the weights it saved
    assert fit_val_loss == pytest.approx(float(val_rows[0]["test/loss"]), rel=1e-5)
    two_nodes = json.loads((out / "submissions" / "submission.json").read_text())["images"]
    one_process = json.loads((tmp_path / "test_single" / "submissions" / "test_predictions.json").read_text())["images"]
    assert two_nodes == one_process


# -- Hydra multirun on SLURM ------------------------------------------------------------------------
def compose_with_hydra(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes_with_its_settings():
    """hydra/launcher=slurm composes with no plugin installed: every key the plugin reads is in the file."""
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 1, 1)
    assert (launcher.timeout_min, launcher.mem_gb, launcher.array_parallelism) == (720, 64, 8)
    assert OmegaConf.to_container(launcher)["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    # the run config is untouched: one trial is the same run as without the launcher
    plain = compose_with_hydra([])
    for key in ("trainer", "models", "datasets"):
        assert OmegaConf.to_container(cfg[key], resolve=True) == OmegaConf.to_container(plain[key], resolve=True)


def test_slurm_launcher_submits_what_the_config_says(tmp_path, monkeypatch):
    """With the plugin installed (pip install -e ".[cluster]"): every key is one the plugin knows, and
    the sbatch script it would submit asks for what the config says. Nothing is submitted: the job
    array is intercepted, and a stand-in ``srun`` satisfies submitit's check for SLURM."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher.submitit_launcher", reason="optional plugin (extra 'cluster')")
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    cfg = compose_with_hydra([
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ])  # fmt: skip
    assert set(cfg.hydra.launcher) == {field.name for field in dataclasses.fields(SlurmQueueConf)}

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executors = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda self, function, *args: executors.append((self, args)) or [])

    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # as in a Hydra app: the launcher's ${hydra:...} values resolve
    try:
        launcher = instantiate(cfg.hydra.launcher)
        launcher.setup(hydra_context=None, task_function=None, config=cfg)
        launcher.launch([["models.optimizer.lr=1e-3"], ["models.optimizer.lr=5e-4"]], initial_job_idx=0)
    finally:
        HydraConfig.instance().cfg = previous
    ((executor, args),) = executors
    assert len(args[0]) == 2  # two trials, one array
    assert executor._executor.parameters["array_parallelism"] == 8
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("--partition=gpu", "--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8",
                 "--mem=64GB", "--time=720"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, script
