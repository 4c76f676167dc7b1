import csv

import numpy as np
import pytest

from ocr.submission import (
    SubmissionError,
    format_polygons,
    read_submission_csv,
    validate_submission,
    write_predictions_json,
    write_submission_csv,
)


def prediction(name, polygons, size=(100, 80)):
    return {"name": name, "raw_size": size, "polygons": [np.asarray(p, float) for p in polygons]}


def test_csv_format(tmp_path):
    predictions = [
        prediction("b.jpg", [[[10.4, 10.6], [50, 10], [50, 30], [10, 30]], [[60, 5], [90, 5], [90, 20], [75, 25], [60, 20]]]),
        prediction("a.jpg", []),
    ]
    path = write_submission_csv(tmp_path / "s.csv", predictions, expected_images=["a.jpg", "b.jpg"])
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["filename", "polygons"],
        ["a.jpg", ""],
        ["b.jpg", "10 11 50 10 50 30 10 30|60 5 90 5 90 20 75 25 60 20"],
    ]
    parsed = read_submission_csv(path)
    assert parsed["a.jpg"] == [] and parsed["b.jpg"][1].shape == (5, 2)


def test_coordinates_are_clipped_into_the_image(tmp_path):
    path = write_submission_csv(tmp_path / "s.csv", [prediction("a.jpg", [[[-3, -1], [120, 0], [120, 90], [0, 90]]])])
    polygon = read_submission_csv(path)["a.jpg"][0]
    assert polygon.min() == 0 and polygon[:, 0].max() == 99 and polygon[:, 1].max() == 79


def test_degenerate_polygons_are_dropped_not_written(tmp_path):
    # collapses to 2 distinct integer points
    path = write_submission_csv(tmp_path / "s.csv", [prediction("a.jpg", [[[1.1, 1.1], [1.2, 1.2], [5, 5], [5.1, 5.1]]])])
    assert read_submission_csv(path)["a.jpg"] == []


def test_missing_image_is_refused_before_writing(tmp_path):
    with pytest.raises(SubmissionError, match="no prediction for 1 image"):
        write_submission_csv(tmp_path / "s.csv", [prediction("a.jpg", [])], expected_images=["a.jpg", "b.jpg"])
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    "field, problem",
    [("1 2 3 4 5 6", "at least 4"), ("1 2 3 4 5 6 7", "at least 4"), ("1 2 3 4 5 6 7 nan", "not an integer"), ("1 2 3 4 5 6 7 8.5", "not an integer"), ("1 2 300 4 5 6 7 8", "outside")],
)
def test_validation_names_image_and_problem(field, problem):
    with pytest.raises(SubmissionError, match=f"'a.jpg', polygon 0: .*{problem}"):
        validate_submission({"a.jpg": field}, {"a.jpg": (100, 80)})


def test_format_polygons():
    assert format_polygons([np.array([[1, 2], [3, 4], [5, 6], [7, 8]])]) == "1 2 3 4 5 6 7 8"


def test_predictions_json_uses_the_competition_layout(tmp_path):
    import json

    path = write_predictions_json(tmp_path / "p.json", [prediction("a.jpg", [[[10, 10], [50, 10], [50, 30], [10, 30]]])])
    data = json.loads(path.read_text())
    assert data == {"images": {"a.jpg": {"img_w": 100, "img_h": 80, "words": {"0001": {"points": [[10, 10], [50, 10], [50, 30], [10, 30]]}}}}}
