"""Reading image files as users have them.

Every supported file becomes the same upright 8-bit RGB page: grayscale (1, L, I;16*, I, F),
16-bit colour (48/64-bit PNG and TIFF, read exactly through OpenCV: Pillow keeps only the high
byte), palette (with or without transparency), LA / RGBA (composited on white paper, the colour
of a receipt), CMYK, YCbCr and the first page of a multi-page file (with a warning). Deeper
values are scaled to 0-255, never clipped. Anything that cannot be read raises
:class:`ImageReadError` naming the file and the problem.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ocr.geometry import EXIF_ORIENTATION_TAG

log = logging.getLogger(__name__)

# Pages above this many pixels are refused as possible decompression bombs (a small file that
# decodes to gigabytes). It is Pillow's own refusal threshold (2 x Image.MAX_IMAGE_PIXELS), so a
# page accepted here is never refused by Pillow; the error names the file and this limit.
MAX_IMAGE_PIXELS = 178_956_970

# what Pillow's and OpenCV's decoders raise on a corrupt or truncated file
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, zlib.error, cv2.error)

# EXIF orientation -> the transpose that shows the page upright (as PIL's ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_warned_pages: set[str] = set()  # files whose extra pages were reported (once per process)


class ImageReadError(OSError):
    """An image file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding the pixels."""

    size: tuple[int, int]  # stored (width, height), before EXIF orientation
    orientation: int  # EXIF orientation tag, 1 when absent or unreadable
    pages: int  # frames of a multi-page TIFF or animated file; only the first is read
    mode: str  # Pillow's mode, e.g. "RGB", "I;16"


# -- opening ---------------------------------------------------------------------------------------
@contextmanager
def _errors_named(path: Path) -> Iterator[None]:
    """Turn whatever opening or decoding ``path`` raises into an :class:`ImageReadError` naming it."""
    try:
        yield
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image file") from None
    except PermissionError as error:
        raise ImageReadError(f"{path}: cannot open the image file ({error.strerror})") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{path}: {_too_large(str(error))}") from None
    except UnidentifiedImageError:
        problem = f"not an image format Pillow knows; the file starts with {_head(path)!r}"
        raise ImageReadError(f"{path}: cannot read image ({problem})") from None
    except DECODE_ERRORS as error:
        problem = f"{type(error).__name__}: {error}"
        raise ImageReadError(f"{path}: cannot read image ({problem}); the file is damaged or incomplete") from None


def _head(path: Path, count: int = 16) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(count)
    except OSError:
        return b""


def _too_large(detail: str) -> str:
    return (
        f"too large to decode safely ({detail}); the limit is {MAX_IMAGE_PIXELS:,} pixels "
        "(ocr.data.images.MAX_IMAGE_PIXELS, a guard against decompression bombs): downscale the image"
    )


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """The file opened by Pillow (header read, pixels not yet), within the pixel limit; every
    failure inside the block is an :class:`ImageReadError` naming ``path``."""
    with _errors_named(path):
        if not path.exists():
            raise FileNotFoundError(path)
        with warnings.catch_warnings():
            # pages between Pillow's warning and refusal thresholds are allowed: MAX_IMAGE_PIXELS decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageReadError(f"{path}: {_too_large(f'{width} x {height} = {width * height:,} pixels')}")
            if width < 1 or height < 1:
                raise ImageReadError(f"{path}: cannot read image (its header gives an empty {width} x {height} page)")
            yield image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 to 8), 1 when absent or not a valid tag."""
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except (TypeError, ValueError, SyntaxError, OSError, struct.error):
        return 1
    return value if value in range(1, 9) else 1


def _header(image: Image.Image) -> ImageHeader:
    return ImageHeader(image.size, exif_orientation(image), int(getattr(image, "n_frames", 1) or 1), image.mode)


def read_header(path: str | Path) -> ImageHeader:
    """The stored size, orientation, page count and mode of ``path``, without decoding it."""
    path = Path(path)
    with open_image(path) as image:
        return _header(image)


# -- pixels to 8-bit RGB ---------------------------------------------------------------------------
def scale_to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    """``values`` (0 to ``full_scale``) scaled to 0-255 with rounding: 16-bit /257 gives back an
    8-bit page exactly. Values below 0 are black."""
    if full_scale == 255 and values.dtype == np.uint8:
        return values
    scaled = np.rint(np.maximum(values.astype(np.float64), 0.0) * (255.0 / full_scale))
    return np.minimum(scaled, 255).astype(np.uint8)


def integer_full_scale(values: np.ndarray) -> float:
    """The white level of an integer or float gray image with no fixed range (Pillow modes I and
    F): 1 for 0-1 floats, 255 when no value exceeds it, 65535 likewise, else the image's maximum."""
    peak = float(values.max()) if values.size else 0.0
    if values.dtype.kind == "f" and peak <= 1.0:
        return 1.0
    for full in (255.0, 65535.0):
        if peak <= full:
            return full
    return peak


def composite_on_white(colour: np.ndarray, alpha: np.ndarray, full_scale: float) -> np.ndarray:
    """(H, W, C) colour with (H, W) alpha, both 0 to ``full_scale``, laid on white paper (float)."""
    weight = alpha.astype(np.float64)[..., None] / full_scale
    return colour.astype(np.float64) * weight + full_scale * (1.0 - weight)


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def pil_to_rgb8(image: Image.Image) -> np.ndarray:
    """An opened PIL image (its first page) as an (H, W, 3) uint8 RGB array in the stored frame,
    by the rules of this module: deep values scaled, transparency laid on white."""
    mode = image.mode
    if "transparency" in image.info and mode in ("L", "RGB", "P"):
        image, mode = image.convert("RGBA"), "RGBA"
    elif mode == "P":
        image, mode = image.convert("RGB"), "RGB"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _gray_rgb(scale_to_uint8(np.asarray(image), 65535.0))
    if mode in ("I", "F"):
        values = np.asarray(image)
        return _gray_rgb(scale_to_uint8(values, integer_full_scale(values)))
    if mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"))
        return scale_to_uint8(composite_on_white(rgba[..., :3], rgba[..., 3], 255.0), 255.0)
    if mode == "RGB":
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))  # 1, L, CMYK, YCbCr, LAB, HSV


def _is_deep_colour(path: Path, image: Image.Image) -> bool:
    """Whether ``image`` is a 16-bit-per-sample colour (or gray + alpha) PNG or TIFF, which
    Pillow decodes to 8 bits by dropping the low byte."""
    if image.format == "PNG":
        head = _head(path, 26)  # signature, IHDR length and type, width, height, bit depth, colour type
        return len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)
    if image.format == "TIFF" and image.mode in ("RGB", "RGBA", "LA"):
        bits = image.tag_v2.get(258) or ()
        return 16 in (bits if isinstance(bits, tuple) else (bits,))
    return False


def _read_deep_colour(path: Path) -> np.ndarray:
    """A 16-bit colour PNG / TIFF through OpenCV (exact), as 8-bit RGB in the stored frame."""
    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(f"{path}: cannot read image (OpenCV could not decode the 16-bit file; truncated or corrupt?)")
    full = float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else 1.0
    if array.ndim == 2:
        return _gray_rgb(scale_to_uint8(array, full))
    channels = array.shape[2]
    if channels == 2:  # gray + alpha
        return _gray_rgb(scale_to_uint8(composite_on_white(array[..., :1], array[..., 1], full)[..., 0], full))
    rgb = array[..., 2::-1]  # OpenCV's BGR(A) -> RGB
    if channels == 4:
        return scale_to_uint8(composite_on_white(rgb, array[..., 3], full), full)
    return scale_to_uint8(rgb, full)


def upright(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """``rgb`` in the stored frame turned as its EXIF ``orientation`` says (as PIL's exif_transpose)."""
    method = _UPRIGHT.get(orientation)
    if method is None:
        return rgb
    return np.asarray(Image.fromarray(rgb).transpose(method))


def _warn_pages(path: Path, pages: int) -> None:
    if pages > 1 and str(path) not in _warned_pages:
        _warned_pages.add(str(path))
        log.warning("%s: holds %d pages (frames); reading the first only", path, pages)


def _decode(path: Path, image: Image.Image) -> np.ndarray:
    if _is_deep_colour(path, image):
        return _read_deep_colour(path)
    image.seek(0)
    image.load()
    return pil_to_rgb8(image)


def read_image_with_header(path: str | Path) -> tuple[np.ndarray, ImageHeader]:
    """The upright 8-bit RGB page of ``path`` and its header (see :func:`read_image`)."""
    path = Path(path)
    with open_image(path) as image:
        header = _header(image)
        _warn_pages(path, header.pages)
        rgb = _decode(path, image)
    return upright(np.ascontiguousarray(rgb), header.orientation), header


def read_image(path: str | Path) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(upright RGB uint8 array, EXIF orientation, stored (width, height)) of an image file.

    Raises :class:`ImageReadError` naming the file for a missing, unreadable, truncated,
    non-image or over-large (:data:`MAX_IMAGE_PIXELS`) file.
    """
    rgb, header = read_image_with_header(path)
    return rgb, header.orientation, header.size


def probe_image(path: str | Path, decode: bool = False) -> ImageHeader:
    """The header of ``path``; with ``decode`` the whole file is decoded too, so a truncated or
    corrupt file is found now rather than in a DataLoader worker. Raises :class:`ImageReadError`."""
    if decode:
        return read_image_with_header(path)[1]
    header = read_header(path)
    _warn_pages(Path(path), header.pages)
    return header
