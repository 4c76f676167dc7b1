"""Every sweep file optimises a metric that runs actually log, under every preset."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from ocr.config import CONFIG_DIR, compose_config
from ocr.factory import build_tracking_callbacks
from ocr.tracking.callbacks import WandbBestSummary

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "preset").glob("*.yaml"))
SWEEPS = {p.stem: yaml.safe_load(p.read_text()) for p in (CONFIG_DIR / "sweep").glob("*.yaml")}
# what each job logs at validation/scoring, besides the best-so-far keys
VALIDATION_METRICS = ("val/hmean", "val/recall", "val/precision", "val/iou_hmean", "val/iou_recall", "val/iou_precision")


class RecordingRun:
    def __init__(self):
        self.history: list[dict] = []
        self.summary: dict = {}

    def log(self, row):
        self.history.append(dict(row))


def validate(callback: WandbBestSummary, run: RecordingRun, epoch: int, metrics: dict[str, float]) -> None:
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        current_epoch=epoch,
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        loggers=[],
    )
    callback.on_validation_end(trainer, None)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_training_sweep_metric_is_logged_under_every_preset(preset, monkeypatch):
    cfg = compose_config("train", [f"preset={preset}", "wandb=true"])
    best = [c for c in build_tracking_callbacks(cfg, "train") if isinstance(c, WandbBestSummary)]
    assert len(best) == 1
    run = RecordingRun()
    monkeypatch.setattr("ocr.tracking.callbacks.active_run", lambda loggers: run)
    for epoch, hmean in enumerate((0.5, 0.7, 0.6)):
        validate(best[0], run, epoch, {name: hmean for name in VALIDATION_METRICS})
    logged = set(run.summary) | {key for row in run.history for key in row}
    metric = SWEEPS["train"]["metric"]["name"]
    assert metric in logged, f"preset={preset}: the sweep optimises {metric}, which is never logged ({sorted(logged)})"
    assert run.summary["best/val_hmean"] == pytest.approx(0.7) and run.summary["best/epoch"] == 1
    monitor_key = "best/" + cfg.checkpoint.monitor.replace("/", "_")
    assert run.summary[monitor_key] == pytest.approx(0.7)  # best/<monitor> too, when it is another metric


def test_the_postprocess_sweep_metric_is_what_rescore_writes():
    # rescore scores the val split through the test path and names its scores val/* in the summary
    assert SWEEPS["postprocess"]["metric"]["name"] in {f"val/{m.split('/')[1]}" for m in VALIDATION_METRICS}
    assert SWEEPS["postprocess"]["program"] == "runners/rescore.py"
    assert Path(CONFIG_DIR.parent, SWEEPS["postprocess"]["program"]).is_file()
    assert Path(CONFIG_DIR.parent, SWEEPS["train"]["program"]).is_file()
