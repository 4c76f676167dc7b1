"""Score saved predictions (our submission CSV or JSON, or any detector's output in the annotation
JSON layout) against ground truth, with the same scorer as benchmarks/accuracy.py.

    python benchmarks/score_predictions.py predictions=outputs/x/submissions/submission.csv \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json

An image of the annotations that the predictions lack counts as one with no detections.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.accuracy import evaluate, print_breakdowns, print_table  # noqa: E402
from ocr.data.annotations import load_annotation_file, load_samples  # noqa: E402
from ocr.submission import read_submission_csv  # noqa: E402

log = logging.getLogger("score_predictions")


def read_predictions(path: Path) -> dict[str, list[np.ndarray]]:
    """{image name: polygons} from a submission CSV (filename,polygons) or an annotation-layout JSON."""
    if path.suffix.lower() == ".csv":
        return read_submission_csv(path)
    images = load_annotation_file(path)["images"]
    return {
        name: [np.asarray(word["points"], dtype=np.float64) for word in (entry.get("words") or {}).values()]
        for name, entry in images.items()
    }


def main(argv: list[str]) -> dict[str, float]:
    own = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    missing = [k for k in ("predictions", "images", "annotations") if not own.get(k)]
    if missing:
        raise SystemExit(f"missing {', '.join(f'{k}=...' for k in missing)}\n\n{__doc__}")
    predictions = read_predictions(Path(own["predictions"]))
    samples = load_samples(own["images"], own["annotations"])
    absent = [s.name for s in samples if s.name not in predictions]
    if absent:
        log.warning(
            "%d of %d images have no predictions (scored as no detections), e.g. %s", len(absent), len(samples), absent[0]
        )
    records = [(s.name, s.polygons, s.ignore, s.texts, predictions.get(s.name, [])) for s in samples]
    result = evaluate(records)
    print(f"\n{len(samples)} images of {own['annotations']}; predictions {own['predictions']}")
    print_table(result)
    print_breakdowns(records)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main(sys.argv[1:])
