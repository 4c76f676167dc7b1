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
    for key in ours:
        assert np.abs(ours[key] - reference[key]).max() <= 1e-6, key
    assert ours["shrink_map"].sum() > 0 and (ours["shrink_mask"] == 0).sum() > 0
