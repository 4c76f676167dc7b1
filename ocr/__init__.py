"""DBNet receipt text detection trainer."""

from ocr._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
__all__ = ["Detector"]


def __getattr__(name: str):
    # `from ocr import Detector` on first use: `import ocr` alone loads no Lightning, OpenCV or model code
    if name == "Detector":
        from ocr.detector import Detector

        return Detector
    raise AttributeError(f"module 'ocr' has no attribute {name!r}")
