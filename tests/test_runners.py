"""The real runners, end to end, on a tiny synthetic receipt set (fast_dev_run and a short fit)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ocr.submission import read_submission_csv
from ocr.testing import ROOT, run_runner

pytestmark = pytest.mark.slow


def test_train_fast_dev_run(tiny):
    root, common = tiny
    result = run_runner("train.py", "exp_name=fdr", f"output_dir={root / 'fdr'}", "trainer.fast_dev_run=true", *common)
    assert "Generated 9 synthetic receipts" in result.stderr + result.stdout
    assert (root / "fdr" / "config.yaml").is_file()
    assert (root / "fdr" / "submissions" / "submission.csv").is_file()
    assert "stay in eval mode in training" not in result.stderr + result.stdout  # the example trains every batch norm


def test_train_names_the_batch_norm_it_keeps_on_pretrained_statistics(tiny):
    # Lightning warns about every module in eval mode at the start of fit; the log says which and why
    root, common = tiny
    result = run_runner(
        "train.py", "exp_name=frozen_bn", f"output_dir={root / 'frozen_bn'}", "trainer.fast_dev_run=true",
        "models.encoder.freeze_batch_norm=true", *common,
    )
    line = next(line for line in (result.stderr + result.stdout).splitlines() if "stay in eval mode in training" in line)
    assert "freeze_batch_norm" in line and "model.encoder.model.bn1" in line, line


@pytest.fixture(scope="module")
def trained(tiny):
    root, common = tiny
    out = root / "fit"
    # two epochs, and the best is epoch 0 whatever the scores (monitor the epoch, lowest first)
    run_runner(
        "train.py", "exp_name=fit", f"output_dir={out}", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
        "trainer.log_every_n_steps=1", "checkpoint.monitor=epoch", "checkpoint.mode=min", *common,
    )
    return out


def test_short_fit_writes_checkpoints_logs_and_a_valid_submission(trained, tiny):
    import torch

    root, _ = tiny
    checkpoints = sorted(p.name for p in (trained / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2 and checkpoints[0].startswith("epoch000-hmean") and checkpoints[1] == "last.ckpt"
    # last.ckpt is the latest epoch (what resume= needs), not a copy of the best one
    best, last = (torch.load(trained / "checkpoints" / name, map_location="cpu", weights_only=False) for name in checkpoints)
    assert (best["epoch"], best["global_step"]) == (0, 2)
    assert (last["epoch"], last["global_step"]) == (1, 4)
    with (trained / "logs" / "train" / "metrics.csv").open() as handle:
        columns = next(csv.reader(handle))
    for name in ("train/loss", "val/hmean", "val/recall", "val/precision", "val/iou_hmean", "test/hmean"):
        assert name in columns
    rows = read_submission_csv(trained / "submissions" / "submission.csv")
    truth = json.loads((root / "data" / "jsons" / "test.json").read_text())["images"]
    assert set(rows) == set(truth)  # every test image present
    predictions = json.loads((trained / "submissions" / "submission.json").read_text())["images"]
    assert set(predictions) == set(truth)


def test_resume_continues_from_the_latest_epoch_and_keeps_the_first_logs(trained, tiny):
    import shutil

    import torch

    root, common = tiny
    out = root / "resumed"
    shutil.copytree(trained, out)
    first_log = (out / "logs" / "train" / "metrics.csv").read_text()
    # a config that resolves to another network (as preset=sroie does on another kind of machine):
    # the run goes on with the checkpoint's
    result = run_runner(
        "train.py", "exp_name=fit", f"output_dir={out}", f"resume={out / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_epochs=3", "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1",
        "checkpoint.monitor=epoch", "checkpoint.mode=min", "predict_after_fit=false", *common,
        "models.decoder.inner_channels=32",
    )  # fmt: skip
    assert "Using the checkpoint's models.decoder settings" in result.stdout + result.stderr
    assert "inner_channels: 64" in (out / "config.yaml").read_text()
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)  # one more epoch after the two already run
    assert last["ocr_config"]["models"]["decoder"]["inner_channels"] == 64
    assert (out / "logs" / "train" / "metrics.csv").read_text() == first_log
    with (out / "logs" / "train-resumed-1" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    trained_epochs = {int(row["epoch"]) for row in rows if row.get("train/loss")}
    assert trained_epochs == {2}


def test_init_from_starts_a_new_run_from_the_checkpoints_network_and_weights(trained, tiny):
    import torch

    root, common = tiny
    source = trained / "checkpoints" / "last.ckpt"
    out = root / "finetuned"
    # a command line that names another network: fine-tuning starts from the checkpoint's; at a
    # learning rate of 1e-9 the weights stay the checkpoint's, where a random start would not
    result = run_runner(
        "train.py", "exp_name=finetuned", f"output_dir={out}", f"init_from={source}", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "models.optimizer.lr=1e-9", "test_after_fit=false", "predict_after_fit=false",
        *common, "models.decoder.inner_channels=32",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Using the checkpoint's models.decoder settings" in output and f"Starting from the weights of {source}" in output
    start, last = torch_load(source), torch_load(out / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 2)  # a new run's first epoch, not the source's third
    assert last["ocr_config"]["init_from"] == str(source)
    assert last["ocr_config"]["models"]["decoder"]["inner_channels"] == 64
    weights = [k for k, v in start["state_dict"].items() if v.is_floating_point() and "running_" not in k]
    assert weights and last["state_dict"].keys() == start["state_dict"].keys()
    for key in weights:
        torch.testing.assert_close(last["state_dict"][key], start["state_dict"][key], atol=1e-6, rtol=0)
    assert not (out / "logs" / "train-resumed-1").exists()  # its own logs, not a resumed run's


def test_test_and_predict_runners_from_a_checkpoint(trained, tiny):
    root, common = tiny
    checkpoint = next((trained / "checkpoints").glob("epoch*.ckpt"))
    run_runner("test.py", f"checkpoint_path={checkpoint}", f"output_dir={root / 'test'}", "trainer.fast_dev_run=true", *common)
    # the architecture comes from the checkpoint even when the command line says otherwise
    run_runner(
        "predict.py", f"checkpoint_path={checkpoint}", f"output_dir={root / 'pred'}",
        *common, "models.decoder.inner_channels=256",
    )
    rows = read_submission_csv(root / "pred" / "submissions" / "submission.csv")
    assert len(rows) == 3
    for polygons in rows.values():
        for polygon in polygons:
            assert polygon.shape[0] >= 4 and polygon.shape[1] == 2


def test_predict_renders_pages_and_ranks_images_worst_first_when_annotated(trained, tiny):
    from PIL import Image

    root, common = tiny
    checkpoint = trained / "checkpoints" / "last.ckpt"
    out = root / "rendered"
    run_runner("predict.py", f"checkpoint_path={checkpoint}", f"output_dir={out}", "render=true", "render_worst=2",
               "render_max_side=128", *common)  # fmt: skip
    with (out / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    truth = json.loads((root / "data" / "jsons" / "test.json").read_text())["images"]
    assert {row["image"] for row in rows} == set(truth)  # the predict split is the annotated test split
    hmeans = [float(row["hmean"]) for row in rows]
    assert hmeans == sorted(hmeans)  # worst first
    assert all(int(row["num_gt"]) == len(truth[row["image"]]["words"]) for row in rows)
    pages = sorted((out / "renders").glob("*.png"))
    assert [p.stem for p in pages] == sorted(Path(name).stem for name in truth)
    assert max(Image.open(pages[0]).size) == 128
    worst = sorted(p.name for p in (out / "renders" / "worst").glob("*.png"))
    assert worst == [f"001_{Path(rows[0]['image']).stem}.png", f"002_{Path(rows[1]['image']).stem}.png"]


def test_checkpoint_name_with_equals_sign_needs_quoting(trained, tiny):
    root, common = tiny
    source = next((trained / "checkpoints").glob("epoch*.ckpt"))
    renamed = trained / "checkpoints" / "epoch=0-step=2.ckpt"
    renamed.write_bytes(source.read_bytes())
    run_runner(
        "predict.py", f"checkpoint_path='{renamed}'", f"output_dir={root / 'quoted'}", "trainer.fast_dev_run=true", *common
    )
    assert (root / "quoted" / "submissions" / "submission.csv").is_file()


def test_accuracy_benchmark_and_postprocess_grid_agree(trained, tiny, monkeypatch, capsys):
    """benchmarks/accuracy.py scores a checkpoint on a folder + JSON; benchmarks/postprocess_grid.py
    re-decodes the same network outputs per setting, so its row for the default setting is the
    same score, and its rows come best first."""
    from benchmarks import accuracy, postprocess_grid

    root, common = tiny
    checkpoint = next((trained / "checkpoints").glob("epoch*.ckpt"))
    data = [f"images={root / 'data' / 'images' / 'test'}", f"annotations={root / 'data' / 'jsons' / 'test.json'}"]
    overrides = [c for c in common if c.startswith("image_size")]
    scores = accuracy.main([f"checkpoint_path={checkpoint}", *data, *overrides])
    printed = capsys.readouterr().out
    assert "| IoU hmean (pooled) |" in printed and "| CLEval hmean |" in printed
    assert "| GT short side (px) | care GT | IoU recall |" in printed
    assert "| unmatched care words | count | share of care words |" in printed and "| background: no word" in printed
    # every page in one of the two page-shape rows
    shape_rows = [line.split(" | ") for line in printed.splitlines() if line.startswith(("| narrow:", "| wide:"))]
    num_images = len(json.loads((root / "data" / "jsons" / "test.json").read_text())["images"])
    assert len(shape_rows) == 2 and sum(int(row[1]) for row in shape_rows) == num_images
    assert all(0.0 <= scores[k] <= 1.0 for k in scores if k != "seconds per image")
    assert scores["seconds per image"] > 0

    default = {"thresh": 0.3, "box_thresh": 0.6, "box_unclip_ratio": 1.5}  # configs/preset/models/postprocess
    monkeypatch.setattr(postprocess_grid, "GRID", {"thresh": [0.3, 0.5], "box_thresh": [0.6]})
    monkeypatch.setattr(postprocess_grid, "POLYGON_GRID", {"thresh": [0.3], "box_thresh": [0.6]})
    monkeypatch.setattr(postprocess_grid, "UNCLIP_FACTORS", (1.0, 1.2))
    results = postprocess_grid.main([f"checkpoint_path={checkpoint}", *data, *overrides])
    # the unclip ratios tried are the checkpoint's own (1.5 for boxes, 2.0 for polygons) and 1.2 times them
    assert sorted((s["use_polygon"], s.get("box_unclip_ratio", s.get("polygon_unclip_ratio"))) for s, _ in results) == [
        (False, 1.5), (False, 1.5), (False, 1.8), (False, 1.8), (True, 2.0), (True, 2.4)
    ]
    keys = [(-s["IoU hmean (pooled)"], -s["CLEval hmean"]) for _, s in results]
    assert keys == sorted(keys)
    same = next(s for setting, s in results if not setting["use_polygon"] and all(setting[k] == v for k, v in default.items()))
    for name in ("IoU hmean (pooled)", "CLEval hmean", "CLEval precision", "IoU recall (pooled)"):
        assert same[name] == pytest.approx(scores[name]), name
    assert "best: models.postprocess." in capsys.readouterr().out
    # the grid from the command line: the same rows for the settings both runs tried
    narrowed = postprocess_grid.main([f"checkpoint_path={checkpoint}", *data, *overrides, "grid.thresh=0.3", "polygons=false"])
    tried = sorted((setting for setting, _ in narrowed), key=lambda setting: setting["box_unclip_ratio"])
    assert tried == [{"thresh": 0.3, "box_thresh": 0.6, "box_unclip_ratio": r, "use_polygon": False} for r in (1.5, 1.8)]
    for setting, s in narrowed:
        twin = next(t for other, t in results if other == setting)
        assert s["IoU hmean (pooled)"] == pytest.approx(twin["IoU hmean (pooled)"])


def test_test_runner_on_an_unannotated_split_says_which_folder(trained, tiny):
    root, common = tiny
    checkpoint = next((trained / "checkpoints").glob("epoch*.ckpt"))
    images = root / "data" / "images" / "test"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "runners" / "test.py"), f"checkpoint_path={checkpoint}", f"output_dir={root / 'unannotated'}",
         f"datasets.splits.test.image_dir={images}", *common],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"the test split has no annotations to score against: {images} (no annotation file)" in result.stderr


def test_weight_averaging_puts_the_averaged_weights_in_the_checkpoint(tiny):
    import torch

    root, common = tiny
    out = root / "ema"
    run_runner(
        "train.py", "exp_name=ema", f"output_dir={out}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "predict_after_fit=false", "weight_averaging={_target_: lightning.pytorch.callbacks.EMAWeightAveraging, decay: 0.5}",
        *common,
    )
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == current.keys()
    weights = [k for k, v in averaged.items() if v.is_floating_point() and "bn" not in k and k.endswith("weight")]
    assert weights and any(not torch.equal(averaged[k], current[k]) for k in weights)  # averaged, not the raw weights
    # test.py scores the averaged weights, like validation did
    run_runner("test.py", f"checkpoint_path={out / 'checkpoints' / 'last.ckpt'}", f"output_dir={root / 'ema_test'}", *common)


def test_a_whole_network_from_models_network_trains_and_is_rebuilt_from_its_checkpoint(tiny):
    # preset=sroie_ppocr's route (PP-OCR's detector, converted from ONNX), with a stand-in graph
    from ocr.testing import write_tiny_detector_onnx

    root, common = tiny
    onnx_path = write_tiny_detector_onnx(root / "tiny_detector.onnx")
    out = root / "network"
    run_runner(
        "train.py", "exp_name=network", f"output_dir={out}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.precision=32-true", f"models.network={{_target_:ocr.models.ppocr.PPOCRDetector,onnx_path:'{onnx_path}'}}",
        *common,
    )
    checkpoint = next((out / "checkpoints").glob("epoch*.ckpt"))
    state = torch_load(checkpoint)["state_dict"]
    assert sum(v.numel() for k, v in state.items() if k.startswith("model.network.")) == 28  # the stand-in's weights
    # no models.network on the command line: the checkpoint's network is rebuilt
    result = run_runner("predict.py", f"checkpoint_path={checkpoint}", f"output_dir={root / 'network_pred'}", *common)
    assert "Using the checkpoint's models.network settings" in result.stdout + result.stderr
    assert len(read_submission_csv(root / "network_pred" / "submissions" / "submission.csv")) == 3


def test_a_pretrained_ppocr_backbone_trains_under_the_dbnet_head_and_is_rebuilt_from_its_checkpoint(tiny):
    # preset=sroie_ppocr_backbone's route (PP-OCR's backbone cut out of its ONNX graph), with a stand-in graph
    from ocr.testing import write_tiny_backbone_detector_onnx

    root, common = tiny
    onnx_path, weights = write_tiny_backbone_detector_onnx(root / "tiny_backbone.onnx")
    out = root / "backbone"
    run_runner(
        "train.py", "exp_name=backbone", f"output_dir={out}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.precision=32-true", "preset/models/encoder@models.encoder=ppocr_backbone",
        f"models.encoder.onnx_path={onnx_path}", "models.encoder.feature_names=[f4,f8,f16,f32]", *common,
    )
    checkpoint = next((out / "checkpoints").glob("epoch*.ckpt"))
    state = torch_load(checkpoint)["state_dict"]
    backbone = {k: v for k, v in state.items() if k.startswith("model.encoder.")}
    assert sum(v.numel() for v in backbone.values()) == sum(weights[f"f{s}"].size for s in (4, 8, 16, 32))
    assert any(k.startswith("model.head.threshold") for k in state)  # the project's own head, threshold branch included
    # trained: the backbone's weights moved from the ONNX file's
    first = [v for k, v in backbone.items() if tuple(v.shape) == weights["f4"].shape][0]
    assert not np.allclose(first.numpy(), weights["f4"])
    run_runner("predict.py", f"checkpoint_path={checkpoint}", f"output_dir={root / 'backbone_pred'}", *common)
    assert len(read_submission_csv(root / "backbone_pred" / "submissions" / "submission.csv")) == 3


def train_twice(tiny, name: str, *overrides: str) -> list[tuple[Path, dict]]:
    """The same training command run twice, 2 DataLoader workers, no test or predict pass: each
    run's folder and its last checkpoint."""
    root, common = tiny
    runs = []
    for run in (f"{name}_a", f"{name}_b"):
        run_runner(
            "train.py", f"exp_name={run}", f"output_dir={root / run}", "test_after_fit=false", "predict_after_fit=false",
            *common, "datasets.num_workers=2", *overrides,
        )  # fmt: skip
        runs.append((root / run, torch_load(root / run / "checkpoints" / "last.ckpt")))
    return runs


def assert_same_weights(runs: list[tuple[Path, dict]]) -> None:
    import torch

    (_, first), (_, second) = runs
    assert first["state_dict"].keys() == second["state_dict"].keys()
    assert all(torch.equal(first["state_dict"][key], second["state_dict"][key]) for key in first["state_dict"])


def test_the_same_seed_repeats_a_training_run_with_dataloader_workers(tiny):
    # seed=42 reaches the augmentation's draws in every worker process: the crops, and so the weights, repeat
    assert_same_weights(train_twice(tiny, "repeat", "trainer.max_epochs=1", "trainer.limit_train_batches=3"))


def test_a_run_whose_workers_prefetch_across_epochs_trains_every_epoch_whole_and_repeats_under_its_seed(tiny):
    # datasets.prefetch_across_epochs (on GPUs by default): one stream of batches through 2 epochs and
    # the validation between them; each epoch still 2 batches of the 4 training images
    runs = train_twice(tiny, "stream", "trainer.max_epochs=2", "datasets.prefetch_across_epochs=true")
    for folder, last in runs:
        assert (last["epoch"], last["global_step"]) == (1, 4)
        assert "2 DataLoader workers prefetching across epochs" in (folder / "train.log").read_text()
    assert_same_weights(runs)


def test_accuracy_benchmark_scores_a_configured_network_without_a_checkpoint(tiny, capsys):
    # checkpoint_path=none: preset=sroie_ppocr's pretrained detector zero-shot, here the stand-in
    from benchmarks import accuracy
    from ocr.testing import write_tiny_detector_onnx

    root, common = tiny
    data = [f"images={root / 'data' / 'images' / 'test'}", f"annotations={root / 'data' / 'jsons' / 'test.json'}"]
    if not (root / "data" / "jsons" / "test.json").is_file():
        run_runner("train.py", "exp_name=data", f"output_dir={root / 'data_run'}", "trainer.fast_dev_run=true", *common)
    onnx_path = write_tiny_detector_onnx(root / "zero_shot.onnx")
    network = f"models.network={{_target_:ocr.models.ppocr.PPOCRDetector,onnx_path:'{onnx_path}'}}"
    scores = accuracy.main(["checkpoint_path=none", *data, "image_size=256", network])
    assert "checkpoint none" in capsys.readouterr().out
    assert 0.0 <= scores["IoU hmean (pooled)"] <= 1.0 and scores["seconds per image"] > 0
    # Hydra wraps the error; its message still names the file and the fix
    with pytest.raises(Exception, match=r"absent\.onnx: PP-OCR detector not found; fetch it with"):
        accuracy.main(["checkpoint_path=none", *data, "image_size=256", network.replace("zero_shot.onnx", "absent.onnx")])


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def test_two_process_ddp_scores_and_writes_every_image_once(trained, tiny):
    """strategy=ddp on two CPU processes (gloo): each process infers only its shard of a split
    (3 test images: 2 each, one of them repeated by DistributedSampler), yet the submission holds
    every image once and the detections are those of a single process."""
    root, common = tiny
    ddp = ("trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    truth = set(json.loads((root / "data" / "jsons" / "test.json").read_text())["images"])

    out = root / "ddp_fit"
    run_runner("train.py", "exp_name=ddp", f"output_dir={out}", "trainer.max_epochs=1", *ddp, *common)
    assert set(read_submission_csv(out / "submissions" / "submission.csv")) == truth
    with (out / "logs" / "train" / "metrics.csv").open() as handle:
        assert {"val/hmean", "test/hmean"} <= set(next(csv.reader(handle)))

    checkpoint = next((trained / "checkpoints").glob("epoch*.ckpt"))
    detections = {}
    for name, extra in (("single", ()), ("ddp", ddp)):
        run_runner("test.py", f"checkpoint_path={checkpoint}", f"output_dir={root / ('test_' + name)}", *extra, *common)
        run_runner("predict.py", f"checkpoint_path={checkpoint}", f"output_dir={root / ('pred_' + name)}", *extra, *common)
        tested = json.loads((root / f"test_{name}" / "submissions" / "test_predictions.json").read_text())["images"]
        predicted = json.loads((root / f"pred_{name}" / "submissions" / "submission.json").read_text())["images"]
        assert set(tested) == set(predicted) == truth
        assert tested == predicted  # test and predict infer alike
        detections[name] = tested
    assert detections["ddp"] == detections["single"]
