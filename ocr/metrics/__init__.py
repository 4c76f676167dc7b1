"""Text-detection metrics: CLEval (competition metric) and ICDAR 2015 IoU matching."""

from ocr.metrics.cleval import cleval_image_scores, cleval_image_scores_reference, pseudo_char_count
from ocr.metrics.detection import DetectionEvaluator
from ocr.metrics.errors import MatchErrors, match_errors
from ocr.metrics.iou import IoUCounts, iou_match, pooled_scores

__all__ = [
    "DetectionEvaluator",
    "IoUCounts",
    "MatchErrors",
    "cleval_image_scores",
    "cleval_image_scores_reference",
    "iou_match",
    "match_errors",
    "pooled_scores",
    "pseudo_char_count",
]
