"""The pretrained peer: PP-OCRv4 mobile DBNet (shipped inside the rapidocr_onnxruntime wheel), zero-shot
on a folder of images; writes its detections as an annotation-layout JSON for
benchmarks/score_predictions.py and prints seconds per image.

Runs in its own environment (rapidocr_onnxruntime pulls opencv-python, which clashes with this
project's opencv-python-headless):

    python -m venv /tmp/rapid && /tmp/rapid/bin/pip install rapidocr_onnxruntime==1.4.4 onnxruntime
    /tmp/rapid/bin/python -m benchmarks.rapidocr_baseline ../shared/data/sroie_dev/val/images rapidocr_val.json
    python -m benchmarks.score_predictions predictions=rapidocr_val.json \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json

Its own knobs, as name=value (its defaults: limit_side_len=736 limit_type=min thresh=0.3
box_thresh=0.5 unclip_ratio=1.6 use_dilation=true). Comma lists make a grid: the network runs once
per input size, every post-processing setting is applied to that output, and OUTPUT is a folder
with one JSON per setting, for `score_predictions.py predictions=<folder>`:

    /tmp/rapid/bin/python -m benchmarks.rapidocr_baseline $V/images rapidocr_grid \\
        limit_side_len=736,1600 limit_type=min,max thresh=0.2,0.3 unclip_ratio=1.2,1.6
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

# rapidocr 1.4.4's Det defaults (its config.yaml)
DEFAULTS: dict[str, Any] = {
    "limit_side_len": 736,
    "limit_type": "min",  # min: the short side is raised to limit_side_len; max: the long side is capped at it
    "thresh": 0.3,
    "box_thresh": 0.5,
    "unclip_ratio": 1.6,
    "use_dilation": True,
}
INPUT_KEYS = ("limit_side_len", "limit_type")  # what changes the network's output


def _value(key: str, text: str) -> Any:
    if key == "limit_side_len":
        return int(text)
    if key == "limit_type":
        if text not in ("min", "max"):
            raise ValueError(f"limit_type must be min or max, got {text!r}")
        return text
    if key == "use_dilation":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"use_dilation must be true or false, got {text!r}")
        return text.lower() == "true"
    return float(text)


def parse_settings(options: list[str]) -> list[dict[str, Any]]:
    """Every combination of the name=v1,v2 options over DEFAULTS, grouped by input size first."""
    grid: dict[str, list[Any]] = {key: [value] for key, value in DEFAULTS.items()}
    for option in options:
        key, sep, values = option.partition("=")
        if not sep or key not in DEFAULTS:
            raise ValueError(f"unknown option {option!r}: expected one of {', '.join(f'{k}=...' for k in DEFAULTS)}")
        grid[key] = [_value(key, v.strip()) for v in values.split(",")]
    keys = list(INPUT_KEYS) + [k for k in DEFAULTS if k not in INPUT_KEYS]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def setting_name(setting: dict[str, Any]) -> str:
    """A file name that says the setting, e.g. min736_thresh0.3_box0.5_unclip1.6_dilate."""
    return (
        f"{setting['limit_type']}{setting['limit_side_len']}_thresh{setting['thresh']:g}_box{setting['box_thresh']:g}"
        f"_unclip{setting['unclip_ratio']:g}_{'dilate' if setting['use_dilation'] else 'nodilate'}"
    )


def main(argv: list[str]) -> None:
    positional = [a for a in argv if "=" not in a]
    if len(positional) != 2:
        raise SystemExit(__doc__)
    settings = parse_settings([a for a in argv if "=" in a])
    image_dir, output = Path(positional[0]), Path(positional[1])
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images in {image_dir}")

    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess

    engine = RapidOCR()
    detector = engine.text_det
    detections: dict[str, dict[str, Any]] = {setting_name(s): {} for s in settings}
    for (limit_side_len, limit_type), group in itertools.groupby(settings, key=lambda s: (s["limit_side_len"], s["limit_type"])):
        group = list(group)
        preprocess = DetPreProcess(limit_side_len, limit_type, detector.mean, detector.std)
        postprocesses = [
            DBPostProcess(
                thresh=s["thresh"], box_thresh=s["box_thresh"], max_candidates=1000,
                unclip_ratio=s["unclip_ratio"], use_dilation=s["use_dilation"], score_mode="fast",
            )
            for s in group
        ]
        seconds = []
        for path in paths:
            # the steps of RapidOCR.__call__ with use_det only, split so that the network runs once
            # for all the post-processing settings
            start = time.perf_counter()
            raw = engine.load_img(str(path))
            image, ratio_h, ratio_w = engine.preprocess(raw)
            image, op_record = engine.maybe_add_letterbox(image, {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}})
            probability = detector.infer(preprocess(image))[0]
            for index, (setting, postprocess) in enumerate(zip(group, postprocesses)):
                boxes, _ = postprocess(probability, image.shape[:2])
                boxes = detector.filter_tag_det_res(boxes, image.shape[:2])
                if len(boxes):
                    boxes = engine._get_origin_points(boxes, op_record, raw.shape[0], raw.shape[1])
                if index == 0:
                    seconds.append(time.perf_counter() - start)
                words = {f"{i + 1:04d}": {"points": [[float(x), float(y)] for x, y in box]} for i, box in enumerate(boxes)}
                detections[setting_name(setting)][path.name] = {"words": words}
        print(f"{limit_type}{limit_side_len}: {len(paths)} images, {sum(seconds) / len(seconds):.3f} s per image "
              f"(network + one post-processing), {len(group)} settings")

    if len(settings) == 1:
        output.write_text(json.dumps({"images": next(iter(detections.values()))}))
        print(f"-> {output}")
        return
    output.mkdir(parents=True, exist_ok=True)
    for name, images in detections.items():
        (output / f"{name}.json").write_text(json.dumps({"images": images}))
    print(f"{len(settings)} settings -> {output}/")


if __name__ == "__main__":
    main(sys.argv[1:])
