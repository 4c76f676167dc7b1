"""Text-detection metrics: CLEval (competition metric) and ICDAR 2015 IoU matching.

Modules, each importing only those above it:

* :mod:`~ocr.metrics.common`: polygons, shapely geometries, don't-care flags, intersection areas;
* :mod:`~ocr.metrics.iou`: ICDAR 2015 one-to-one IoU matching and pooled scores;
* :mod:`~ocr.metrics.errors`: why unmatched words and boxes went unmatched (uses ``iou``);
* :mod:`~ocr.metrics.cleval_reference`: CLEval by the ``cleval`` package (patched on first use);
* :mod:`~ocr.metrics.fast_cleval`: the same CLEval scores, vectorised;
* :mod:`~ocr.metrics.cleval`: :func:`cleval_image_scores`, either CLEval backend;
* :mod:`~ocr.metrics.detection`: the per-epoch :class:`DetectionEvaluator` over all of them.
"""

from ocr.metrics.cleval import cleval_image_scores
from ocr.metrics.cleval_reference import cleval_image_scores_reference, pseudo_char_count
from ocr.metrics.common import dont_care_flags
from ocr.metrics.detection import DetectionEvaluator
from ocr.metrics.errors import MatchErrors, match_errors
from ocr.metrics.iou import IoUCounts, iou_match, pooled_scores

__all__ = [
    "DetectionEvaluator",
    "IoUCounts",
    "MatchErrors",
    "cleval_image_scores",
    "cleval_image_scores_reference",
    "dont_care_flags",
    "iou_match",
    "match_errors",
    "pooled_scores",
    "pseudo_char_count",
]
