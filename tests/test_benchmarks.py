"""benchmarks/score_predictions.py: saved predictions scored with the accuracy benchmark's scorer."""

import json

import numpy as np
import pytest

from benchmarks import score_predictions
from ocr.submission import write_submission_csv
from ocr.testing import rect, write_split


@pytest.fixture
def truth(tmp_path):
    images = {
        "a.jpg": {"words": {"0001": {"points": rect(10, 10, 90, 30)}, "0002": {"points": rect(10, 50, 90, 70)}}},
        "b.jpg": {"words": {"0001": {"points": rect(20, 20, 150, 40)}}},
    }
    image_dir, json_path = write_split(tmp_path, "val", images)
    return image_dir, json_path, images


def test_ground_truth_as_predictions_scores_one(truth, tmp_path, capsys):
    image_dir, json_path, _ = truth
    scores = score_predictions.main([f"predictions={json_path}", f"images={image_dir}", f"annotations={json_path}"])
    assert scores["IoU hmean (pooled)"] == 1.0 and scores["CLEval hmean"] == pytest.approx(1.0)
    # both 200 x 120 pages are wide ones, with their 3 words
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| narrow:", "| wide:"))}
    narrow, wide = rows["| narrow: width / height <= 0.65"], rows["| wide: width / height > 0.65"]
    assert narrow[:2] == ["0", "0"] and wide[:6] == ["2", "3", "20.0", "1.0000", "1.0000", "1.0000"]


def test_submission_csv_with_a_missing_word_and_a_missing_image(truth, tmp_path):
    image_dir, json_path, images = truth
    import numpy as np

    kept = [{"name": "a.jpg", "raw_size": (200, 120), "polygons": [np.array(images["a.jpg"]["words"]["0001"]["points"], float)]}]
    csv_path = write_submission_csv(tmp_path / "submission.csv", kept)
    scores = score_predictions.main([f"predictions={csv_path}", f"images={image_dir}", f"annotations={json_path}"])
    # 1 of 3 GT words found, no false positive; b.jpg (absent) counts as no detections
    assert scores["IoU recall (pooled)"] == pytest.approx(1 / 3)
    assert scores["IoU precision (pooled)"] == 1.0
    assert scores["IoU recall (per-image mean)"] == pytest.approx((0.5 + 0.0) / 2)
    (tmp_path / "bad.json").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(ValueError, match="bad.json"):
        score_predictions.main([f"predictions={tmp_path / 'bad.json'}", f"images={image_dir}", f"annotations={json_path}"])


def test_recall_by_text_size_puts_each_word_in_its_short_side_range():
    import numpy as np

    from benchmarks.accuracy import TEXT_SIZE_EDGES, classify, error_counts, recall_by_text_size

    digit, line, tall, ignored = rect(10, 10, 17, 26), rect(40, 10, 200, 30), rect(10, 60, 300, 100), rect(0, 200, 5, 210)
    gts = [np.array(p, float) for p in (digit, line, tall, ignored)]
    # the 7 x 16 digit found, the 20 px line missed (a box 3x too wide), the 40 px block found;
    # the "###" word is don't care and counted nowhere
    found = [gts[0], np.array(rect(40, 10, 680, 30), float), gts[2]]
    classified = classify([("a.jpg", gts, None, ["1", "TOTAL", "BIG", "###"], found)])
    rows = recall_by_text_size(classified)
    assert [label for label, _, _ in rows] == ["0-8", "8-12", "12-16", "16-24", "24-32", ">= 32"]
    assert len(rows) == len(TEXT_SIZE_EDGES)
    by_label = {label: (count, recall) for label, count, recall in rows}
    assert by_label["0-8"] == (1, 1.0)
    assert by_label["16-24"] == (1, 0.0)
    assert by_label[">= 32"] == (1, 1.0)
    assert by_label["8-12"][0] == 0 and np.isnan(by_label["8-12"][1])
    # the same words by error class: the too-wide box is loose, and the "###" word is in no class
    words, boxes = error_counts(classified)
    assert dict(words) == {"matched": 2, "loose": 1} and dict(boxes) == {"matched": 2, "on_text": 1}


def test_postprocess_grid_values_from_the_command_line():
    from benchmarks import postprocess_grid

    replaced, polygons, rest = postprocess_grid.split_grid_arguments(
        ["grid.box_unclip_ratio=0.8,1.0", "grid.thresh=[0.3]", "polygons=false", "checkpoint_path=x.ckpt", "image_size=640"]
    )
    assert replaced == {"box_unclip_ratio": [0.8, 1.0], "thresh": [0.3]} and polygons is False
    assert rest == ["checkpoint_path=x.ckpt", "image_size=640"]
    grid = postprocess_grid.settings(replaced, polygons)
    assert len(grid) == 1 * len(postprocess_grid.GRID["box_thresh"]) * 2
    assert {s["box_unclip_ratio"] for s in grid} == {0.8, 1.0} and {s["thresh"] for s in grid} == {0.3}
    with_polygons = postprocess_grid.settings({"thresh": [0.3]})
    assert {s["thresh"] for s in with_polygons} == {0.3} and any(s["use_polygon"] for s in with_polygons)
    # without grid values the unclip ratios bracket the checkpoint's own: the receipt kernels' 1.0 / 1.3
    # as well as DBNet's 1.5 / 2.0
    for box, polygon in ((1.0, 1.3), (1.5, 2.0)):
        tried = postprocess_grid.settings(box_unclip_ratio=box, polygon_unclip_ratio=polygon)
        box_ratios = {s["box_unclip_ratio"] for s in tried if not s["use_polygon"]}
        polygon_ratios = {s["polygon_unclip_ratio"] for s in tried if s["use_polygon"]}
        assert box in box_ratios and min(box_ratios) < box < max(box_ratios)
        assert polygon in polygon_ratios and min(polygon_ratios) < polygon < max(polygon_ratios)
    with pytest.raises(SystemExit, match="no grid setting unclip"):
        postprocess_grid.settings({"unclip": [1.0]})
    with pytest.raises(SystemExit, match="comma-separated numbers"):
        postprocess_grid.split_grid_arguments(["grid.thresh=low"])
    with pytest.raises(SystemExit, match="polygons=true or polygons=false"):
        postprocess_grid.split_grid_arguments(["polygons=fasle"])  # a typo must not mean "true"
    assert postprocess_grid.split_grid_arguments(["polygons=True"])[1] is True
    # split thresholds: "none" means off, and values at or below thresh are left out
    replaced = postprocess_grid.split_grid_arguments(["grid.split_thresh=none,0.4,0.5", "grid.thresh=0.35,0.4"])[0]
    assert replaced["split_thresh"] == [None, 0.4, 0.5]
    pairs = {(s["thresh"], s["split_thresh"]) for s in postprocess_grid.settings(replaced, polygons=False)}
    assert pairs == {(0.35, None), (0.35, 0.4), (0.35, 0.5), (0.4, None), (0.4, 0.5)}
    # ... for polygons as for rectangles
    shapes = [s for s in postprocess_grid.settings(replaced) if s["use_polygon"]]
    assert {(s["thresh"], s["split_thresh"]) for s in shapes} == pairs
    # threshold-map offsets: "none" is the fixed threshold alone
    replaced = postprocess_grid.split_grid_arguments(["grid.threshold_map_offset=none,0,0.05", "grid.thresh=0.35"])[0]
    offsets = {s["threshold_map_offset"] for s in postprocess_grid.settings(replaced, polygons=False)}
    assert offsets == {None, 0.0, 0.05}
    shapes = [s for s in postprocess_grid.settings(replaced) if s["use_polygon"]]
    assert {s["threshold_map_offset"] for s in shapes} == {None, 0.0, 0.05}


def test_postprocess_grid_decodes_with_the_threshold_map_plus_its_offset():
    import torch

    from benchmarks import postprocess_grid
    from ocr.models.postprocess import DBPostProcessor

    # two words joined by a 0.5 bridge; the threshold map is 0.45 on the bridge, 0 elsewhere
    prob = np.zeros((1, 1, 40, 120), dtype=np.float32)
    prob[..., 10:26, 10:50] = 0.9
    prob[..., 10:26, 60:100] = 0.9
    prob[..., 10:26, 50:60] = 0.5
    thresholds = np.zeros((1, 40, 120), dtype=np.float32)
    thresholds[:, 10:26, 50:60] = 0.45
    batch = {"valid_size": [(120, 40)], "scale": [(1.0, 1.0)], "raw_size": [(120, 40)], "orientation": [1]}
    module = type("Module", (), {"postprocess": DBPostProcessor(thresh=0.3, box_thresh=0.3, box_unclip_ratio=0.1)})()
    logits = torch.logit(torch.from_numpy(prob).clamp(1e-6, 1 - 1e-6))
    counts = {
        offset: len(postprocess_grid.decode(module, {"threshold_map_offset": offset}, logits, batch, thresholds)[0].polygons)
        for offset in (None, 0.0, 0.1)
    }
    assert counts == {None: 1, 0.0: 1, 0.1: 2}  # 0.5 > 0.45, but not > 0.55


def test_label_gaps_measures_spaces_inside_boxes_and_gaps_between_them(tmp_path, capsys):
    import cv2
    import numpy as np

    from benchmarks import label_gaps

    image = np.full((120, 200, 3), 255, np.uint8)
    for x0, x1 in ((12, 40), (50, 88), (112, 148)):  # "AB", "CD" in box A, "EF" in box B; lines 10-30
        cv2.rectangle(image, (x0, 12), (x1, 28), (0, 0, 0), thickness=-1)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "r.png"), image)
    words = {
        "0001": {"points": [[10, 10], [90, 10], [90, 30], [10, 30]], "transcription": "AB CD"},
        "0002": {"points": [[110, 10], [150, 10], [150, 30], [110, 30]], "transcription": "EF"},
        "0003": {"points": [[10, 60], [90, 60], [90, 80], [10, 80]], "transcription": "###"},  # no ink, no neighbour
    }
    (tmp_path / "a.json").write_text(json.dumps({"images": {"r.png": {"words": words}}}))
    inside, between = label_gaps.measure(str(tmp_path / "images"), str(tmp_path / "a.json"))
    # 9 inkless columns (41-49) inside box A, 23 (89-111) between A and B; line height 20
    np.testing.assert_allclose(inside, [9 / 20])
    np.testing.assert_allclose(between, [23 / 20])
    args = [f"images={tmp_path / 'images'}", f"annotations={tmp_path / 'a.json'}"]
    best = label_gaps.main(args)
    assert best == {"threshold": pytest.approx(23 / 20), "share": 1.0, "merged_pairs": 0, "split_boxes": 0}
    fixed = label_gaps.main([*args, "threshold=0.4"])  # splits box A at its space
    assert (fixed["merged_pairs"], fixed["split_boxes"], fixed["share"]) == (0, 1, 0.5)
    assert "| >= 1.0 | 0.000 | 1.000 |" in capsys.readouterr().out


def test_cleval_counts_characters_from_transcriptions_and_reports_box_shape_counts_beside():
    import numpy as np

    from benchmarks.accuracy import evaluate

    gts = [np.array(rect(0, 0, 100, 20), float), np.array(rect(0, 40, 100, 60), float)]
    found = [gts[0]]
    # 1 + 9 characters from the transcriptions; 5 + 5 from the box shapes
    scores = evaluate([("a.jpg", gts, None, ["a", "abcdefghi"], found)])
    assert scores["CLEval recall"] == pytest.approx(0.1)
    assert scores["CLEval hmean"] == pytest.approx(2 * 0.1 / 1.1)
    assert scores["CLEval hmean (box-shape character counts)"] == pytest.approx(2 * 0.5 / 1.5)
    assert scores["IoU recall (pooled)"] == 0.5


def test_a_folder_of_predictions_is_scored_file_by_file(truth, tmp_path, capsys):
    image_dir, json_path, images = truth
    folder = tmp_path / "grid"
    folder.mkdir()
    (folder / "all.json").write_text(json.dumps({"images": images}))
    (folder / "half.json").write_text(json.dumps({"images": {"a.jpg": images["a.jpg"]}}))  # b.jpg's word missed
    (folder / "notes.txt").write_text("not a prediction file")
    results = score_predictions.main([f"predictions={folder}", f"images={image_dir}", f"annotations={json_path}"])
    assert set(results) == {"all.json", "half.json"}
    assert results["all.json"]["IoU hmean (pooled)"] == 1.0
    assert results["half.json"]["IoU recall (pooled)"] == pytest.approx(2 / 3)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| all.json") or line.startswith("| half.json")]
    assert [row.split(" | ")[0] for row in rows] == ["| all.json", "| half.json"]  # best IoU-hmean first
    (folder / "all.json").unlink()
    (folder / "half.json").unlink()
    with pytest.raises(SystemExit, match="no .csv or .json"):
        score_predictions.main([f"predictions={folder}", f"images={image_dir}", f"annotations={json_path}"])


def test_rapidocr_grid_settings():
    from benchmarks.rapidocr_baseline import DEFAULTS, parse_settings, setting_name

    assert parse_settings([]) == [DEFAULTS]
    assert setting_name(DEFAULTS) == "min736_thresh0.3_box0.5_unclip1.6_dilate"
    settings = parse_settings(["unclip_ratio=1.2,1.6", "limit_side_len=736,1600", "limit_type=max", "use_dilation=false"])
    assert len(settings) == 4
    # grouped by input size, so that the network runs once per size
    assert [s["limit_side_len"] for s in settings] == [736, 736, 1600, 1600]
    assert [s["unclip_ratio"] for s in settings] == [1.2, 1.6, 1.2, 1.6]
    assert all(s["limit_type"] == "max" and s["use_dilation"] is False and s["thresh"] == 0.3 for s in settings)
    assert len({setting_name(s) for s in settings}) == 4
    with pytest.raises(ValueError, match="unknown option 'unclip=1.2'"):
        parse_settings(["unclip=1.2"])
    with pytest.raises(ValueError, match="limit_type must be min or max"):
        parse_settings(["limit_type=short"])


def test_perturbed_copy_moves_the_words_with_the_pixels(tmp_path):
    import cv2
    import numpy as np

    from benchmarks.perturb import perturb_folder

    # a page with black blocks exactly where the words are, so the moved boxes can be checked on the pixels
    words = {"0001": {"points": rect(30, 20, 170, 50), "transcription": "TOTAL"},
             "0002": {"points": rect(40, 80, 120, 110), "transcription": "###"},
             "0003": {"points": rect(130, 130, 180, 160), "transcription": "9.90"}}  # fmt: skip
    image_dir, json_path = write_split(tmp_path, "val", {"page.jpg": {"words": words}}, size=(200, 200))
    page = np.full((200, 200, 3), 255, np.uint8)
    for word in words.values():
        (x0, y0), (x1, y1) = word["points"][0], word["points"][2]
        page[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = 0
    cv2.imwrite(str(image_dir / "page.jpg"), page)

    data = perturb_folder(image_dir, json_path, tmp_path / "photo", rotate=10, perspective=0.05, seed=3)
    entry = data["images"]["page.jpg"]
    assert json.loads((tmp_path / "photo" / "annotations.json").read_text()) == data
    assert [w.get("transcription") for w in entry["words"].values()] == ["TOTAL", "###", "9.90"]
    image = cv2.imread(str(tmp_path / "photo" / "images" / "page.jpg"), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (entry["img_h"], entry["img_w"])
    quads = [np.array(w["points"]) for w in entry["words"].values()]
    assert not np.allclose(quads[0], words["0001"]["points"], atol=2)  # the geometry moved the page
    for quad in quads:
        inside = np.zeros_like(image)
        cv2.fillPoly(inside, [np.round(quad).astype(np.int32)], 1)
        core = cv2.erode(inside, np.ones((5, 5), np.uint8))  # away from blurred edges
        assert image[core > 0].mean() < 90, "the box no longer covers its word's ink"
    # the same seed gives the same copy
    again = perturb_folder(image_dir, json_path, tmp_path / "again", rotate=10, perspective=0.05, seed=3)
    assert again == data
    assert (tmp_path / "again" / "images" / "page.jpg").read_bytes() == (tmp_path / "photo" / "images" / "page.jpg").read_bytes()


def test_ensemble_averages_weights_and_names_a_checkpoint_of_another_network():
    import torch

    from benchmarks.ensemble import average_state_dicts

    first = {"w": torch.tensor([1.0, 3.0]), "bn.num_batches_tracked": torch.tensor(7)}
    second = {"w": torch.tensor([3.0, 5.0]), "bn.num_batches_tracked": torch.tensor(9)}
    mean = average_state_dicts([first, second], ["a.ckpt", "b.ckpt"])
    assert mean["w"].tolist() == [2.0, 4.0]
    assert mean["bn.num_batches_tracked"].item() == 7  # step counts are not averaged
    with pytest.raises(ValueError, match="b.ckpt: not the same network as a.ckpt"):
        average_state_dicts([first, {**second, "w": torch.zeros(3)}], ["a.ckpt", "b.ckpt"])


def test_ensemble_names_weights_that_started_from_other_random_weights():
    """A copy trained a little further stays aligned with the first (cosine near 1); an independent
    draw, as another seed's FPN and head, is nearly orthogonal. 1-D tensors (biases, batch-norm
    statistics) are not judged: they start equal (zeros, ones) under any seed."""
    import torch

    from benchmarks.ensemble import unrelated_weights

    generator = torch.Generator().manual_seed(0)
    first = {"decoder.w": torch.randn(64, 32, 3, 3, generator=generator), "bn.bias": torch.zeros(64)}
    nudged = {key: value + 0.1 * torch.randn(value.shape, generator=generator) for key, value in first.items()}
    redrawn = {"decoder.w": torch.randn(64, 32, 3, 3, generator=generator), "bn.bias": torch.ones(64)}
    assert unrelated_weights(first, nudged) == []
    assert unrelated_weights(first, redrawn) == ["decoder.w"]
    assert unrelated_weights(first, {"decoder.w": -first["decoder.w"]}) == ["decoder.w"]


def test_ensemble_of_maps_decodes_the_mean_probability(monkeypatch):
    """Two networks that each see one of two words at 0.9: the averaged map holds both at 0.45."""
    import torch

    from benchmarks import ensemble

    maps = {"a": torch.tensor([[0.9, 0.0]]), "b": torch.tensor([[0.0, 0.9]])}
    batch = {"name": ["page.jpg"], "gt_polygons": [[]], "gt_ignore": [[]], "gt_texts": [[]]}
    monkeypatch.setattr(ensemble, "network_outputs", lambda cfg, module, data: iter([(batch, torch.logit(maps[module]), 0.1)]))
    decoded = []

    class First(str):
        def decode(self, logits, batch):
            decoded.append(torch.sigmoid(logits))
            return [type("Found", (), {"polygons": []})()]

    records = ensemble.averaged_map_records([(None, First("a"), None), (None, "b", None)], ["a.ckpt", "b.ckpt"])
    assert records == [("page.jpg", [], [], [], [])]
    assert torch.allclose(decoded[0], torch.tensor([[0.45, 0.45]]), atol=1e-5)
    maps["b"] = torch.full((2, 2), 0.5)
    with pytest.raises(ValueError, match=r"b.ckpt: its map of page.jpg is \(2, 2\), the first checkpoint's \(1, 2\)"):
        ensemble.averaged_map_records([(None, First("a"), None), (None, "b", None)], ["a.ckpt", "b.ckpt"])


def test_ensemble_of_one_checkpoint_twice_scores_as_the_checkpoint(tmp_path, capsys):
    """The whole command on a real (tiny, untrained) checkpoint: averaging a network with itself,
    by weights or by maps, scores exactly as benchmarks.accuracy scores it alone. At threshold 0
    the untrained map finds one region per page, which the page-wide word matches."""
    import torch

    from benchmarks import accuracy, ensemble
    from ocr.config import compose_config
    from ocr.factory import build_module
    from ocr.testing import tiny_run_overrides

    images = {f"{i}.jpg": {"words": {"0001": {"points": rect(0, 0, 200, 120)}}} for i in range(2)}
    image_dir, json_path = write_split(tmp_path, "val", images)
    torch.manual_seed(0)
    module = build_module(compose_config("train", tiny_run_overrides(tmp_path)))
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "ocr_config": module.run_config}, checkpoint)
    common = [f"images={image_dir}", f"annotations={json_path}", "device=cpu",
              "models.postprocess.thresh=0.0", "models.postprocess.box_thresh=0.0"]
    alone = accuracy.main([f"checkpoint_path={checkpoint}", *common])
    assert alone["IoU hmean (pooled)"] == 1.0
    del alone["seconds per image"]
    for average in ("weights", "maps"):
        together = ensemble.main([f"checkpoints={checkpoint},{checkpoint}", f"average={average}", *common])
        assert together == pytest.approx(alone, abs=1e-6)
        printed = capsys.readouterr()
        assert f"2 checkpoints, {average} averaged" in printed.out
        assert "warning" not in printed.err
    # another seed's network: its weights are unrelated to the first's, and averaging them says so
    torch.manual_seed(1)
    other = tmp_path / "other_seed.ckpt"
    torch.save({"state_dict": build_module(compose_config("train", tiny_run_overrides(tmp_path))).state_dict(),
                "ocr_config": module.run_config}, other)
    ensemble.main([f"checkpoints={checkpoint},{other}", "average=weights", *common])
    assert f"warning: {other}: " in capsys.readouterr().err
    with pytest.raises(SystemExit, match="name two or more"):
        ensemble.main([f"checkpoints={checkpoint}", "average=maps", *common])


def test_kernel_ceiling_decodes_the_training_kernels_as_a_perfect_networks_map(truth, capsys):
    from benchmarks import kernel_ceiling

    image_dir, json_path, _ = truth
    args = [f"images={image_dir}", f"annotations={json_path}"]
    results = kernel_ceiling.main([*args, "grid.box_unclip_ratio=1.5,0.2"])
    # DBNet's kernels (shrink ratio 0.4) grown back at its unclip ratio give back every word; grown
    # back far too little, every box is a sliver of its word (IoU < 0.5)
    assert [ratio for ratio, _ in results] == [1.5, 0.2]
    assert results[0][1]["IoU hmean (pooled)"] == 1.0
    assert results[1][1]["IoU hmean (pooled)"] == 0.0
    assert "kernels at shrink ratio 0.4" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="thresh"):
        kernel_ceiling.main([*args, "grid.thresh=0.3"])


def test_loader_speed_times_each_stage_of_a_training_sample(tiny, capsys):
    from benchmarks import loader_speed

    _, overrides = tiny
    best = loader_speed.main(["preset=example", *overrides, "samples=3", "repeats=2"])
    assert set(best) == {"read", "augment", "targets", "total"}
    assert all(best[stage] > 0 for stage in best)
    # the best pass's total is at least the sum of each stage's best
    assert best["total"] >= sum(best[s] for s in ("read", "augment", "targets")) * (1 - 1e-9)
    out = capsys.readouterr().out
    workers = {int(line.split("|")[1]): int(line.split("|")[2]) for line in out.splitlines() if line.startswith(("| 200 ", "| 650 "))}
    assert workers[200] == int(np.ceil(200 * best["total"] / 1000)) and workers[650] >= workers[200]
    with pytest.raises(SystemExit, match="samples=0"):
        loader_speed.main(["preset=example", *overrides, "samples=0"])
    # workers=1: the real DataLoader's delivery, set against one worker's stage times
    checked = loader_speed.main(["preset=example", *overrides, "samples=2", "repeats=1", "workers=1"])
    assert checked["workers"] == 1 and checked["delivered_per_s"] > 0
    assert checked["expected_per_s"] == pytest.approx(1000 / checked["total"])
    assert "the training DataLoader with 1 workers (batch 2, 6 samples timed)" in capsys.readouterr().out


def test_epoch_starts_times_the_training_loader_with_and_without_prefetching_across_epochs(tiny, capsys):
    from benchmarks import epoch_starts

    _, overrides = tiny
    args = ["preset=example", *overrides, "datasets.num_workers=1", "datasets.batch_size=2", "images=4", "epochs=3"]
    rows = epoch_starts.main([*args, "step_ms=1", "pause_s=0.2"])
    assert [row["prefetch_across_epochs"] for row in rows] == [False, True]
    for row in rows:  # 2 batches of 2 in each of 3 epochs, whatever the setting
        assert (row["batches_per_epoch"], row["batches"], row["images"]) == (2, 6, 12)
        assert row["first_batch_wait_ms"] > 0 and row["other_batch_wait_ms"] > 0 and row["images_per_s"] > 0
    assert "| true |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="epochs >= 2"):
        epoch_starts.main([*args[:-1], "epochs=1"])


def test_scores_by_page_shape_score_narrow_receipts_and_wide_pages_apart():
    from benchmarks.accuracy import page_aspect, scores_by_page_shape

    words = [np.array(rect(10, 10, 60, 30), float), np.array(rect(80, 10, 140, 30), float)]
    # a narrow receipt found whole; a wide page with one of its two words missed
    receipt = ("receipt.jpg", words, None, ["TOTAL", "9.90"], list(words))
    page = ("page.jpg", words, None, ["TOTAL", "9.90"], [words[0]])
    aspects = [page_aspect(1, (500, 1600)),
               # stored 1600 x 1131 with a quarter turn (EXIF 6): upright 1131 x 1600
               page_aspect(6, (1600, 1131))]
    assert aspects == [500 / 1600, 1131 / 1600]
    (narrow, narrow_pages, narrow_heights, narrow_scores), (wide, wide_pages, wide_heights, wide_scores) = (
        scores_by_page_shape([receipt, page], aspects))
    assert narrow.startswith("narrow") and wide.startswith("wide") and narrow_pages == wide_pages == 1
    assert narrow_heights == wide_heights == [20.0, 20.0]  # both words 20 px tall
    assert narrow_scores["IoU hmean (pooled)"] == 1.0
    assert wide_scores["IoU precision (pooled)"] == 1.0 and wide_scores["IoU recall (pooled)"] == 0.5
    # no page of a shape: no scores for it, rather than zeros
    assert scores_by_page_shape([receipt], aspects[:1])[1] == (wide, 0, [], None)
    # a "###" word is not a care word, as the scores count it
    dont_care = ("page.jpg", words, None, ["TOTAL", "###"], list(words))
    assert scores_by_page_shape([dont_care], aspects[1:])[1][2] == [20.0]
    with pytest.raises(ValueError, match="2 records but 1"):
        scores_by_page_shape([receipt, page], aspects[:1])
