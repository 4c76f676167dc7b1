import json
import logging

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from ocr.data.annotations import AnnotationError, load_samples
from ocr.data.dataset import ImageReadError, ReceiptDataset, collate_receipts
from ocr.data.transforms import PolygonAugment, RandomRescale, ResizeForEval, TextAwareRandomCrop
from ocr.geometry import EXIF_ORIENTATION_TAG, exif_to_upright, upright_to_exif
from ocr.testing import rect, write_split


# -- annotations and bad input --------------------------------------------------------
def test_loads_polygons_and_dont_care(tmp_path):
    words = {"0001": {"points": rect(10, 10, 60, 30), "transcription": "TOTAL"}, "0002": {"points": rect(70, 10, 120, 30), "transcription": "###"}}
    image_dir, json_path = write_split(tmp_path, "train", {"a.jpg": {"words": words}})
    (sample,) = load_samples(image_dir, json_path)
    assert sample.annotated and sample.ignore == [False, True] and sample.texts == ["TOTAL", "###"]
    np.testing.assert_array_equal(sample.polygons[0], np.array(rect(10, 10, 60, 30)))


def test_missing_image_names_the_file(tmp_path):
    image_dir, json_path = write_split(tmp_path, "train", {"a.jpg": {"words": {}}})
    (image_dir / "a.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"a\.jpg.*not found"):
        load_samples(image_dir, json_path)
    assert load_samples(image_dir, json_path, bad_image="skip") == []
    assert load_samples(image_dir, json_path, missing_image="skip") == []  # the option's former name


def test_malformed_json_names_the_file(tmp_path):
    image_dir, json_path = write_split(tmp_path, "train", {"a.jpg": {"words": {}}})
    json_path.write_text('{"images": {"a.jpg": ')
    with pytest.raises(AnnotationError, match=r"train\.json: malformed JSON"):
        load_samples(image_dir, json_path)
    json_path.write_text('{"pictures": {}}')
    with pytest.raises(AnnotationError, match=r'train\.json: expected .*"images"'):
        load_samples(image_dir, json_path)


@pytest.mark.parametrize(
    "points, problem",
    [([[1, 1], [5, 5]], "at least 3 points"), ([[1, 1], [5, float("nan")], [9, 9], [1, 9]], "NaN"), ([1, 2, 3], "pairs"), ("x", "numbers|pairs")],
)
def test_invalid_polygon_is_a_logged_skip_or_an_error(tmp_path, caplog, points, problem):
    words = {"0001": {"points": rect(10, 10, 60, 30)}, "0002": {"points": points}}
    image_dir, json_path = write_split(tmp_path, "train", {"a.jpg": {"words": words}})
    with caplog.at_level(logging.WARNING):
        (sample,) = load_samples(image_dir, json_path)
    assert len(sample.polygons) == 1
    assert "'0002'" in caplog.text and "a.jpg" in caplog.text
    with pytest.raises(AnnotationError, match=problem):
        load_samples(image_dir, json_path, invalid_polygon="error")


def test_unreadable_image_names_the_file(tmp_path):
    """Found when the split is built (every image's header is read), not in a DataLoader worker."""
    image_dir, json_path = write_split(tmp_path, "train", {"a.jpg": {"words": {}}})
    (image_dir / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match=r"a\.jpg: cannot read image"):
        ReceiptDataset(image_dir, json_path, resize=ResizeForEval(128))


def test_unannotated_split_lists_images(tmp_path):
    image_dir, _ = write_split(tmp_path, "test", {"b.jpg": {"words": {}}, "a.jpg": {"words": {}}})
    dataset = ReceiptDataset(image_dir, None, resize=ResizeForEval(128))
    assert not dataset.annotated and [s.name for s in dataset.samples] == ["a.jpg", "b.jpg"]
    assert "shrink_map" not in dataset[0]


def test_test_json_without_any_word_is_an_unannotated_image_list(tmp_path, caplog):
    """The competition's test.json lists its images with empty "words": nothing to score, and
    predictions cover exactly the listed images."""
    image_dir, json_path = write_split(tmp_path, "test", {"a.jpg": {"words": {}}, "b.jpg": {"words": {}}})
    (image_dir / "unlisted.jpg").write_bytes((image_dir / "a.jpg").read_bytes())
    with caplog.at_level("INFO"):
        dataset = ReceiptDataset(image_dir, json_path, resize=ResizeForEval(128))
    assert not dataset.annotated and [s.name for s in dataset.samples] == ["a.jpg", "b.jpg"]
    assert "treating the split as unannotated" in caplog.text and "test.json" in caplog.text
    # one image with a word: an annotated split whose other image has no text
    image_dir, json_path = write_split(tmp_path / "val", "val", {"a.jpg": {"words": {"0001": {"points": rect(5, 5, 50, 20)}}}, "b.jpg": {"words": {}}})
    assert ReceiptDataset(image_dir, json_path, resize=ResizeForEval(128)).annotated


# -- EXIF -------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_moves_polygons_with_the_image(tmp_path, orientation):
    raw = np.full((60, 100, 3), 255, np.uint8)
    raw[10:20, 70:90] = 0  # a dark word in the stored frame
    path = tmp_path / "images" / "train" / "r.jpg"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(raw).save(path, exif=exif, quality=100)
    json_path = tmp_path / "train.json"
    json_path.write_text(json.dumps({"images": {"r.jpg": {"words": {"1": {"points": rect(70, 10, 89, 19)}}}}}))
    # the loaded sample keeps what the header says: the stored size and the tag (page shapes read both)
    sample = load_samples(path.parent, json_path)[0]
    assert (sample.size, sample.orientation) == ((100, 60), orientation)
    dataset = ReceiptDataset(path.parent, json_path, resize=ResizeForEval(100, multiple=1))
    item = dataset[0]
    image = item["image"].numpy().transpose(1, 2, 0)
    polygon = exif_to_upright(np.array(rect(70, 10, 89, 19), float), orientation, (100, 60))
    x0, y0 = polygon.min(axis=0).astype(int)
    x1, y1 = polygon.max(axis=0).astype(int)
    assert image[y0 : y1 + 1, x0 : x1 + 1].mean() < 40  # the polygon sits on the dark word
    assert item["shrink_map"][y0 : y1 + 1, x0 : x1 + 1].sum() > 0
    np.testing.assert_allclose(upright_to_exif(polygon, orientation, (100, 60)), rect(70, 10, 89, 19))


# -- augmentation keeps polygons whole ---------------------------------------------------
def _polygons():
    return [np.array(rect(x, y, x + 40, y + 12), float) for x in (10, 80, 150) for y in (10, 50, 90, 130)]


def test_large_shift_clips_and_removes_polygons_without_mixing_points():
    image = np.zeros((160, 200, 3), np.uint8)
    polygons = _polygons()
    shift = A.Affine(translate_px={"x": 120, "y": 0}, p=1.0)
    out_image, out, ignore = PolygonAugment([shift])(image, polygons, [False] * len(polygons))
    # x shifted by 120: boxes at 10..50 land at 130..170 (kept), the others leave the frame
    assert len(out) == 4
    for polygon in out:
        assert polygon[:, 0].min() >= 130 - 1e-6 and polygon[:, 0].max() <= 170 + 1e-6
    straddle = A.Affine(translate_px={"x": 170, "y": 0}, p=1.0)
    _, out, _ = PolygonAugment([straddle])(image, polygons, [False] * len(polygons))
    assert len(out) == 4  # 10..50 -> 180..220: clipped at 199
    for polygon in out:
        assert polygon[:, 0].max() <= 199 and polygon[:, 0].min() >= 180 - 1e-6


def test_rotate_scale_keeps_each_polygon_its_own_points():
    image = np.zeros((160, 200, 3), np.uint8)
    polygons = _polygons()
    augment = PolygonAugment([A.Affine(rotate=(-30, 30), scale=(0.5, 2.0), translate_percent=(-0.3, 0.3), p=1.0)])
    for _ in range(20):
        out_image, out, _ = augment(image, polygons, [False] * len(polygons))
        h, w = out_image.shape[:2]
        for polygon in out:
            assert polygon[:, 0].min() >= 0 and polygon[:, 0].max() <= w - 1
            assert polygon[:, 1].min() >= 0 and polygon[:, 1].max() <= h - 1
            # a word's points stay a (possibly clipped) rectangle-ish shape of bounded size:
            # borrowing a vertex from another word would stretch it across the image
            side = np.linalg.norm(np.diff(np.vstack([polygon, polygon[:1]]), axis=0), axis=1).max()
            assert side <= 2.0 * 40 * 1.05 + 1


def test_vertices_stay_with_their_polygon_under_rotation():
    image = np.zeros((300, 300, 3), np.uint8)
    polygons = [np.array(rect(100, 100, 140, 112), float), np.array(rect(160, 180, 200, 192), float)]
    augment = PolygonAugment([A.Affine(rotate=(90, 90), p=1.0)])
    _, out, _ = augment(image, polygons, [False, True])
    assert len(out) == 2
    centre = np.array([149.5, 149.5])
    for source, moved in zip(polygons, out):
        # a 90 degree rotation about the centre maps the source centroid onto the moved centroid
        c = source.mean(axis=0) - centre
        rotated = np.array([[c[1], -c[0]], [-c[1], c[0]]]) + centre
        assert min(np.linalg.norm(moved.mean(axis=0) - r) for r in rotated) < 2.0


def test_words_inside_outside_and_across_the_frame_are_kept_dropped_and_clipped_as_shapely_says():
    from shapely.geometry import MultiPolygon, Polygon, box

    def reference(points, width, height, min_area):
        """Inside: unchanged; otherwise the largest piece of its intersection with the frame, if any."""
        xmax, ymax = width - 1, height - 1
        if points.min() >= 0 and points[:, 0].max() <= xmax and points[:, 1].max() <= ymax:
            return points
        shape = Polygon(points)
        piece = (shape if shape.is_valid else shape.buffer(0)).intersection(box(0, 0, xmax, ymax))
        if isinstance(piece, MultiPolygon):
            piece = max(piece.geoms, key=lambda g: g.area)
        if not isinstance(piece, Polygon) or piece.is_empty or piece.area < min_area:
            return None
        return np.asarray(piece.exterior.coords[:-1], dtype=np.float64)

    rng = np.random.default_rng(0)
    image = np.zeros((100, 120, 3), np.uint8)
    # inside; outside on each side; touching the frame's edges from outside (no area inside);
    # across an edge and a corner; a sliver under min_area across the edge; random quads anywhere
    polygons = [np.array(p, float) for p in (
        rect(10, 10, 50, 30), rect(-40, 10, -5, 30), rect(130, 10, 160, 30), rect(10, -30, 50, -5), rect(10, 105, 50, 140),
        rect(-20, 10, 0, 30), rect(119, 10, 150, 30), rect(10, 99, 50, 120), rect(100, 40, 150, 60), rect(-10, -10, 20, 20),
        rect(10, 98.5, 11, 130), rect(-10, 40, 3, 60), rect(-0.5, 40, 30, 60), rect(60, 40, 119.5, 60),
    )] + [rng.uniform(-60, 180, (4, 2)) for _ in range(200)]
    ignore = [i % 3 == 0 for i in range(len(polygons))]
    augment = PolygonAugment([], min_area=4.0)
    _, kept, kept_ignore = augment(image, polygons, ignore)
    # the vertices as the pipeline moves them (albumentations holds keypoints in float32)
    _, moved = augment.move(image, polygons)
    expected = [(reference(p, 120, 100, 4.0), flag) for p, flag in zip(moved, ignore)]
    expected = [(p, flag) for p, flag in expected if p is not None]
    assert len(kept) == len(expected) and kept_ignore == [flag for _, flag in expected]
    for got, (want, _) in zip(kept, expected):
        np.testing.assert_array_equal(got, want)
    assert len(kept) >= 4 and any(len(p) != 4 for p in kept)  # some were clipped, some dropped


def test_training_pipeline_gives_fixed_size_crops_with_text():
    image = np.full((700, 450, 3), 255, np.uint8)
    polygons = [np.array(rect(20, y, 200, y + 16), float) for y in range(20, 680, 30)]
    augment = PolygonAugment([RandomRescale(640, (0.8, 1.2)), TextAwareRandomCrop(384, 384)])
    for _ in range(5):
        out_image, out, _ = augment(image, polygons, [False] * len(polygons))
        assert out_image.shape == (384, 384, 3) and len(out) > 0


class _AugmentedCrops(torch.utils.data.Dataset):
    """The same page augmented once per index: what each DataLoader worker draws."""

    def __init__(self, augment, page, polygons):
        self.augment, self.page, self.polygons = augment, page, polygons

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.augment(self.page, self.polygons, [False] * len(self.polygons))[0]


def test_training_crops_repeat_under_the_run_seed_and_differ_between_seeds_and_workers():
    # albumentations' generators are its own: left unseeded they draw from the OS, and seed=42 would not repeat a run
    page = np.random.default_rng(0).integers(0, 256, (700, 450, 3), dtype=np.uint8)
    polygons = [np.array(rect(20, y, 200, y + 16), float) for y in range(20, 680, 30)]

    def pipeline():
        return PolygonAugment([RandomRescale(640, (0.5, 1.5)), TextAwareRandomCrop(128, 128), A.ColorJitter(p=0.5)])

    def crops(global_seed):  # as seed_everything leaves numpy's global generator
        np.random.seed(global_seed)
        augment = pipeline()
        return [augment(page, polygons, [False] * len(polygons))[0] for _ in range(4)]

    first = crops(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, crops(1)))
    assert not any(np.array_equal(a, b) for a, b in zip(first, crops(2)))
    assert not np.array_equal(first[0], first[1])  # one stream, not one draw repeated

    def worker_crops():  # worker 0 augments items 0 and 2, worker 1 items 1 and 3
        torch.manual_seed(3)  # the DataLoader's base seed, which seed_everything fixes
        loader = torch.utils.data.DataLoader(_AugmentedCrops(pipeline(), page, polygons), batch_size=None, num_workers=2)
        return [crop.numpy() for crop in loader]

    by_worker = worker_crops()
    assert not np.array_equal(by_worker[0], by_worker[1])  # the workers do not share one stream
    assert all(np.array_equal(a, b) for a, b in zip(by_worker, worker_crops()))


def test_eval_resize_is_a_multiple_of_32_and_invertible():
    resize = ResizeForEval(640)
    image = np.zeros((1000, 463, 3), np.uint8)
    out, polygons, scale = resize(image, [np.array(rect(10, 10, 100, 40), float)])
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0 and out.shape[0] == 640
    np.testing.assert_allclose(polygons[0] / np.array(scale), rect(10, 10, 100, 40))
    short = ResizeForEval(960, mode="short_side", long_side_cap=1600)
    assert short.target_size(463, 1000) == (736, 1600)  # the long-side cap wins
    assert short.target_size(800, 1000) == (960, 1216)  # short side reaches 960


@pytest.mark.parametrize(
    ("mode", "cap", "size", "expected"),
    [("short_side", 1600, (463, 1000), (741, 1600)), ("short_side", 1600, (800, 1000), (960, 1200)), ("long_side", None, (800, 1000), (768, 960))],
)
def test_training_rescale_follows_the_inference_sizing_rule(mode, cap, size, expected):
    """Without jitter, training sees a page at the size ResizeForEval gives it (before rounding to
    a multiple of 32): text has the same pixel height in training and at inference."""
    rescale = PolygonAugment([RandomRescale(960, (1.0, 1.0), mode=mode, long_side_cap=cap)])
    image = np.full((size[1], size[0], 3), 255, np.uint8)
    out_image, out, _ = rescale(image, [np.array(rect(100, 100, 200, 130), float)], [False])
    assert out_image.shape[:2] == (expected[1], expected[0])
    factor = expected[0] / size[0]
    np.testing.assert_allclose(out[0], np.array(rect(100, 100, 200, 130)) * factor, rtol=1e-3)
    eval_size = ResizeForEval(960, mode=mode, long_side_cap=cap).target_size(*size)
    assert all(abs(e - t) <= 16 for e, t in zip(eval_size, expected))  # same scale, eval rounds to 32
    with pytest.raises(ValueError, match="resize mode"):
        RandomRescale(960, mode="longest")
    for bad in [(0.0, 1.5), (-0.5, 1.5), (1.5, 0.5), (0.5,)]:
        with pytest.raises(ValueError, match="scale_range"):
            RandomRescale(960, bad)


def test_collate_pads_to_a_multiple_of_32(tmp_path):
    words = {"0001": {"points": rect(10, 10, 60, 30)}}
    image_dir, json_path = write_split(tmp_path, "val", {"a.jpg": {"words": words}, "b.jpg": {"words": words}})
    dataset = ReceiptDataset(image_dir, json_path, resize=ResizeForEval(100, multiple=1))
    batch = collate_receipts([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 64, 128) and batch["image"].dtype == torch.uint8
    assert batch["shrink_mask"][:, 60:, :].sum() == 0  # padding is outside the loss
    assert batch["valid_size"] == [(100, 60), (100, 60)]
    # the 0/1 maps travel as uint8, the threshold map as float32: the same values as the targets'
    from ocr.data.targets import make_db_targets

    maps = make_db_targets((60, 100), [p * 100 / 200 for p in dataset.samples[0].polygons], config=dataset.targets)
    for key in ("shrink_map", "shrink_mask", "threshold_map", "threshold_mask"):
        assert batch[key].dtype == (torch.float32 if key == "threshold_map" else torch.uint8), key
        np.testing.assert_array_equal(batch[key][0, :60, :100].float().numpy(), maps[key])


def test_gap_mask_is_collated_only_when_the_targets_make_it(tmp_path):
    from ocr.data.targets import TargetConfig

    words = {"0001": {"points": rect(10, 10, 40, 30)}, "0002": {"points": rect(46, 10, 90, 30)}}  # one line, 6 px apart
    image_dir, json_path = write_split(tmp_path, "val", {"a.jpg": {"words": words}, "b.jpg": {"words": words}})
    plain = ReceiptDataset(image_dir, json_path, resize=ResizeForEval(100, multiple=1))
    assert "gap_mask" not in collate_receipts([plain[0], plain[1]])
    gaps = ReceiptDataset(image_dir, json_path, resize=ResizeForEval(100, multiple=1), targets=TargetConfig(word_gap_max=1.5))
    batch = collate_receipts([gaps[0], gaps[1]])
    assert batch["gap_mask"].shape == batch["shrink_map"].shape == (2, 64, 128)
    # at the network scale (x0.5) the kernels end at column 17 and start at 26, over rows 8-12:
    # the gap is exactly the columns between them, on the kernels' rows
    rows, cols = torch.nonzero(batch["gap_mask"][0], as_tuple=True)
    kernel_rows, kernel_cols = torch.nonzero(batch["shrink_map"][0], as_tuple=True)
    assert (rows.min(), rows.max()) == (kernel_rows.min(), kernel_rows.max())
    assert (cols.min(), cols.max()) == (kernel_cols[kernel_cols < 20].max() + 1, kernel_cols[kernel_cols > 20].min() - 1)
    assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # the whole rectangle
    assert torch.equal(batch["gap_mask"][0], batch["gap_mask"][1])
