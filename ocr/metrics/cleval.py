"""CLEval (character-level) detection scores for one image, with PyPI ``cleval==0.1.1``.

How this matches the competition's evaluator (the Upstage receipt-OCR baseline, which vendors
clovaai/CLEval with its POLY box type):

* Box type POLY, detection only. The baseline calls ``metric(det_quads, gt_quads)`` with no
  transcriptions at all, one image at a time (compute, then reset), and averages the per-image
  ``det_r / det_p / det_h`` over images. We call ``cleval.eval_functions.evaluation`` directly: it
  is what ``CLEvalMetric.update`` runs, its per-sample ``recall/precision/hmean`` use the same
  formula as ``CLEvalMetric.compute`` on a single image, and no torchmetrics object is created.
* Character counts without transcriptions: the baseline's POLY turns ``transcription=None`` into
  ``"#" * pseudo_transcription_length()``, i.e. ``min(round(0.5 + max(ar, 1/ar)), 100)`` with ``ar``
  the height/width ratio of the polygon's minimum-area rectangle (about long side / short side).
  PyPI cleval 0.1.1 has no such fallback (``len(None)`` fails), so :func:`pseudo_char_count`
  computes it and GT boxes get that many ``"#"``. Real transcriptions, when present, are NOT used for
  the counts by default (``use_text_lengths=False``) because the evaluator never sees them; only
  ``"###"`` is honoured, as don't-care. Don't-care GT get the same pseudo count (cleval 0.1.1's POLY
  would give every one 10 because of the aspect-ratio typo below).
* Unmatched detections: cleval charges ``min(round(0.5 + 1/aspect_ratio), 10)`` characters. cleval
  0.1.1's ``POLY.make_aspect_ratio`` returns ``min(10, h/w) + 1e5`` (typo for ``1e-5``), so every
  false positive costs exactly 1 character, like QUAD for a horizontal box. Left as shipped; the
  baseline's vendored copy can charge up to ~long/short characters depending on the rectangle's
  orientation. CLEval thus barely punishes false positives; read the IoU scores beside it.
* Empty cases mirror cleval: recall = 0 when there are no (care) GT characters, precision = 0 when
  there are no detection characters, hmean = 0 when both are 0. So an image with no GT scores
  0/0/0 whatever is detected, even when nothing is.
* Detections with fewer than 3 points enclose no area; they are dropped.

Monkeypatch, applied once on import (site-packages is not edited), for ``cleval.box_types.POLY``:

1. ``POLY.scale = None`` -- ``prepare_gt`` reads ``gt_box.scale`` (scale-wise evaluation); only QUAD
   sets it; ``None`` means "no scale filter", as for QUAD.
2. ``POLY.pseudo_character_center`` accepts (and ignores) the ``vertical_aspect_ratio_thresh``
   argument that ``prepare_gt`` passes; POLY has no vertical-text branch.
3. Speed only, same results: ``POLY.is_inside`` first tests the polygon's bounding box and then uses
   ``shapely.contains_xy`` instead of building a shapely ``Point`` per call (~40k calls for
   100 GT x 100 detections), and ``POLY.__and__`` returns 0 at once for disjoint bounding boxes.

With 4-point boxes these POLY scores agree with cleval's QUAD type within ~1e-3 (QUAD uses
integer-truncated Polygon3 geometry, POLY float shapely geometry).

Speed: :func:`cleval_image_scores` uses the vectorised re-implementation in
:mod:`ocr.metrics.fast_cleval` by default (same scores, asserted against this package path in
``tests/test_metrics_fast.py``); :func:`cleval_image_scores_reference` (or ``backend="package"``)
runs cleval's ``evaluation`` on the patched POLY boxes described above.
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

from ocr.metrics.iou import as_polygons

__all__ = ["cleval_image_scores", "cleval_image_scores_reference", "pseudo_char_count", "make_options"]

_EPS = float(np.finfo(np.float32).eps)
_MAX_PSEUDO_CHARS = 100  # the baseline's cap (cleval 0.1.1 caps at 10)
_PATCH_MARK = "_ocr_metrics_patched"


def _patch_cleval_poly() -> None:
    """Fix cleval 0.1.1's POLY for ``evaluation`` (see module doc); idempotent."""
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
        a, b = _bounds(self), _bounds(other)
        if a[0] > b[2] or b[0] > a[2] or a[1] > b[3] or b[1] > a[3]:
            return 0.0
        return original_and(self, other)

    POLY.is_inside = is_inside
    POLY.__and__ = intersection_area
    setattr(POLY, _PATCH_MARK, True)


_patch_cleval_poly()


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


_OPTIONS = make_options()


def pseudo_char_count(poly: np.ndarray) -> int:
    """Character count the evaluator assumes for a box without transcription (~long/short side)."""
    pts = np.asarray(poly, dtype=np.float32).reshape(-1, 2)
    w, h = cv2.minAreaRect(pts)[1]
    ratio = min(float(_MAX_PSEUDO_CHARS), h / (w + _EPS))
    # Python's round (half to even), as the baseline.
    return int(min(round(0.5 + max(ratio, 1.0 / (ratio + _EPS))), _MAX_PSEUDO_CHARS))


def _dont_care(
    n: int, gt_ignore: Sequence[bool] | np.ndarray | None, gt_texts: Sequence[str | None] | None
) -> np.ndarray:
    dc = np.zeros(n, dtype=bool) if gt_ignore is None else np.asarray(gt_ignore, dtype=bool).reshape(-1)
    if dc.shape[0] != n:
        raise ValueError(f"expected {n} don't-care flags, got {dc.shape[0]}")
    if gt_texts is not None:
        if len(gt_texts) != n:
            raise ValueError(f"expected {n} GT texts, got {len(gt_texts)}")
        dc = dc | np.array([t == "###" for t in gt_texts], dtype=bool)
    return dc


def cleval_image_scores(
    gt_polys: Sequence[np.ndarray] | np.ndarray | None,
    det_polys: Sequence[np.ndarray] | np.ndarray | None,
    gt_ignore: Sequence[bool] | np.ndarray | None = None,
    gt_texts: Sequence[str | None] | None = None,
    *,
    use_text_lengths: bool = False,
    backend: str = "fast",
) -> dict[str, float]:
    """CLEval detection recall / precision / hmean of one image (POLY boxes, see module doc).

    ``gt_texts`` marks ``"###"`` as don't-care; with ``use_text_lengths`` the other texts also set
    the GT character counts (empty or ``None`` texts fall back to the pseudo count).

    ``backend="fast"`` (default) uses the vectorised :mod:`ocr.metrics.fast_cleval` (same scores,
    ~10x faster); ``backend="package"`` runs cleval's own ``evaluation``
    (:func:`cleval_image_scores_reference`), the reference the fast path is tested against.
    """
    if backend == "fast":
        from ocr.metrics.fast_cleval import cleval_image_scores_fast

        return cleval_image_scores_fast(gt_polys, det_polys, gt_ignore, gt_texts, use_text_lengths=use_text_lengths)
    if backend == "package":
        return cleval_image_scores_reference(
            gt_polys, det_polys, gt_ignore, gt_texts, use_text_lengths=use_text_lengths
        )
    raise ValueError(f"unknown CLEval backend {backend!r} (expected 'fast' or 'package')")


def cleval_image_scores_reference(
    gt_polys: Sequence[np.ndarray] | np.ndarray | None,
    det_polys: Sequence[np.ndarray] | np.ndarray | None,
    gt_ignore: Sequence[bool] | np.ndarray | None = None,
    gt_texts: Sequence[str | None] | None = None,
    *,
    use_text_lengths: bool = False,
) -> dict[str, float]:
    """:func:`cleval_image_scores` computed by the cleval package itself (slow reference path)."""
    gts = as_polygons(gt_polys)
    dets = [d for d in as_polygons(det_polys) if len(d) >= 3]
    dc = _dont_care(len(gts), gt_ignore, gt_texts)

    gt_boxes = []
    for i, poly in enumerate(gts):
        text = gt_texts[i] if (use_text_lengths and gt_texts is not None) else None
        letters = text if (text and not dc[i]) else "#" * pseudo_char_count(poly)
        # is_dc is explicit: a pseudo transcription of exactly three "#" must not read as "###".
        box = POLY(poly.reshape(-1).tolist(), transcription=letters, is_dc=bool(dc[i]))
        box.transcription = letters  # POLY overrides it for don't-care boxes with its own count
        gt_boxes.append(box)
    det_boxes = [POLY(poly.reshape(-1).tolist(), transcription="", is_dc=False) for poly in dets]

    stats = evaluation(_OPTIONS, gt_boxes, det_boxes).stats.det
    return {"recall": float(stats.recall), "precision": float(stats.precision), "hmean": float(stats.hmean)}
