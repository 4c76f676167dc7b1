"""Score saved predictions (our submission CSV or JSON, or any detector's output in the annotation
JSON layout) against ground truth, with the same scorer as benchmarks/accuracy.py.

    python -m benchmarks.score_predictions predictions=outputs/x/submissions/submission.csv \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json

An image of the annotations that the predictions lack counts as one with no detections.

predictions=<folder> scores every .csv / .json in it (e.g. the grid that rapidocr_baseline.py
writes) and prints one row per file, best IoU-hmean first.

predictions=<model.onnx> (with its sidecar, as runners/export.py writes them, float or int8) runs it
through ``Detector.from_onnx`` on the images first, and prints its seconds per image too:

    python -m benchmarks.score_predictions predictions=outputs/x/checkpoints/best.int8.onnx images=... annotations=...
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks.accuracy import evaluate, page_aspect, print_breakdowns, print_page_shapes, print_table
from ocr.data.annotations import load_annotation_file, load_samples
from ocr.submission import read_submission_csv

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


def onnx_predictions(model: Path, images: Path, samples: list) -> tuple[dict[str, list[np.ndarray]], float]:
    """{image name: polygons} of an exported model on the samples' images, and its mean seconds per
    image (read, resize, network, post-processing)."""
    import time

    from ocr.detector import Detector

    detector = Detector.from_onnx(model)
    start = time.perf_counter()
    found = detector.predict([images / s.name for s in samples])
    seconds = (time.perf_counter() - start) / max(len(samples), 1)
    return {s.name: list(prediction.polygons) for s, prediction in zip(samples, found)}, seconds


def records_of(predictions: dict[str, list[np.ndarray]], samples: list) -> list[tuple]:
    return [(s.name, s.polygons, s.ignore, s.texts, predictions.get(s.name, [])) for s in samples]


GRID_COLUMNS = {
    "IoU P": "IoU precision (pooled)",
    "IoU R": "IoU recall (pooled)",
    "IoU H": "IoU hmean (pooled)",
    "CLEval P": "CLEval precision",
    "CLEval R": "CLEval recall",
    "CLEval H": "CLEval hmean",
    "CLEval H, box-shape counts": "CLEval hmean (box-shape character counts)",
}


def score_folder(folder: Path, samples: list) -> dict[str, dict[str, float]]:
    """{file name: scores} for every prediction file in the folder, printed best IoU-hmean first."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".json"))
    if not files:
        raise SystemExit(f"no .csv or .json predictions in {folder}")
    results = {p.name: evaluate(records_of(read_predictions(p), samples)) for p in files}
    print(f"\n{len(samples)} images; {len(files)} prediction files in {folder}, best IoU-hmean first")
    print("| predictions | " + " | ".join(GRID_COLUMNS) + " |\n|" + " --- |" * (len(GRID_COLUMNS) + 1))
    for name, result in sorted(results.items(), key=lambda item: -item[1]["IoU hmean (pooled)"]):
        print(f"| {name} | " + " | ".join(f"{result[key]:.4f}" for key in GRID_COLUMNS.values()) + " |")
    best_cleval = max(results, key=lambda name: results[name]["CLEval hmean"])
    print(f"best CLEval hmean: {best_cleval} ({results[best_cleval]['CLEval hmean']:.4f})")
    return results


def main(argv: list[str]) -> dict:
    own = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    missing = [k for k in ("predictions", "images", "annotations") if not own.get(k)]
    if missing:
        raise SystemExit(f"missing {', '.join(f'{k}=...' for k in missing)}\n\n{__doc__}")
    samples = load_samples(own["images"], own["annotations"])
    if Path(own["predictions"]).is_dir():
        return score_folder(Path(own["predictions"]), samples)
    seconds = None
    if Path(own["predictions"]).suffix.lower() == ".onnx":
        predictions, seconds = onnx_predictions(Path(own["predictions"]), Path(own["images"]), samples)
    else:
        predictions = read_predictions(Path(own["predictions"]))
    absent = [s.name for s in samples if s.name not in predictions]
    if absent:
        log.warning(
            "%d of %d images have no predictions (scored as no detections), e.g. %s", len(absent), len(samples), absent[0]
        )
    records = records_of(predictions, samples)
    result = evaluate(records)
    if seconds is not None:
        result["seconds per image"] = seconds
    print(f"\n{len(samples)} images of {own['annotations']}; predictions {own['predictions']}")
    print_table(result)
    print_breakdowns(records)
    print_page_shapes(records, [page_aspect(s.orientation, s.size) for s in samples])
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main(sys.argv[1:])
