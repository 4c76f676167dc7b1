"""The fast metric paths give the same scores as the slow references on a fixed, seeded image set.

* CLEval: :func:`ocr.metrics.fast_cleval.cleval_image_scores_fast` (the default of
  ``cleval_image_scores``) against ``cleval_image_scores_reference`` (the cleval package's own
  ``evaluation``), recall / precision / hmean within 1e-9 (they are in fact bit-identical).
* IoU: :func:`ocr.metrics.iou.iou_match` against a plain pair-by-pair loop of the ICDAR 2015 rule.

The set: receipt-like pages (rows of word boxes, 50-150 GT) with jittered, shrunk, merged (one
detection over 2-3 words), split (two detections on one word), missed and false-positive
detections, rotated pages and rotated words, curved polygons with 5-14 points, 3-point detections,
don't-care GT (flags and ``"###"``), overlapping GT, integer and float coordinates, plus hand-made
edge cases (empty GT / detections, all don't-care, the don't-care ``ap_sum`` filter, 3- and 2-point
GT, real text lengths).
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from ocr.metrics import cleval_image_scores, cleval_image_scores_reference, iou_match
from ocr.metrics.fast_cleval import cleval_image_scores_fast

TOL = 1e-9


# --------------------------------------------------------------------------- generator


def _word_polygon(x: float, y: float, w: float, h: float, n_points: int, bend: float) -> np.ndarray:
    """Clockwise word polygon: top edge left to right, bottom edge right to left (cleval's POLY order).

    ``n_points`` >= 4; odd counts put the extra point on the bottom edge. ``bend`` curves both edges.
    """
    w, h = max(w, 2.0), max(h, 2.0)
    n_top = n_points // 2
    n_bottom = n_points - n_top
    xt = np.linspace(x, x + w, n_top)
    xb = np.linspace(x + w, x, n_bottom)
    top = np.stack([xt, y + bend * np.sin(np.pi * (xt - x) / w)], axis=1)
    bottom = np.stack([xb, y + h + bend * np.sin(np.pi * (xb - x) / w)], axis=1)
    return np.concatenate([top, bottom])


def _rotate(poly: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return (poly - centre) @ np.array([[c, s], [-s, c]]) + centre


def _quad(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def make_receipt(seed: int):
    """One synthetic page: (gts, dets, gt_ignore, gt_texts)."""
    rng = np.random.default_rng(seed)
    n_gt = int(rng.integers(50, 151))
    multi_point = rng.random() < 0.35  # curved / many-point polygons on this page
    page_angle = rng.choice([0.0, 0.0, rng.uniform(-0.25, 0.25), rng.uniform(-1.6, 1.6)])
    word_angle_sd = rng.choice([0.0, 0.0, 0.05])
    noise = rng.choice([0.5, 1.5, 3.0])
    integer = rng.random() < 0.5

    # Rows of words (x, y, w, h), with row ids for merging neighbours.
    words, rows = [], []
    y, row = rng.uniform(5, 30), 0
    while len(words) < n_gt:
        h, x = rng.uniform(12, 30), rng.uniform(5, 60)
        for _ in range(int(rng.integers(1, 8))):
            w = rng.uniform(10, 170)
            words.append((x, y, w, h))
            rows.append(row)
            x += w + rng.uniform(4, 35)
            if len(words) == n_gt:
                break
        y += h + rng.uniform(2, 14)
        row += 1
    centre = np.array([400.0, y / 2])

    def shape(x, y, w, h, allow_multi=True):
        n = int(rng.choice([4, 5, 6, 7, 8, 10, 14])) if (multi_point and allow_multi) else 4
        bend = rng.uniform(-4, 4) if n > 4 else 0.0
        poly = _word_polygon(x, y, w, h, n, bend)
        if word_angle_sd:
            poly = _rotate(poly, rng.normal(0, word_angle_sd), poly.mean(axis=0))
        return _rotate(poly, page_angle, centre)

    gts = [shape(*wd) for wd in words]
    # Overlapping GT: a few duplicates shifted by a few pixels, and a line box over a word group.
    for _ in range(int(rng.integers(0, 4))):
        k = int(rng.integers(len(words)))
        x, y0, w, h = words[k]
        gts.append(shape(x + rng.uniform(-5, 5), y0 + rng.uniform(-4, 4), w, h))
        rows.append(rows[k])
        words.append(words[k])

    dets = []
    i = 0
    while i < n_gt:
        r = rng.random()
        x, y0, w, h = words[i]
        if r < 0.07:  # missed
            i += 1
            continue
        if r < 0.17:  # merged with the next 1-2 words of the row
            j = i
            for _ in range(int(rng.integers(1, 3))):
                if j + 1 < n_gt and rows[j + 1] == rows[i]:
                    j += 1
            xe = words[j][0] + words[j][2]
            dets.append(shape(x - 1, y0 - 1, xe - x + 2, h + 2) + rng.normal(0, noise, (1, 2)))
            i = j + 1
            continue
        if r < 0.25:  # split in two
            f = rng.uniform(0.3, 0.7)
            gap = rng.uniform(-3, 6)
            dets.append(shape(x, y0, w * f - gap / 2, h) + rng.normal(0, noise, (1, 2)))
            dets.append(shape(x + w * f + gap / 2, y0, w * (1 - f) - gap / 2, h) + rng.normal(0, noise, (1, 2)))
            i += 1
            continue
        if r < 0.30:  # 3-point detection (cleval pads it to a quad)
            q = shape(x, y0, w, h, allow_multi=False)
            dets.append(q[:3] + rng.normal(0, noise, (3, 2)))
            i += 1
            continue
        scale = rng.choice([1.0, 1.0, rng.uniform(0.7, 1.2)])  # DB boxes are often shrunk / grown
        cx, cy = x + w / 2, y0 + h / 2
        poly = shape(cx - w * scale / 2, cy - h * scale / 2, w * scale, h * rng.uniform(0.8, 1.2))
        dets.append(poly + rng.normal(0, noise, poly.shape))
        i += 1
    for _ in range(int(rng.integers(0, 12))):  # false positives: empty space or half on a word
        if rng.random() < 0.5:
            dets.append(shape(rng.uniform(0, 800), rng.uniform(0, y), rng.uniform(8, 120), rng.uniform(8, 30)))
        else:
            x, y0, w, h = words[int(rng.integers(n_gt))]
            dets.append(shape(x + w * rng.uniform(0.4, 0.9), y0 + rng.uniform(-h, h), w, h))

    ignore = rng.random(len(gts)) < rng.choice([0.0, 0.05, 0.15])
    texts = None
    if rng.random() < 0.3:  # don't care as "###" transcriptions instead of flags
        texts = ["###" if ig else "word" for ig in ignore]
        ignore = None
    if integer:
        gts = [np.round(g) for g in gts]
        dets = [np.round(d) for d in dets]
    order = rng.permutation(len(dets))  # detections come in arbitrary order
    return gts, [dets[k] for k in order], ignore, texts


def _box(x, y, w, h):
    return _quad(x, y, x + w, y + h)


def special_cases():
    """Hand-made edge cases: (gts, dets, gt_ignore, gt_texts, use_text_lengths)."""
    g3 = [_box(10, 10, 100, 20), _box(10, 50, 80, 20), _box(150, 10, 60, 25)]
    cases = [
        ([], [], None, None, False),  # nothing
        ([], g3, None, None, False),  # empty GT
        (g3, [], None, None, False),  # empty detections
        (g3, g3, [True, True, True], None, False),  # all don't care
        (g3, [g.copy() for g in g3], None, None, False),  # perfect
        ([_box(0, 0, 100, 20)], [_box(0, 0, 100, 20), _box(0, 50, 100, 20)], None, None, False),
        # Don't-care filter by summed area precision: 0.1875 + 0.1875 >= 0.3 (each < 0.3).
        (
            [_box(0, 0, 20, 20), _box(0, 20, 20, 20), _box(100, 0, 80, 20)],
            [_box(5, 5, 40, 30), _box(100, 0, 80, 20)],
            [True, True, False],
            None,
            False,
        ),
        # Don't-care GT overlapping care GT (its area is reduced by the overlap first).
        (
            [_box(0, 0, 200, 40), _box(10, 10, 60, 20), _box(100, 10, 60, 20)],
            [_box(10, 10, 60, 20), _box(90, 5, 100, 30)],
            [True, False, False],
            None,
            False,
        ),
        # Real text lengths and "###".
        (g3, g3[:2], None, ["ab", "###", "abcdefghijk"], True),
        (g3, g3[:2], None, ["ab", "", None], True),
        # 3-point GT (padded to a quad by POLY) and a 2-point GT (reference fallback).
        ([np.array([[0, 0], [100, 0], [100, 20.0]]), _box(0, 40, 80, 20)], [_box(0, 0, 100, 20)], None, None, False),
        ([np.array([[0, 0], [100, 20.0]]), _box(0, 40, 80, 20)], [_box(0, 40, 80, 20)], None, None, False),
        # Degenerate detection (zero area) and a self-intersecting one.
        (g3, [_box(10, 10, 0, 20), np.array([[10, 10], [110, 30], [110, 10], [10, 30.0]])], None, None, False),
        # Vertical word, rotated 90 degrees.
        ([_box(0, 0, 20, 120)], [_box(1, 0, 19, 60), _box(0, 62, 20, 58)], None, None, False),
    ]
    return cases


RECEIPT_SEEDS = list(range(40))


@pytest.fixture(scope="module")
def receipts():
    return [make_receipt(s) for s in RECEIPT_SEEDS]


# --------------------------------------------------------------------------- CLEval


def _assert_same(fast, ref, what):
    for key in ("recall", "precision", "hmean"):
        assert abs(fast[key] - ref[key]) <= TOL, (what, key, fast, ref)


def test_fast_cleval_equals_package_on_receipts(receipts):
    spread = []
    for seed, (gts, dets, ignore, texts) in zip(RECEIPT_SEEDS, receipts):
        fast = cleval_image_scores_fast(gts, dets, ignore, texts)
        ref = cleval_image_scores_reference(gts, dets, ignore, texts)
        _assert_same(fast, ref, f"seed {seed}")
        spread.append(ref["hmean"])
    # The set is not trivial: imperfect scores of various sizes.
    assert min(spread) < 0.9 and max(spread) < 1.0 and np.std(spread) > 0.01


def test_fast_cleval_equals_package_on_edge_cases():
    for k, (gts, dets, ignore, texts, use_len) in enumerate(special_cases()):
        fast = cleval_image_scores_fast(gts, dets, ignore, texts, use_text_lengths=use_len)
        ref = cleval_image_scores_reference(gts, dets, ignore, texts, use_text_lengths=use_len)
        _assert_same(fast, ref, f"case {k}")


def test_dont_care_ap_sum_filter_is_exercised():
    gts, dets, ignore, _, _ = special_cases()[6]
    # The detection over the two don't-care boxes is dropped: one perfect match remains.
    assert cleval_image_scores_fast(gts, dets, ignore) == {"recall": 1.0, "precision": 1.0, "hmean": 1.0}


def test_default_backend_is_fast_and_package_backend_is_reference(receipts):
    gts, dets, ignore, texts = receipts[0]
    assert cleval_image_scores(gts, dets, ignore, texts) == cleval_image_scores_fast(gts, dets, ignore, texts)
    assert cleval_image_scores(gts, dets, ignore, texts, backend="package") == cleval_image_scores_reference(
        gts, dets, ignore, texts
    )
    with pytest.raises(ValueError):
        cleval_image_scores(gts, dets, backend="nope")


# --------------------------------------------------------------------------- IoU


def _iou_reference(gts, dets, ignore, iou_threshold=0.5, dont_care_overlap=0.5):
    """ICDAR 2015 ``evaluate_method`` (detection only), pair by pair; returns (gt, det, matched)."""

    def geom(p):
        p = np.asarray(p, dtype=float).reshape(-1, 2)
        g = shapely.Polygon(p) if len(p) >= 3 else shapely.Polygon()
        return g if g.is_valid else shapely.make_valid(g)

    def inter(a, b):
        # Disjoint bounding boxes cannot intersect (a shortcut, not a rule change).
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.bounds, b.bounds
        if a.is_empty or b.is_empty or ax0 > bx1 or bx0 > ax1 or ay0 > by1 or by0 > ay1:
            return 0.0
        return a.intersection(b).area

    g = [geom(p) for p in gts]
    d = [geom(p) for p in dets]
    gt_dc = [bool(x) for x in ignore] if ignore is not None else [False] * len(g)
    det_dc = []
    for dj in d:
        flag = False
        if dj.area > 0:
            for gi, dc in zip(g, gt_dc):
                if dc and inter(gi, dj) / dj.area > dont_care_overlap:
                    flag = True
                    break
        det_dc.append(flag)
    gt_used, det_used, matched = [False] * len(g), [False] * len(d), 0
    for i, gi in enumerate(g):
        for j, dj in enumerate(d):
            if gt_used[i] or det_used[j] or gt_dc[i] or det_dc[j]:
                continue
            it = inter(gi, dj)
            union = gi.area + dj.area - it
            if union > 0 and it / union > iou_threshold:
                gt_used[i] = det_used[j] = True
                matched += 1
    return len(g) - sum(gt_dc), len(d) - sum(det_dc), matched


def test_iou_match_equals_pairwise_icdar15_loop(receipts):
    cases = [(gts, dets, ignore if texts is None else [t == "###" for t in texts]) for gts, dets, ignore, texts in receipts]
    cases += [(gts, dets, ignore) for gts, dets, ignore, texts, _ in special_cases() if texts is None]
    for k, (gts, dets, ignore) in enumerate(cases):
        for thr in (0.5, 0.3):
            c = iou_match(gts, dets, ignore, iou_threshold=thr)
            assert (c.num_gt, c.num_det, c.num_matched) == _iou_reference(gts, dets, ignore, thr), (k, thr)


def test_match_errors_agree_with_the_matching_on_receipts(receipts):
    """Every care word and box gets exactly one class, the matched ones are iou_match's, and the
    scenes hold every kind of error."""
    from collections import Counter

    from ocr.metrics.errors import DET_CLASSES, GT_CLASSES, match_errors

    words: Counter[str] = Counter()
    for gts, dets, ignore, texts in receipts:
        flags = ignore if texts is None else [t == "###" for t in texts]
        counts = iou_match(gts, dets, flags)
        errors = match_errors(gts, dets, flags)
        assert len(errors.gt) == len(gts) and len(errors.det) == len(dets)
        assert set(errors.gt) <= set(GT_CLASSES) and set(errors.det) <= set(DET_CLASSES)
        assert [i for i, c in enumerate(errors.gt) if c == "matched"] == sorted(counts.matched_gt)
        assert [j for j, c in enumerate(errors.det) if c == "matched"] == sorted(counts.matched_det)
        assert sum(c != "dont_care" for c in errors.gt) == counts.num_gt
        assert sum(c != "dont_care" for c in errors.det) == counts.num_det
        words.update(errors.gt)
    assert all(words[c] > 0 for c in ("matched", "merged", "split", "missed", "loose")), words
