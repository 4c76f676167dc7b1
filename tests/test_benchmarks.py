"""benchmarks/score_predictions.py: saved predictions scored with the accuracy benchmark's scorer."""

import json

import pytest

from benchmarks import score_predictions
from ocr.submission import write_submission_csv
from tests.helpers import rect, write_split


@pytest.fixture
def truth(tmp_path):
    images = {
        "a.jpg": {"words": {"0001": {"points": rect(10, 10, 90, 30)}, "0002": {"points": rect(10, 50, 90, 70)}}},
        "b.jpg": {"words": {"0001": {"points": rect(20, 20, 150, 40)}}},
    }
    image_dir, json_path = write_split(tmp_path, "val", images)
    return image_dir, json_path, images


def test_ground_truth_as_predictions_scores_one(truth, tmp_path):
    image_dir, json_path, _ = truth
    scores = score_predictions.main([f"predictions={json_path}", f"images={image_dir}", f"annotations={json_path}"])
    assert scores["IoU hmean (pooled)"] == 1.0 and scores["CLEval hmean"] == pytest.approx(1.0)


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
