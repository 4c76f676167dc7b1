"""Command-line entry: `python runners/fetch_pretrained.py [destination] [--wheel WHEEL]`.

Downloads PP-OCRv4's mobile text detector (inside the rapidocr_onnxruntime wheel on PyPI) to
pretrained/ch_PP-OCRv4_det_infer.onnx, where `preset=sroie_ppocr` looks for it."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ocr  # noqa: E402,F401  (applies the torchvision import workaround first)
from ocr.models.ppocr import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
