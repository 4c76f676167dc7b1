"""Value tests for ocr.metrics: ICDAR15 IoU matching, CLEval (POLY) and the per-epoch evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from ocr.metrics import (
    DetectionEvaluator,
    IoUCounts,
    cleval_image_scores,
    iou_match,
    pooled_scores,
    pseudo_char_count,
)


def box(x: float, y: float, w: float, h: float) -> np.ndarray:
    """Clockwise axis-aligned quad (N=4, 2)."""
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=float)


def rotated_box(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    pts = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return pts @ np.array([[c, s], [-s, c]]) + [cx, cy]


GT3 = [box(10, 10, 100, 20), box(10, 50, 80, 20), box(150, 10, 60, 25)]


# --------------------------------------------------------------------------- IoU (ICDAR 2015)


def test_iou_perfect_match():
    c = iou_match(GT3, [g.copy() for g in GT3])
    assert c == IoUCounts(num_gt=3, num_det=3, num_matched=3)
    assert (c.recall, c.precision, c.hmean) == (1.0, 1.0, 1.0)


def test_iou_one_missed_of_two():
    c = iou_match(GT3[:2], [GT3[0]])
    assert (c.recall, c.precision) == (0.5, 1.0)
    assert c.hmean == pytest.approx(2 / 3)


def test_iou_shifted_detection_is_unmatched():
    gt = box(0, 0, 100, 20)
    det = box(43, 0, 100, 20)  # IoU = 57 / 143 ~ 0.399
    c = iou_match([gt], [det])
    assert c == IoUCounts(1, 1, 0)
    assert c.recall == 0.0 and c.precision == 0.0 and c.hmean == 0.0


def test_iou_match_names_the_matched_gt():
    # GT 1 is missed, GT 2 found; a don't-care GT (index 0) is never among the matched
    gts = [box(0, 0, 100, 20), box(10, 50, 80, 20), box(150, 10, 60, 25)]
    c = iou_match(gts, [gts[0].copy(), gts[2].copy()], gt_ignore=[True, False, False])
    assert c.matched_gt == (2,) and c.num_matched == 1 and c.num_gt == 2
    # detection 0 lies on the don't-care GT, detection 1 is the match of GT 2
    assert c.matched_det == (1,) and c.dont_care_det == (0,)
    assert iou_match(gts, []).matched_gt == ()


def test_iou_threshold_is_strict():
    gt, det = box(0, 0, 100, 20), box(0, 0, 100, 10)  # IoU exactly 0.5
    assert iou_match([gt], [det]).num_matched == 0  # script: iou > IOU_CONSTRAINT
    assert iou_match([gt], [det], iou_threshold=0.49).num_matched == 1


def test_iou_one_to_one_greedy_order():
    # Two detections on one GT: only the first (index order) matches, the other is a false positive.
    c = iou_match([box(0, 0, 100, 20)], [box(1, 0, 100, 20), box(0, 1, 100, 20)])
    assert c == IoUCounts(1, 2, 1)
    assert c.precision == 0.5


def test_merged_detection_low_iou_but_high_cleval_recall():
    gts = [box(0, 0, 60, 20), box(70, 0, 60, 20)]
    merged = [box(0, 0, 130, 20)]  # IoU with each word ~0.46
    c = iou_match(gts, merged)
    assert c.num_matched == 0 and c.hmean == 0.0
    s = cleval_image_scores(gts, merged)
    # Every GT character is found; the merge costs one granularity penalty on precision: (6 - 1) / 6.
    assert s["recall"] == pytest.approx(1.0)
    assert s["precision"] == pytest.approx(5 / 6)


def test_split_detection():
    gt = [box(0, 0, 120, 20)]  # 6 pseudo characters
    halves = [box(0, 0, 58, 20), box(62, 0, 58, 20)]
    assert iou_match(gt, halves).num_matched == 0
    s = cleval_image_scores(gt, halves)
    assert s["recall"] == pytest.approx(5 / 6)  # (6 found - 1 split penalty) / 6
    assert s["precision"] == pytest.approx(1.0)


def test_dont_care_neither_helps_nor_hurts():
    gts = [box(0, 0, 100, 20), box(0, 40, 100, 20)]
    ignore = [False, True]
    with_dc_det = [box(0, 0, 100, 20), box(0, 40, 100, 20)]
    without = [box(0, 0, 100, 20)]
    a, b = iou_match(gts, with_dc_det, ignore), iou_match(gts, without, ignore)
    assert a == b == IoUCounts(num_gt=1, num_det=1, num_matched=1)
    ca, cb = cleval_image_scores(gts, with_dc_det, ignore), cleval_image_scores(gts, without, ignore)
    assert ca == pytest.approx(cb)
    assert ca["hmean"] == pytest.approx(1.0)
    # "###" texts mark don't-care as well.
    assert cleval_image_scores(gts, with_dc_det, gt_texts=["abc", "###"]) == pytest.approx(ca)


def test_dont_care_flags_from_texts_and_explicit_flags():
    from ocr.data.annotations import DONT_CARE
    from ocr.metrics import dont_care_flags

    assert dont_care_flags(3).tolist() == [False, False, False]
    assert dont_care_flags(3, [False, True, False]).tolist() == [False, True, False]
    assert dont_care_flags(3, gt_texts=["TOTAL", DONT_CARE, None]).tolist() == [False, True, False]
    # Either source marks a word; "#" * 3 from a pseudo count is the same string, so it counts too.
    assert dont_care_flags(3, [True, False, False], ["a", DONT_CARE, "##"]).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="don't-care flags"):
        dont_care_flags(2, [True])
    with pytest.raises(ValueError, match="GT texts"):
        dont_care_flags(2, gt_texts=["a"])


def test_iou_dont_care_overlap_is_strict():
    gts, ignore = [box(0, 0, 100, 20)], [True]
    half_on = box(50, 0, 100, 20)  # exactly half of the detection lies on the don't-care GT
    assert iou_match(gts, [half_on], ignore).num_det == 1
    assert iou_match(gts, [box(40, 0, 100, 20)], ignore).num_det == 0


def test_iou_empty_cases_follow_icdar15_per_sample_rule():
    none = iou_match([], [])
    assert (none.recall, none.precision, none.hmean) == (1.0, 1.0, 1.0)
    only_det = iou_match([], [box(0, 0, 10, 10)])
    assert (only_det.recall, only_det.precision, only_det.hmean) == (1.0, 0.0, 0.0)
    only_gt = iou_match([box(0, 0, 10, 10)], [])
    assert (only_gt.recall, only_gt.precision, only_gt.hmean) == (0.0, 0.0, 0.0)
    all_dc = iou_match([box(0, 0, 10, 10)], [], gt_ignore=[True])
    assert (all_dc.num_gt, all_dc.hmean) == (0, 1.0)
    assert pooled_scores([]) == {"recall": 0.0, "precision": 0.0, "hmean": 0.0}


# --------------------------------------------------------------------------- CLEval


def test_cleval_perfect_match():
    assert cleval_image_scores(GT3, [g.copy() for g in GT3]) == pytest.approx(
        {"recall": 1.0, "precision": 1.0, "hmean": 1.0}
    )


def test_cleval_empty_cases_mirror_cleval():
    zeros = {"recall": 0.0, "precision": 0.0, "hmean": 0.0}
    assert cleval_image_scores([], []) == zeros
    assert cleval_image_scores(GT3, []) == zeros
    assert cleval_image_scores([], GT3) == zeros
    assert cleval_image_scores(GT3[:1], [], gt_ignore=[True]) == zeros


def test_cleval_false_positive_costs_one_character():
    s = cleval_image_scores([box(0, 0, 100, 20)], [box(0, 0, 100, 20), box(0, 50, 100, 20)])
    assert s["recall"] == pytest.approx(1.0)
    assert s["precision"] == pytest.approx(5 / 6)  # 5 GT characters + 1 for the unmatched box


def test_cleval_package_is_patched_on_first_use_not_on_import():
    import subprocess
    import sys

    script = """
import sys
import ocr  # makes torchvision importable, which cleval needs; imports no metrics
assert "ocr.metrics" not in sys.modules
from cleval.box_types import POLY
original = (POLY.__and__, POLY.is_inside, POLY.pseudo_character_center)
import ocr.metrics
from ocr.metrics import cleval_image_scores, cleval_image_scores_reference
square = [[0, 0], [10, 0], [10, 10], [0, 10]]
cleval_image_scores([square], [square])  # the fast path leaves the package alone
assert (POLY.__and__, POLY.is_inside, POLY.pseudo_character_center) == original, "patched too early"
assert not hasattr(POLY, "scale")
assert cleval_image_scores_reference([square], [square])["hmean"] == 1.0
assert POLY.__and__ is not original[0] and POLY.is_inside is not original[1] and POLY.scale is None
patched = (POLY.__and__, POLY.is_inside, POLY.pseudo_character_center)
cleval_image_scores_reference([square], [square])
assert (POLY.__and__, POLY.is_inside, POLY.pseudo_character_center) == patched, "patched twice"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_pseudo_char_count_matches_baseline_formula():
    # min(round(0.5 + max(ar, 1/ar)), 100), float32 eps: exact ratios round down.
    assert pseudo_char_count(box(0, 0, 100, 20)) == 5
    assert pseudo_char_count(box(0, 0, 20, 100)) == 5
    assert pseudo_char_count(box(0, 0, 130, 20)) == 7
    assert pseudo_char_count(box(0, 0, 20, 20)) == 1
    assert pseudo_char_count(box(0, 0, 5000, 10)) == 100


def test_cleval_text_lengths_only_on_request():
    gt, det = [box(0, 0, 100, 20), box(0, 40, 100, 20)], [box(0, 0, 100, 20)]
    texts = ["a", "abcdefghi"]  # 1 + 9 characters instead of 5 + 5
    assert cleval_image_scores(gt, det, gt_texts=texts)["recall"] == pytest.approx(0.5)
    assert cleval_image_scores(gt, det, gt_texts=texts, use_text_lengths=True)["recall"] == pytest.approx(0.1)


def test_cleval_poly_agrees_with_quad_on_random_boxes():
    from cleval import CLEvalMetric

    rng = np.random.default_rng(0)
    metric = CLEvalMetric()  # QUAD box type, the package's reference path
    for _ in range(8):
        cells = rng.permutation(6 * 20)[: rng.integers(1, 40)]
        gts = [
            np.round(rotated_box(c % 6 * 160 + 80, c // 6 * 40 + 20, rng.uniform(30, 140),
                                 rng.uniform(12, 28), rng.uniform(-0.05, 0.05)))
            for c in cells
        ]
        dets = [np.round(g + rng.normal(0, 2, (4, 2))) for g in gts if rng.random() < 0.85]
        dets += [np.round(box(rng.uniform(0, 900), 900 + 40 * k, rng.uniform(30, 140), 20)) for k in range(2)]
        ignore = rng.random(len(gts)) < 0.1

        ours = cleval_image_scores(gts, dets, gt_ignore=ignore)
        metric.reset()
        metric.update(
            np.array([d.reshape(-1) for d in dets]),
            np.array([g.reshape(-1) for g in gts]),
            [""] * len(dets),
            ["#" * pseudo_char_count(g) for g in gts],
            list(ignore),
        )
        ref = metric.compute()
        assert ours["recall"] == pytest.approx(float(ref["det_r"]), abs=1e-3)
        assert ours["precision"] == pytest.approx(float(ref["det_p"]), abs=1e-3)
        assert ours["hmean"] == pytest.approx(float(ref["det_h"]), abs=1e-3)


# --------------------------------------------------------------------------- DetectionEvaluator


def test_evaluator_perfect_row():
    ev = DetectionEvaluator()
    row = ev.update("img", GT3, [g.copy() for g in GT3])
    for key in ("recall", "precision", "hmean", "iou_recall", "iou_precision", "iou_hmean"):
        assert row[key] == pytest.approx(1.0), key
    assert (row["image_id"], row["num_gt"], row["num_det"], row["num_matched_iou"]) == ("img", 3, 3, 3)


def test_evaluator_counts_characters_from_transcriptions_on_request():
    gt, det = [box(0, 0, 100, 20), box(0, 40, 100, 20)], [box(0, 0, 100, 20)]
    texts = ["a", "abcdefghi"]  # 1 + 9 characters instead of 5 + 5 from the box shapes
    shape_counts, text_counts = DetectionEvaluator(), DetectionEvaluator(use_text_lengths=True)
    assert shape_counts.update("x", gt, det, gt_texts=texts)["recall"] == pytest.approx(0.5)
    assert text_counts.update("x", gt, det, gt_texts=texts)["recall"] == pytest.approx(0.1)
    # IoU is not affected; without transcriptions both count from the box shapes
    assert text_counts.compute()["iou_recall"] == shape_counts.compute()["iou_recall"] == 0.5
    assert text_counts.update("y", gt, det)["recall"] == pytest.approx(0.5)


def test_evaluator_mean_of_per_image_scores_not_pooled():
    ev = DetectionEvaluator()
    ev.update("good", [box(0, 0, 100, 20)], [box(0, 0, 100, 20)])  # hmean 1
    ev.update("bad", [box(0, 0, 100, 20), box(0, 40, 100, 20), box(0, 80, 100, 20)], [])  # hmean 0
    out = ev.compute()
    # CLEval: mean of per-image scores. Pooled characters would give recall 5/20 and hmean 0.4.
    assert out["recall"] == pytest.approx(0.5)
    assert out["precision"] == pytest.approx(0.5)
    assert out["hmean"] == pytest.approx(0.5)
    # IoU: ICDAR15 global counts, 1 matched of 4 GT, 1 detection.
    assert out["iou_recall"] == pytest.approx(0.25)
    assert out["iou_precision"] == pytest.approx(1.0)
    assert out["iou_hmean"] == pytest.approx(0.4)
    assert out["num_images"] == 2


def test_evaluator_deduplicates_by_image_id_last_wins():
    ev = DetectionEvaluator()
    ev.update("a", [box(0, 0, 100, 20)], [])
    ev.update("a", [box(0, 0, 100, 20)], [box(0, 0, 100, 20)])
    out = ev.compute()
    assert out["num_images"] == 1
    assert out["hmean"] == pytest.approx(1.0) and out["iou_hmean"] == pytest.approx(1.0)


def test_evaluator_partial_evaluation_counts_seen_images_only():
    dataset = {f"img{i}": [box(0, 0, 100, 20), box(0, 40, 100, 20)] for i in range(5)}
    ev = DetectionEvaluator()
    ev.update("img0", dataset["img0"], dataset["img0"])  # perfect
    ev.update("img3", dataset["img3"], dataset["img3"][:1])  # half the words
    out = ev.compute()
    assert out["num_images"] == 2
    assert out["recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["iou_recall"] == pytest.approx(3 / 4)


def test_evaluator_empty_compute_per_image_and_reset():
    ev = DetectionEvaluator()
    assert ev.compute() == {
        "recall": 0.0, "precision": 0.0, "hmean": 0.0,
        "iou_recall": 0.0, "iou_precision": 0.0, "iou_hmean": 0.0, "num_images": 0,
    }
    ev.update("ok", [box(0, 0, 100, 20)], [box(0, 0, 100, 20)])
    ev.update("miss", [box(0, 0, 100, 20)], [])
    assert [r["image_id"] for r in ev.per_image()] == ["miss", "ok"]
    ev.sync()  # not distributed: a no-op
    assert len(ev) == 2
    ev.reset()
    assert ev.compute()["num_images"] == 0


def test_evaluator_without_cleval_uses_iou_scores():
    ev = DetectionEvaluator(use_cleval=False)
    row = ev.update("x", GT3[:2], GT3[:1])
    assert (row["recall"], row["precision"]) == (0.5, 1.0)
    assert row["hmean"] == row["iou_hmean"]


def test_match_errors_names_each_kind_of_error():
    from ocr.metrics.errors import match_errors

    gts = [
        box(0, 0, 100, 10),  # 0: matched by the box over it and word 1
        box(105, 0, 20, 10),  # 1: merged into that box (one segment read over a one-space gap)
        box(0, 30, 100, 10),  # 2: split into two halves
        box(0, 60, 20, 10),  # 3: loose: a box twice its size around it, IoU 0.25
        box(300, 0, 50, 10),  # 4: missed
        box(0, 90, 40, 10),  # 5: don't care ("###")
    ]
    dets = [
        box(0, 0, 125, 10),
        box(0, 30, 45, 10),
        box(50, 30, 45, 10),
        box(-10, 55, 40, 20),
        box(500, 500, 30, 10),  # on no word
        box(0, 90, 38, 10),  # on the don't-care word
        box(310, 0, 4, 10),  # a sliver over 8% of word 4 touches it, does not detect it
    ]
    errors = match_errors(gts, dets, [False] * 5 + [True])
    assert errors.gt == ("matched", "merged", "split", "loose", "missed", "dont_care")
    assert errors.det == ("matched", "on_text", "on_text", "on_text", "background", "dont_care", "on_text")
    assert match_errors([], []).gt == () and match_errors([gts[0]], []).gt == ("missed",)
    # the evaluator's per-image row (the W&B per-image table) counts the same classes
    row = DetectionEvaluator(use_cleval=False).update("x", gts, dets, [False] * 5 + [True])
    assert [row[f"num_{k}"] for k in ("matched_iou", "merged", "split", "missed", "loose", "background")] == [1] * 6
    assert match_errors([], [dets[0]]).det == ("background",)
    with pytest.raises(ValueError, match="don't-care flags"):
        match_errors(gts, dets, [False])
