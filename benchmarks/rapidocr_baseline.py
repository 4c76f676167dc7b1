"""The pretrained peer: PP-OCRv4 mobile DBNet (shipped inside the rapidocr_onnxruntime wheel), zero-shot
on a folder of images; writes its detections as an annotation-layout JSON for
benchmarks/score_predictions.py and prints seconds per image.

Runs in its own environment (rapidocr_onnxruntime pulls opencv-python, which clashes with this
project's opencv-python-headless):

    python -m venv /tmp/rapid && /tmp/rapid/bin/pip install rapidocr_onnxruntime==1.4.4 onnxruntime
    /tmp/rapid/bin/python benchmarks/rapidocr_baseline.py ../shared/data/sroie_dev/val/images rapidocr_val.json [unclip_ratio]
    python benchmarks/score_predictions.py predictions=rapidocr_val.json \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    from rapidocr_onnxruntime import RapidOCR

    image_dir, output = Path(argv[0]), Path(argv[1])
    options = {"unclip_ratio": float(argv[2])} if len(argv) > 2 else {}  # its default is 1.6
    engine = RapidOCR()
    images, seconds = {}, []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        start = time.perf_counter()
        boxes, _ = engine(str(path), use_det=True, use_cls=False, use_rec=False, **options)
        seconds.append(time.perf_counter() - start)
        words = {f"{i + 1:04d}": {"points": [[float(x), float(y)] for x, y in box]} for i, box in enumerate(boxes or [])}
        images[path.name] = {"words": words}
    output.write_text(json.dumps({"images": images}))
    print(f"{len(images)} images -> {output}; {sum(seconds) / max(len(seconds), 1):.3f} s per image ({options or 'defaults'})")


if __name__ == "__main__":
    main(sys.argv[1:])
