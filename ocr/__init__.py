"""DBNet receipt text detection trainer."""

from ocr._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
