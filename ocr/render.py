"""Pictures of detections for people: the page with ground truth and predictions drawn, used by
predict's ``render=true`` overlays and W&B's validation media, and the per-image score table that
goes with them (error analysis without W&B)."""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ocr.data.images import read_image
from ocr.geometry import exif_to_upright
from ocr.metrics.detection import DetectionEvaluator
from ocr.metrics.errors import MatchErrors, match_errors
from ocr.submission import write_files_atomically

log = logging.getLogger(__name__)

GT_COLOUR, IGNORED_COLOUR, PRED_COLOUR = (0, 200, 0), (150, 150, 150), (230, 0, 0)
MISSED_COLOUR, FALSE_COLOUR = (255, 170, 0), (200, 0, 200)  # unmatched words and unmatched boxes
# per_image.csv columns, as DetectionEvaluator rows them (worst hmean first)
PER_IMAGE_COLUMNS = (
    "image", "hmean", "recall", "precision", "iou_hmean", "iou_recall", "iou_precision",
    "num_gt", "num_det", "num_matched_iou", "num_merged", "num_split", "num_missed", "num_loose", "num_background",
)  # fmt: skip


def draw_detections(
    image_path: str | Path,
    gt_polygons: Sequence[np.ndarray],
    gt_ignore: Any,
    det_polygons: Sequence[np.ndarray],
    max_side: int = 1024,
    errors: MatchErrors | None = None,
) -> Image.Image:
    """The page upright (polygons are given in the stored image's frame and turned with it), ground
    truth in green (don't-care in grey), predictions in red, scaled so the long side is at most
    ``max_side``. With ``errors`` (:func:`ocr.metrics.errors.match_errors`): words left unmatched
    (missed, merged, split, loose) in orange, boxes that match no word in magenta, both thicker."""
    image, orientation, raw_size = read_image(Path(image_path))
    canvas = Image.fromarray(image)
    scale = min(1.0, float(max_side) / max(canvas.size)) if max_side else 1.0
    if scale < 1.0:
        canvas = canvas.resize((max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale))))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 500))
    ignore = np.zeros(len(gt_polygons), bool) if gt_ignore is None else np.asarray(gt_ignore, bool).reshape(-1)

    def outline(polygon: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
        upright = exif_to_upright(np.asarray(polygon, float).reshape(-1, 2), orientation, raw_size) * scale
        if len(upright) >= 3:
            draw.polygon([(float(x), float(y)) for x, y in upright], outline=colour, width=thickness)

    for i, polygon in enumerate(gt_polygons):
        kind = errors.gt[i] if errors is not None else "matched"
        if i < len(ignore) and ignore[i]:
            outline(polygon, IGNORED_COLOUR, width)
        elif kind in ("matched", "dont_care"):
            outline(polygon, GT_COLOUR, width)
        else:
            outline(polygon, MISSED_COLOUR, 2 * width)
    for i, polygon in enumerate(det_polygons):
        false_box = errors is not None and errors.det[i] in ("background", "on_text")
        outline(polygon, FALSE_COLOUR if false_box else PRED_COLOUR, 2 * width if false_box else width)
    return canvas


def per_image_csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` (:meth:`ocr.metrics.detection.DetectionEvaluator.per_image`, worst first) as CSV."""
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(PER_IMAGE_COLUMNS)
    for row in rows:
        values = [row["image_id"], *(row.get(column) for column in PER_IMAGE_COLUMNS[1:])]
        writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in values])
    return handle.getvalue()


def save_picture(picture: Image.Image, target: Path) -> None:
    """``picture`` as a PNG at ``target``, written beside it first: a failure leaves no half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            picture.save(out, format="PNG")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_error_analysis(
    output_dir: Path,
    samples: Sequence[Any],
    rows: Sequence[dict[str, Any]],
    evaluator: DetectionEvaluator,
    render_all: bool = False,
    render_worst: int = 0,
    max_side: int = 0,
) -> dict[str, Path]:
    """Error analysis of a predict run without W&B. ``samples``: the split's (with ground truth when
    annotated); ``rows``: its predictions, one per image. With annotations, ``per_image.csv`` (scores
    and error counts per image, worst first) and the ``render_worst`` worst pages drawn under
    ``renders/worst/``; with ``render_all``, every page under ``renders/``. Returns what it wrote."""
    from rich.progress import track

    by_name = {sample.name: sample for sample in samples}
    found = {row["name"]: row["polygons"] for row in rows if row["name"] in by_name}
    written: dict[str, Path] = {}
    ranked: list[dict[str, Any]] = []
    annotated = [name for name in found if by_name[name].annotated]
    if annotated:
        for name in annotated:
            sample = by_name[name]
            evaluator.update(name, sample.polygons, found[name], sample.ignore, sample.texts)
        ranked = evaluator.per_image()  # worst first
        written["per_image"] = output_dir / "per_image.csv"
        write_files_atomically({written["per_image"]: per_image_csv_text(ranked)})
        log.info("Per-image scores (worst first): %s", written["per_image"])

    def render(name: str, target: Path) -> None:
        sample = by_name[name]
        errors = match_errors(sample.polygons, found[name], sample.ignore, evaluator.iou_threshold) if sample.annotated else None
        save_picture(draw_detections(sample.image_path, sample.polygons, sample.ignore, found[name], max_side, errors), target)

    if render_all:
        for name in track(sorted(found), description="Rendering", transient=True):
            render(name, output_dir / "renders" / f"{Path(name).stem}.png")
        written["renders"] = output_dir / "renders"
        log.info("Drew %d pages under %s", len(found), written["renders"])
    if ranked and render_worst > 0:
        for rank, row in enumerate(ranked[:render_worst], start=1):
            render(row["image_id"], output_dir / "renders" / "worst" / f"{rank:03d}_{Path(row['image_id']).stem}.png")
        written["worst"] = output_dir / "renders" / "worst"
        log.info("Drew the %d worst pages under %s", min(render_worst, len(ranked)), written["worst"])
    return written
