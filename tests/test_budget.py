"""The training time budget: how many epochs fit, and a real fit shortened by it."""

import json

import pytest
import torch

from ocr.budget import TimeBudget, plan_epochs, validations_between
from ocr.submission import read_submission_csv
from ocr.testing import run_runner


def test_validations_count_the_cadence_and_the_last_epoch():
    assert validations_between(0, 48, 4) == 12  # epochs 4, 8, ..., 48 (1-based)
    assert validations_between(0, 13, 4) == 4  # 4, 8, 12 and the last one, 13
    assert validations_between(5, 8, 4) == 1  # only 8
    assert validations_between(3, 3, 4) == 0


def test_plan_fits_steps_and_validations_in_the_remaining_time():
    common = dict(current_epoch=0, steps_done=20, max_epochs=48, steps_per_epoch=100, step_seconds=1.0, val_every=4)
    # 32 epochs: 3,180 steps + 8 validations x 50 s = 3,580 s; 33: 3,280 + 9 x 50 = 3,730 s
    assert plan_epochs(**common, val_seconds=50.0, remaining_seconds=3600) == 32
    assert plan_epochs(**common, val_seconds=50.0, remaining_seconds=3729) == 32
    assert plan_epochs(**common, val_seconds=50.0, remaining_seconds=3730) == 33
    assert plan_epochs(**common, val_seconds=50.0, remaining_seconds=1e9) == 48  # never more than configured
    assert plan_epochs(**common, val_seconds=50.0, remaining_seconds=1) == 1  # the epoch under way ends
    assert plan_epochs(**{**common, "current_epoch": 7, "steps_done": 700}, val_seconds=0.0, remaining_seconds=0) == 8


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="time_budget.minutes must be positive"):
        TimeBudget(0)


@pytest.mark.slow
def test_a_fit_over_its_budget_trains_fewer_epochs_validates_the_last_and_stretches_the_schedule(tiny):
    root, common = tiny
    out = root / "budget"
    # 4 epochs of 2 steps, validated every 3rd; a budget far too small for them: one epoch is planned
    # after the first step, and it is validated although it is off the cadence
    result = run_runner(
        "train.py", "exp_name=budget", f"output_dir={out}", "trainer.max_epochs=4", "trainer.limit_train_batches=2",
        "trainer.check_val_every_n_epoch=3", "time_budget.minutes=0.0001", "time_budget.calibration_steps=1",
        *common,
    )  # fmt: skip
    # the test pass after fit is reserved; the submission is of the test images, so it is written
    # from that pass and no predict pass is reserved
    assert "(+1 evaluation passes after fit) -> 1 of 4 epochs (2 steps)" in result.stdout + result.stderr
    assert set(read_submission_csv(out / "submissions" / "submission.csv")) == set(
        json.loads((root / "data" / "jsons" / "test.json").read_text())["images"]
    )
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2 and checkpoints[0].startswith("epoch000-hmean")  # the best one: validated
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0 and last["global_step"] == 2
    assert last["lr_schedulers"][0]["lr_lambdas"][0]["total_steps"] == 2  # 8 as configured
