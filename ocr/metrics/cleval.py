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
  PyPI cleval 0.1.1 has no such fallback (``len(None)`` fails), so
  :func:`ocr.metrics.cleval_reference.pseudo_char_count` computes it and GT boxes get that many
  ``"#"``. Real transcriptions, when present, are NOT used for the counts by default
  (``use_text_lengths=False``) because the evaluator never sees them; only ``"###"`` is honoured,
  as don't-care. Don't-care GT get the same pseudo count (cleval 0.1.1's POLY
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

With 4-point boxes these POLY scores agree with cleval's QUAD type within ~1e-3 (QUAD uses
integer-truncated Polygon3 geometry, POLY float shapely geometry).

Speed: :func:`cleval_image_scores` uses the vectorised re-implementation in
:mod:`ocr.metrics.fast_cleval` by default (same scores, asserted against the package path in
``tests/test_metrics_fast.py``); ``backend="package"`` runs
:func:`ocr.metrics.cleval_reference.cleval_image_scores_reference`, cleval's own ``evaluation`` on
POLY boxes (patched on first use so that it runs at all, see that module).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ocr.metrics.cleval_reference import cleval_image_scores_reference
from ocr.metrics.fast_cleval import cleval_image_scores_fast

__all__ = ["cleval_image_scores"]


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
    (:func:`ocr.metrics.cleval_reference.cleval_image_scores_reference`), the reference the fast
    path is tested against.
    """
    if backend == "fast":
        return cleval_image_scores_fast(gt_polys, det_polys, gt_ignore, gt_texts, use_text_lengths=use_text_lengths)
    if backend == "package":
        return cleval_image_scores_reference(gt_polys, det_polys, gt_ignore, gt_texts, use_text_lengths=use_text_lengths)
    raise ValueError(f"unknown CLEval backend {backend!r} (expected 'fast' or 'package')")
