import numpy as np
import pytest
from shapely.geometry import Polygon

from ocr.data.targets import make_db_targets
from ocr.geometry import exif_to_upright
from ocr.models.postprocess import DBPostProcessor


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def iou(a, b):
    pa, pb = Polygon(a), Polygon(b)
    return pa.intersection(pb).area / pa.union(pb).area


def best_iou(polygon, candidates):
    return max(iou(polygon, c) for c in candidates)


# Word-sized boxes. Unclipping by A * ratio / L only inverts DBNet's shrink for one aspect
# ratio at a time; 2.0 inverts it for these (tuned ratios for real outputs come from val).
WORDS = [rect(20, 20, 140, 44), rect(160, 20, 230, 44), rect(20, 70, 110, 96), rect(40, 130, 120, 152)]
UNCLIP = 2.0


@pytest.mark.parametrize("use_polygon", [False, True])
def test_round_trip_from_ground_truth_shrink_map(use_polygon):
    shrink_map = make_db_targets((180, 320), WORDS)["shrink_map"]
    postprocess = DBPostProcessor(box_thresh=0.5, use_polygon=use_polygon, box_unclip_ratio=UNCLIP, polygon_unclip_ratio=UNCLIP)
    detections = postprocess(shrink_map)
    assert len(detections.polygons) == len(WORDS)
    for word in WORDS:
        assert best_iou(word, detections.polygons) > 0.8
    assert all(score == pytest.approx(1.0) for score in detections.scores)


def test_maps_back_to_original_pixels_and_clips():
    # network input was the original scaled by (0.5, 0.25)
    scale = (0.5, 0.25)
    shrink_map = make_db_targets((180, 320), WORDS)["shrink_map"]
    detections = DBPostProcessor(box_thresh=0.5, box_unclip_ratio=UNCLIP)(shrink_map, scale=scale, raw_size=(640, 720))
    for word in WORDS:
        original = word / np.array(scale)
        assert best_iou(original, detections.polygons) > 0.8
    for polygon in detections.polygons:
        assert polygon[:, 0].max() <= 639 and polygon[:, 1].max() <= 719 and polygon.min() >= 0


def test_polygons_are_clipped_to_the_image():
    shrink_map = make_db_targets((100, 200), [rect(2, 2, 120, 26)])["shrink_map"]
    detections = DBPostProcessor(box_thresh=0.5, box_unclip_ratio=3.0)(shrink_map, raw_size=(200, 100))
    assert len(detections.polygons) == 1
    assert detections.polygons[0].min() == 0  # grown past the edge, clipped back


def test_exif_rotated_image_maps_back_to_stored_frame():
    raw_size = (320, 180)  # stored image; orientation 6 shows it rotated to 180 x 320
    word_raw = rect(20, 70, 130, 94)
    word_upright = exif_to_upright(word_raw, 6, raw_size)
    shrink_map = make_db_targets((320, 180), [word_upright])["shrink_map"]
    detections = DBPostProcessor(box_thresh=0.5, box_unclip_ratio=UNCLIP)(shrink_map, raw_size=raw_size, orientation=6)
    assert len(detections.polygons) == 1
    assert iou(word_raw, detections.polygons[0]) > 0.8


def test_keeps_the_best_candidates_not_the_first_found():
    prob = np.zeros((200, 200), dtype=np.float32)
    prob[10:30, 10:60] = 0.65  # found first (top of the image), weakest
    prob[100:120, 10:60] = 0.95
    prob[150:170, 10:60] = 0.9
    detections = DBPostProcessor(thresh=0.3, box_thresh=0.5, max_candidates=2)(prob)
    assert sorted(round(s, 2) for s in detections.scores) == [0.9, 0.95]
    assert all(p[:, 1].min() > 80 for p in detections.polygons)


def test_box_thresh_filters_weak_regions():
    prob = np.zeros((100, 100), dtype=np.float32)
    prob[10:30, 10:60] = 0.5
    assert DBPostProcessor(thresh=0.3, box_thresh=0.6)(prob).polygons == []
    assert len(DBPostProcessor(thresh=0.3, box_thresh=0.4)(prob).polygons) == 1


@pytest.mark.parametrize("use_polygon", [False, True])
def test_same_output_as_the_reference_implementation(use_polygon):
    import cv2

    from benchmarks.pages import make_page
    from benchmarks.reference_postprocess import ReferenceDBPostProcessor

    for seed, (width, height, words) in enumerate([(640, 640, 110), (960, 1600, 440)]):
        _, polygons = make_page(width, height, words, seed=seed)
        prob = cv2.GaussianBlur(make_db_targets((height, width), polygons)["shrink_map"], (5, 5), 1.5)
        prob += np.random.default_rng(seed).uniform(0, 0.25, prob.shape).astype(np.float32)  # weak noise blobs
        options = dict(use_polygon=use_polygon, box_thresh=0.5, max_candidates=300)
        for scale, raw_size, orientation in [((1.0, 1.0), None, 1), ((0.5, 0.8), (height * 2, int(width / 0.8)), 6)]:
            ours = DBPostProcessor(**options)(prob, scale=scale, raw_size=raw_size, orientation=orientation)
            reference = ReferenceDBPostProcessor(**options)(prob, scale=scale, raw_size=raw_size, orientation=orientation)
            assert len(ours.polygons) == len(reference.polygons) > 100
            assert ours.scores == pytest.approx(reference.scores, abs=1e-12)
            for a, b in zip(ours.polygons, reference.polygons):
                np.testing.assert_array_equal(a, b)


def test_vectorised_rectangle_area_and_length_match_opencv_bit_for_bit():
    # the unclip distance is computed for all boxes at once; any last-bit difference from
    # cv2.contourArea / cv2.arcLength could move pyclipper's rounded output
    import cv2

    from ocr.models.postprocess import rectangle_area_and_length

    rng = np.random.default_rng(0)
    rects = [((rng.uniform(0, 2000), rng.uniform(0, 2000)), (rng.uniform(0.5, 400), rng.uniform(0.5, 60)), rng.uniform(-90, 90)) for _ in range(5000)]
    corners = np.stack([cv2.boxPoints(rect) for rect in rects])
    area, length = rectangle_area_and_length(corners)
    np.testing.assert_array_equal(area, [cv2.contourArea(c) for c in corners])
    np.testing.assert_array_equal(length, [cv2.arcLength(c, True) for c in corners])


def two_words_on_a_line(bridge: float) -> np.ndarray:
    """Probability map of two words (cores 0.9) whose halos touch through a ``bridge``-valued gap,
    plus a faint word (0.4 everywhere, no core) further down."""
    prob = np.zeros((80, 200), dtype=np.float32)
    prob[20:36, 20:90] = 0.9
    prob[20:36, 100:170] = 0.9
    prob[20:36, 90:100] = bridge
    prob[55:65, 30:60] = 0.4
    return prob


def test_split_thresh_cuts_regions_with_two_cores_and_keeps_faint_words():
    prob = two_words_on_a_line(bridge=0.4)
    merged = DBPostProcessor(thresh=0.35, box_thresh=0.3, box_unclip_ratio=0.1)(prob)
    assert len(merged.polygons) == 2  # the two words as one box, and the faint word
    assert best_iou(rect(20, 20, 170, 36), merged.polygons) > 0.8

    split = DBPostProcessor(thresh=0.35, split_thresh=0.6, box_thresh=0.3, box_unclip_ratio=0.1)(prob)
    assert len(split.polygons) == 3
    # each word keeps its half of the gap: the cut runs where the nearest core changes
    assert best_iou(rect(20, 20, 95, 36), split.polygons) > 0.85
    assert best_iou(rect(95, 20, 170, 36), split.polygons) > 0.85
    assert best_iou(rect(30, 55, 60, 65), split.polygons) > 0.8  # no core, not dropped

    # a plain higher threshold also separates the words, but loses the faint one
    higher = DBPostProcessor(thresh=0.6, box_thresh=0.3, box_unclip_ratio=0.1)(prob)
    assert len(higher.polygons) == 2
    assert best_iou(rect(30, 55, 60, 65), higher.polygons) == 0


def test_a_threshold_map_raises_the_threshold_where_it_is_higher_only():
    """DB's binary map at inference: the threshold branch is high at the words' borders, so the
    bridge between two words (0.4, above thresh) is cut where the map says 0.5, while the faint
    word, under a map of 0.3, is kept by the fixed thresh."""
    prob = two_words_on_a_line(bridge=0.4)
    thresh_map = np.full_like(prob, 0.3)
    thresh_map[20:36, 90:100] = 0.5
    postprocess = DBPostProcessor(thresh=0.35, box_thresh=0.3, box_unclip_ratio=0.1)
    found = postprocess(prob, thresh_map=thresh_map)
    assert len(found.polygons) == 3
    assert best_iou(rect(20, 20, 90, 36), found.polygons) > 0.85 and best_iou(rect(100, 20, 170, 36), found.polygons) > 0.85
    assert best_iou(rect(30, 55, 60, 65), found.polygons) > 0.8
    # a map under thresh everywhere changes nothing
    for a, b in zip(postprocess(prob).polygons, postprocess(prob, thresh_map=np.zeros_like(prob)).polygons):
        np.testing.assert_array_equal(a, b)


def left_word_with_a_speck() -> np.ndarray:
    """The left word has no core, only a 2 x 2 speck above 0.6 (under ``min_size`` squared)."""
    prob = two_words_on_a_line(bridge=0.4)
    prob[20:36, 20:90] = 0.5
    prob[27:29, 50:52] = 0.9
    return prob


@pytest.mark.parametrize(
    "prob",
    [
        two_words_on_a_line(bridge=0.9),  # one solid line: a single core
        left_word_with_a_speck(),
    ],
    ids=["one_core", "speck"],
)
def test_split_thresh_leaves_regions_without_two_cores_alone(prob):
    plain = DBPostProcessor(thresh=0.35, box_thresh=0.3)(prob)
    split = DBPostProcessor(thresh=0.35, split_thresh=0.6, box_thresh=0.3)(prob)
    assert len(split.polygons) == len(plain.polygons) == 2
    for a, b in zip(plain.polygons, split.polygons):
        np.testing.assert_array_equal(a, b)


def test_split_thresh_must_lie_above_thresh():
    with pytest.raises(ValueError, match="split_thresh"):
        DBPostProcessor(thresh=0.4, split_thresh=0.3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_to_exif_undoes_exif_to_upright(orientation):
    from ocr.geometry import upright_to_exif

    points = np.random.default_rng(orientation).uniform(0, 50, (10, 2))
    upright = exif_to_upright(points, orientation, (57, 83))
    assert np.allclose(upright_to_exif(upright, orientation, (57, 83)), points)
    if orientation != 1:
        assert not np.allclose(upright, points)  # the mapping did something
