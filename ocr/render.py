"""Pictures of detections for people: the page with ground truth and predictions drawn, used by
predict's ``render=true`` overlays and W&B's validation media, and the per-image score table that
goes with them (error analysis without W&B)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ocr.data.dataset import read_image
from ocr.geometry import exif_to_upright
from ocr.metrics.errors import MatchErrors

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
