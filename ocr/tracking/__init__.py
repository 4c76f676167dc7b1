"""Experiment tracking with Weights & Biases.

- :mod:`ocr.tracking.wandb_setup`: the logger (mode and credential detection, offline fallback,
  model artifacts with metadata, the final ``wandb sync`` hint).
- :mod:`ocr.tracking.callbacks`: Lightning callbacks (config + system info, ``define_metric``,
  best/summary, throughput and gradient norm, validation media and per-image tables, run info in
  checkpoints, test prediction collection).
- :mod:`ocr.tracking.artifacts`: model artifacts used by test/predict (lineage) and prediction
  artifacts.

``wandb`` is imported lazily: nothing here needs it unless ``wandb=true``.
"""
