"""CLEval scores computed by PyPI ``cleval==0.1.1`` itself, and the parts the fast path shares with it.

:func:`cleval_image_scores_reference` runs ``cleval.eval_functions.evaluation`` on POLY boxes; it
is the slow reference that :mod:`ocr.metrics.fast_cleval` reproduces (see :mod:`ocr.metrics.cleval`
for how both follow the competition's evaluator). :data:`CLEVAL_OPTIONS` and
:func:`pseudo_char_count` are shared with the fast path so both use the same constants and counts.

cleval 0.1.1's ``POLY`` cannot run ``evaluation`` as shipped, so :func:`cleval_image_scores_reference`
first patches the class, once per process (site-packages is not edited; importing this module
patches nothing):

1. ``POLY.scale = None`` -- ``prepare_gt`` reads ``gt_box.scale`` (scale-wise evaluation); only QUAD
   sets it; ``None`` means "no scale filter", as for QUAD.
2. ``POLY.pseudo_character_center`` accepts (and ignores) the ``vertical_aspect_ratio_thresh``
   argument that ``prepare_gt`` passes; POLY has no vertical-text branch.
3. Speed only, same results: ``POLY.is_inside`` first tests the polygon's bounding box and then uses
   ``shapely.contains_xy`` instead of building a shapely ``Point`` per call (~40k calls for
   100 GT x 100 detections), and ``POLY.__and__`` returns 0 at once for disjoint bounding boxes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import cv2
import numpy as np
import shapely
from cleval.box_types import POLY
from cleval.eval_functions import evaluation
from cleval.torchmetric import Options

from ocr.geometry import bounds_overlap
from ocr.metrics.common import as_polygons, dont_care_flags

__all__ = ["CLEVAL_OPTIONS", "cleval_image_scores_reference", "make_options", "pseudo_char_count"]

_EPS = float(np.finfo(np.float32).eps)
_MAX_PSEUDO_CHARS = 100  # the baseline's cap (cleval 0.1.1 caps at 10)
_PATCH_MARK = "_ocr_metrics_patched"


def make_options() -> Options:
    """cleval's options with ``CLEvalMetric``'s defaults, detection only."""
    options = Options(
        case_sensitive=True,
        recall_gran_penalty=1.0,
        precision_gran_penalty=1.0,
        vertical_aspect_ratio_thresh=0.5,
        ap_constraint=0.3,
    )
    options.E2E = False
    return options


CLEVAL_OPTIONS = make_options()


def pseudo_char_count(poly: np.ndarray) -> int:
    """Character count the evaluator assumes for a box without transcription (~long/short side)."""
    pts = np.asarray(poly, dtype=np.float32).reshape(-1, 2)
    w, h = cv2.minAreaRect(pts)[1]
    ratio = min(float(_MAX_PSEUDO_CHARS), h / (w + _EPS))
    # Python's round (half to even), as the baseline.
    return int(min(round(0.5 + max(ratio, 1.0 / (ratio + _EPS))), _MAX_PSEUDO_CHARS))


def _patch_cleval_poly() -> None:
    """Fix cleval 0.1.1's POLY for ``evaluation`` (see module doc); only the first call patches."""
    if getattr(POLY, _PATCH_MARK, False):
        return
    POLY.scale = None

    original_pcc = POLY.pseudo_character_center
    if len(inspect.signature(original_pcc).parameters) == 1:  # only ``self``: the 0.1.1 bug

        def pseudo_character_center(self: POLY, *_vertical_aspect_ratio_thresh: float) -> list:
            return original_pcc(self)

        POLY.pseudo_character_center = pseudo_character_center

    def _bounds(self: POLY) -> tuple[float, float, float, float]:
        # ``subtract`` replaces self.polygon (don't-care boxes), so cache per polygon object.
        cached = self.__dict__.get("_ocr_bounds")
        if cached is None or cached[0] is not self.polygon:
            cached = (self.polygon, self.polygon.bounds)
            self._ocr_bounds = cached
        return cached[1]

    def is_inside(self: POLY, x: float, y: float) -> bool:
        minx, miny, maxx, maxy = _bounds(self)
        if not (minx <= x <= maxx and miny <= y <= maxy):  # NaN bounds (empty) also land here
            return False
        return bool(shapely.contains_xy(self.polygon, x, y))

    original_and = POLY.__and__

    def intersection_area(self: POLY, other: POLY) -> float:
        if not bounds_overlap(_bounds(self), _bounds(other)):
            return 0.0
        return original_and(self, other)

    POLY.is_inside = is_inside
    POLY.__and__ = intersection_area
    setattr(POLY, _PATCH_MARK, True)


def cleval_image_scores_reference(
    gt_polys: Sequence[np.ndarray] | np.ndarray | None,
    det_polys: Sequence[np.ndarray] | np.ndarray | None,
    gt_ignore: Sequence[bool] | np.ndarray | None = None,
    gt_texts: Sequence[str | None] | None = None,
    *,
    use_text_lengths: bool = False,
) -> dict[str, float]:
    """:func:`ocr.metrics.cleval.cleval_image_scores` computed by the cleval package itself (slow)."""
    _patch_cleval_poly()
    gts = as_polygons(gt_polys)
    dets = [d for d in as_polygons(det_polys) if len(d) >= 3]
    dc = dont_care_flags(len(gts), gt_ignore, gt_texts)

    gt_boxes = []
    for i, poly in enumerate(gts):
        text = gt_texts[i] if (use_text_lengths and gt_texts is not None) else None
        letters = text if (text and not dc[i]) else "#" * pseudo_char_count(poly)
        # is_dc is explicit: a pseudo transcription of exactly three "#" must not read as don't-care.
        box = POLY(poly.reshape(-1).tolist(), transcription=letters, is_dc=bool(dc[i]))
        box.transcription = letters  # POLY overrides it for don't-care boxes with its own count
        gt_boxes.append(box)
    det_boxes = [POLY(poly.reshape(-1).tolist(), transcription="", is_dc=False) for poly in dets]

    stats = evaluation(CLEVAL_OPTIONS, gt_boxes, det_boxes).stats.det
    return {"recall": float(stats.recall), "precision": float(stats.precision), "hmean": float(stats.hmean)}
