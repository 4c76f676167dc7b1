import numpy as np
import pytest

from ocr.data.targets import TargetConfig, make_db_targets, offset_distances


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def test_rectangle_shrink_and_threshold_values():
    polygon = rect(20, 20, 120, 50)  # 100 x 30
    maps = make_db_targets((100, 160), [polygon])
    distance = 100 * 30 * (1 - 0.4**2) / 260
    assert offset_distances([polygon], 0.4)[0] == pytest.approx(distance)
    # the shrunk kernel is the rectangle inset by D on every side (rounded corners aside)
    kernel_area = (100 - 2 * distance) * (30 - 2 * distance)
    assert maps["shrink_map"].sum() == pytest.approx(kernel_area, rel=0.1)
    assert maps["shrink_map"][35, 70] == 1 and maps["shrink_map"][22, 70] == 0
    assert maps["shrink_mask"].min() == 1  # nothing ignored
    threshold = maps["threshold_map"]
    # on the border: thresh_max; D/2 away: midway; >= D away: thresh_min
    assert threshold[20, 70] == pytest.approx(0.7, abs=1e-6)
    assert threshold[35, 70] == pytest.approx(0.3, abs=1e-6)  # centre is 15 px > D from every edge
    half = int(round(distance / 2))
    assert threshold[20 - half, 70] == pytest.approx(0.3 + 0.4 * (1 - half / distance), abs=1e-5)
    assert threshold[5, 5] == pytest.approx(0.3)
    # threshold mask: the polygon grown by D
    assert maps["threshold_mask"][20 - int(distance) + 1, 70] == 1
    assert maps["threshold_mask"][20 - int(distance) - 2, 70] == 0
    for value in maps.values():
        assert value.dtype == np.float32 and np.isfinite(value).all()


def test_configurable_ratio_and_range():
    config = TargetConfig(shrink_ratio=0.6, thresh_min=0.2, thresh_max=0.9)
    maps = make_db_targets((100, 160), [rect(20, 20, 120, 50)], config=config)
    assert maps["threshold_map"].min() == pytest.approx(0.2)
    assert maps["threshold_map"].max() == pytest.approx(0.9, abs=1e-6)
    default = make_db_targets((100, 160), [rect(20, 20, 120, 50)])
    assert maps["shrink_map"].sum() > default["shrink_map"].sum()  # less shrinking


@pytest.mark.parametrize(
    "polygon",
    [
        rect(10, 10, 60, 14),  # thinner than min_text_size
        np.array([[10, 10], [60, 10], [90, 10], [30, 10]], dtype=float),  # zero area
        np.array([[10, 10], [10, 10], [10, 10], [10, 10]], dtype=float),  # a point
    ],
    ids=["tiny", "zero-area", "point"],
)
def test_degenerate_polygons_are_ignored_not_crashing(polygon):
    maps = make_db_targets((80, 100), [polygon])
    assert maps["shrink_map"].sum() == 0
    assert maps["threshold_mask"].sum() == 0
    for value in maps.values():
        assert np.isfinite(value).all()
    if np.ptp(polygon[:, 1]) > 0:
        assert maps["shrink_mask"][12, 30] == 0  # its area is excluded from the loss


def test_dont_care_polygon_goes_to_ignore_mask():
    maps = make_db_targets((100, 160), [rect(20, 20, 120, 50), rect(20, 60, 120, 90)], ignore=[False, True])
    assert maps["shrink_mask"][75, 70] == 0 and maps["shrink_map"][75, 70] == 0
    assert maps["shrink_mask"][35, 70] == 1 and maps["shrink_map"][35, 70] == 1
    assert maps["threshold_map"][60, 70] == pytest.approx(0.3)  # no border drawn for the ignored word


def test_polygon_partly_outside_is_drawn_inside_only():
    maps = make_db_targets((60, 60), [rect(30, 10, 120, 40)])
    assert maps["shrink_map"][25, 50] == 1
    assert maps["threshold_map"].shape == (60, 60)


def test_overlapping_polygons_take_the_max_threshold():
    a, b = rect(10, 10, 80, 40), rect(60, 20, 130, 50)
    both = make_db_targets((70, 150), [a, b])["threshold_map"]
    only_a = make_db_targets((70, 150), [a])["threshold_map"]
    only_b = make_db_targets((70, 150), [b])["threshold_map"]
    np.testing.assert_allclose(both, np.maximum(only_a, only_b), atol=1e-7)


def random_polygons(rng, count, width, height):
    polygons = []
    for _ in range(count):
        kind = rng.integers(0, 6)
        cx, cy = rng.uniform(-20, width + 20), rng.uniform(-20, height + 20)  # some cross the border
        w, h = rng.uniform(2, 120), rng.uniform(2, 40)
        if kind == 0:  # degenerate: zero area
            polygons.append(np.array([[cx, cy], [cx + w, cy], [cx + 2 * w, cy], [cx + w / 2, cy]]))
            continue
        if kind == 1:  # many-point polygon
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 12)))
            polygons.append(np.stack([cx + w * np.cos(angles), cy + h * np.sin(angles)], axis=1))
            continue
        if kind == 2:  # self-intersecting bow tie
            polygons.append(np.array([[cx, cy], [cx + w, cy + h], [cx + w, cy], [cx, cy + h]]))
            continue
        angle = rng.uniform(-np.pi / 4, np.pi / 4) if kind == 3 else 0.0  # rotated or axis-aligned
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        polygons.append(corners @ rotation.T + [cx, cy])
    return polygons


@pytest.mark.parametrize("seed", range(6))
def test_identical_to_the_straightforward_reference(seed):
    from benchmarks.reference_targets import reference_db_targets

    rng = np.random.default_rng(seed)
    height, width = [(120, 200), (333, 257), (640, 640)][seed % 3]
    polygons = random_polygons(rng, 60, width, height)  # dense: many overlap
    ignore = rng.random(len(polygons)) < 0.15
    config = TargetConfig(shrink_ratio=rng.uniform(0.3, 0.7), min_text_size=rng.choice([3.0, 8.0]))
    ours = make_db_targets((height, width), polygons, ignore, config)
    reference = reference_db_targets((height, width), polygons, ignore, config)
    for key in reference:  # the four DBNet maps (the gap mask is tested on its own)
        assert np.abs(ours[key] - reference[key]).max() <= 1e-6, key
    assert ours["shrink_map"].sum() > 0 and (ours["shrink_mask"] == 0).sum() > 0


GAPS = TargetConfig(shrink_ratio=0.6, word_gap_max=1.5)


def test_gap_mask_covers_the_background_between_neighbours_of_a_line():
    # two words of one line 6 px apart, a far word on the same line, a word on the next line
    polygons = [rect(10, 10, 60, 30), rect(66, 10, 120, 30), rect(200, 10, 250, 30), rect(10, 40, 60, 60)]
    maps = make_db_targets((80, 260), polygons, config=GAPS)
    gap, kernel = maps["gap_mask"], maps["shrink_map"]
    rows, cols = np.nonzero(gap)
    # only between the first two words' kernels: from the end of one kernel to the start of the next,
    # over the kernels' rows
    kernel_cols = np.nonzero(kernel[20])[0]
    left_end = kernel_cols[kernel_cols < 63].max()
    right_start = kernel_cols[kernel_cols > 63].min()
    assert (cols.min(), cols.max()) == (left_end + 1, right_start - 1)
    kernel_rows = np.nonzero(kernel[:, 30])[0]
    kernel_rows = kernel_rows[kernel_rows < 35]
    assert (rows.min(), rows.max()) == (kernel_rows.min(), kernel_rows.max())
    assert gap[20, left_end + 1 : right_start].all()
    assert not (gap * kernel).any()  # never on text
    assert gap[35, 30] == 0 and gap[20, 150] == 0  # not between lines, not across a wide gap (80 px > 1.5 x 20)
    # the other maps do not change
    plain = make_db_targets((80, 260), polygons, config=TargetConfig(shrink_ratio=0.6))
    assert "gap_mask" not in plain
    for key in ("shrink_map", "shrink_mask", "threshold_map", "threshold_mask"):
        np.testing.assert_array_equal(plain[key], maps[key])


def test_gap_mask_skips_dont_care_words_and_takes_any_polygon():
    # a clipped word is a pentagon: polygons with different point counts
    pentagon = np.array([[66, 10], [120, 10], [120, 25], [115, 30], [66, 30]], dtype=float)
    maps = make_db_targets((80, 160), [rect(10, 10, 60, 30), pentagon], config=GAPS)
    assert maps["gap_mask"][20, 63] == 1
    ignored = make_db_targets((80, 160), [rect(10, 10, 60, 30), pentagon], ignore=[False, True], config=GAPS)
    assert ignored["gap_mask"].sum() == 0
    # words too small for the loss have no kernel, so no gap to them
    small = make_db_targets((80, 160), [rect(10, 10, 60, 30), rect(66, 12, 120, 15)], config=GAPS)
    assert small["gap_mask"].sum() == 0
