"""Deterministic synthetic receipts for text detection.

The default training preset needs data that exists without any download, so this module
renders receipt-like images with Pillow's built-in scalable font and writes them in the
competition layout (``images/<split>/*.jpg`` + ``jsons/<split>.json`` in the UFO format).
Everything is driven by a seeded numpy ``Generator``: the same arguments always give
byte-identical files.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

logger = logging.getLogger(__name__)

# Bump whenever rendering changes, so cached datasets built by older code are regenerated.
GENERATOR_VERSION = 1

SPLITS = ("train", "val", "test")
_COMPLETE_MARKER = ".complete"

# ---------------------------------------------------------------------------------------
# Built-in vocabulary: small, receipt-like, mixed case.
# ---------------------------------------------------------------------------------------
_SHOPS = (
    "SUNRISE MART", "GREEN LEAF CAFE", "Corner Bakery", "CITY PHARMACY", "Blue Ocean Sushi",
    "MAMA'S KITCHEN", "QuickStop", "Daily Fresh Market", "The Book Nook", "HARBOR DELI",
    "Maple Coffee Co", "LUCKY NOODLE HOUSE", "Golden Wok", "PIXEL ELECTRONICS", "Urban Grocer",
    "SEVEN STARS", "Red Apple Store", "NORTHSIDE DINER", "Happy Paws Pet Shop", "OFFICE DEPOT",
)
_TAGLINES = (
    "Fresh Food Daily", "Since 1987", "Open 7 days", "Quality you can taste",
    "Your neighbourhood store", "Eat in or Take away",
)
_STREETS = (
    "Main St", "Oak Avenue", "Harbor Rd", "Elm Street", "Market Blvd", "Station Rd",
    "Park Lane", "River Drive", "King St", "Hill Road", "Maple Ave", "Bay Street",
)
_CITIES = (
    "Springfield", "Riverside", "Fairview", "Lakeside", "Greenville", "Bristol", "Franklin",
    "Madison", "Georgetown", "Clinton", "Salem", "Ashland",
)
_STATES = ("CA", "NY", "TX", "WA", "IL", "MA", "OR", "FL")
_ITEMS = (
    "COFFEE LATTE", "Americano", "Croissant", "BAGEL CREAM CHEESE", "Orange Juice", "MILK 1L",
    "Bread Loaf", "EGGS 12pk", "Banana", "Apple Pie", "Green Tea", "CHICKEN SANDWICH",
    "Caesar Salad", "Mineral Water", "Chocolate Bar", "Paper Towels", "Shampoo", "Toothpaste",
    "RICE 5kg", "Instant Noodles", "Yogurt", "Cheese Slices", "Tomato Soup", "French Fries",
    "COLA 500ml", "Iced Tea", "Muffin", "Donut", "Pasta", "Olive Oil", "BEEF BURGER",
    "Fish Tacos", "USB CABLE", "AA Batteries", "Notebook A5", "Ball Pen", "Dog Food 2kg",
    "Cappuccino", "Hot Chocolate", "Spring Rolls", "Fried Rice", "MISO SOUP", "Salmon Roll",
)
_CASHIERS = ("Anna", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Ivy", "Jack")
_FOOTERS = (
    "THANK YOU", "Thank you for shopping", "THANK YOU FOR YOUR VISIT", "Thanks Come again",
)
_FOOTERS_2 = (
    "PLEASE COME AGAIN", "Have a nice day", "Keep this receipt", "No refund without receipt",
    "www.example.com", "Follow us online",
)


# ---------------------------------------------------------------------------------------
# Layout model: a receipt is a list of lines; a line holds left/right/center segments.
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Segment:
    text: str
    align: str  # "left" | "right" | "center"


@dataclass(frozen=True)
class _TextLine:
    segments: tuple[_Segment, ...]
    size: int
    bold: bool = False


@dataclass(frozen=True)
class _Rule:
    style: str  # "-" (dashed) or "=" (double dashed)


_Line = _TextLine | _Rule


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font; cached because loading it is comparatively slow."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow < 10.1 or no FreeType
        raise RuntimeError("synthetic receipts need Pillow >= 10.1 built with FreeType")
    return font


def _word_gap(size: int) -> int:
    # Wider than the font's own space (~0.2 em) so neighbouring ink boxes never touch.
    return max(4, round(0.35 * size))


def _ink_width(word: str, size: int, stroke: int) -> int:
    left, _, right, _ = _font(size).getbbox(word, anchor="ls", stroke_width=stroke)
    return right - left


def _text_width(text: str, size: int, stroke: int) -> int:
    words = text.split()
    if not words:
        return 0
    return sum(_ink_width(w, size, stroke) for w in words) + _word_gap(size) * (len(words) - 1)


def _fit(text: str, size: int, stroke: int, max_width: int) -> str:
    """Drop trailing words until ``text`` fits into ``max_width`` (keeps at least one)."""
    words = text.split()
    while len(words) > 1 and _text_width(" ".join(words), size, stroke) > max_width:
        words.pop()
    return " ".join(words)


def _line_height(line: _Line, spacing: float) -> int:
    if isinstance(line, _Rule):
        return 12 if line.style == "=" else 10
    ascent, descent = _font(line.size).getmetrics()
    stroke = 1 if line.bold else 0
    # Strictly taller than the ink extent, so boxes of consecutive lines cannot overlap.
    return math.ceil((ascent + descent) * spacing) + 2 * stroke + 1


def _case(text: str, mode: int) -> str:
    return (text, text.upper(), text.title())[mode]


def _money(rng: np.random.Generator, low: float, high: float) -> float:
    return round(float(rng.uniform(low, high)) * 20) / 20  # prices in 0.05 steps


def _build_lines(
    rng: np.random.Generator, width: int, margin_x: int, size: int, title_size: int,
    spacing: float, target_height: int, margin_y: int,
) -> list[_Line]:
    """Receipt content: header, info, items (as many as fit the target height), totals, footer."""
    avail = width - 2 * margin_x
    case_mode = int(rng.integers(0, 3))
    currency = "$" if rng.random() < 0.3 else ""
    bold_title = bool(rng.random() < 0.5)

    def center(text: str, sz: int = size, bold: bool = False) -> _TextLine:
        return _TextLine((_Segment(_fit(text, sz, int(bold), avail), "center"),), sz, bold)

    def left_right(left: str, right: str, sz: int = size, bold: bool = False) -> _TextLine:
        stroke = int(bold)
        room = avail - _text_width(right, sz, stroke) - 2 * _word_gap(sz)
        return _TextLine((_Segment(_fit(left, sz, stroke, room), "left"),
                          _Segment(right, "right")), sz, bold)

    def rule() -> _Rule:
        return _Rule("=" if rng.random() < 0.35 else "-")

    header: list[_Line] = [center(str(rng.choice(_SHOPS)), title_size, bold_title)]
    if rng.random() < 0.4:
        header.append(center(str(rng.choice(_TAGLINES))))
    header.append(center(f"{rng.integers(1, 2000)} {rng.choice(_STREETS)}"))
    header.append(center(f"{rng.choice(_CITIES)}, {rng.choice(_STATES)} {rng.integers(10000, 99999)}"))
    phone = f"{rng.integers(200, 999)}-{rng.integers(100, 999)}-{rng.integers(1000, 9999)}"
    header.append(center(f"{rng.choice(['TEL:', 'Tel', 'Phone'])} {phone}"))
    header.append(rule())
    day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(2019, 2026))
    date = (f"{day:02d}/{month:02d}/{year}", f"{year}-{month:02d}-{day:02d}")[int(rng.integers(0, 2))]
    clock = f"{rng.integers(7, 23):02d}:{rng.integers(0, 60):02d}"
    header.append(left_right(f"DATE {date}", clock))
    header.append(left_right(f"Receipt #{rng.integers(1, 99999):05d}",
                             f"{_case('Cashier', case_mode)} {rng.choice(_CASHIERS)}"))
    header.append(rule())

    # More candidate items than can ever fit; only the first n_items are used.
    items: list[_Line] = []
    amounts: list[float] = []
    for _ in range(14):
        qty = int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
        amounts.append(qty * _money(rng, 0.5, 25.0))
        name = _case(str(rng.choice(_ITEMS)), case_mode)
        left = f"{qty} x {name}" if qty > 1 or rng.random() < 0.3 else name
        items.append(left_right(left, f"{currency}{amounts[-1]:.2f}"))

    tax_rate = int(rng.choice([5, 7, 8, 10]))
    footer: list[_Line] = [rule()]
    # Totals are filled in once the number of items is known (below).
    totals_at = len(footer)
    pay_lines = int(rng.integers(0, 3))  # 0: none, 1: card, 2: cash + change
    footer.append(rule())
    footer.append(center(str(rng.choice(_FOOTERS))))
    if rng.random() < 0.6:
        footer.append(center(str(rng.choice(_FOOTERS_2))))

    # Heights of the totals block do not depend on the amounts: measure with placeholders.
    placeholder = left_right("X", "0.00")
    totals_h = (3 + pay_lines) * _line_height(placeholder, spacing) + 2
    fixed = sum(_line_height(line, spacing) for line in header + footer) + totals_h
    budget = target_height - 2 * margin_y - fixed
    item_h = _line_height(items[0], spacing)
    max_items = int(rng.integers(3, 10))
    n_items = int(np.clip(budget // item_h, 2, max_items))

    subtotal = sum(amounts[:n_items])
    tax = round(subtotal * tax_rate / 100, 2)
    total = subtotal + tax
    totals: list[_Line] = [
        left_right(_case("SUBTOTAL", case_mode), f"{currency}{subtotal:.2f}"),
        left_right(f"{_case('TAX', case_mode)} {tax_rate}%", f"{currency}{tax:.2f}"),
        left_right("TOTAL", f"{currency}{total:.2f}", bold=True),
    ]
    if pay_lines == 1:
        card = str(rng.choice(["VISA", "MASTERCARD", "AMEX"]))
        totals.append(left_right(f"{card} **** {rng.integers(1000, 9999)}", f"{currency}{total:.2f}"))
    elif pay_lines == 2:
        paid = math.ceil(total / 5) * 5.0
        totals.append(left_right(_case("CASH", case_mode), f"{currency}{paid:.2f}"))
        totals.append(left_right(_case("CHANGE", case_mode), f"{currency}{paid - total:.2f}"))
    footer[totals_at:totals_at] = totals
    return header + items[:n_items] + footer


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------
def _draw_rule(draw: ImageDraw.ImageDraw, rule: _Rule, y: int, x0: int, x1: int,
               ink: tuple[int, int, int], dash: int, gap: int) -> None:
    """Dashed separator drawn as line segments (never annotated: it is not text)."""
    rows = (y - 2, y + 1) if rule.style == "=" else (y,)
    for row in rows:
        for x in range(x0, x1, dash + gap):
            draw.line([(x, row), (min(x + dash, x1), row)], fill=ink, width=1)


def _draw_lines(
    draw: ImageDraw.ImageDraw, lines: list[_Line], width: int, margin_x: int, margin_y: int,
    spacing: float, ink: tuple[int, int, int], dash: int, gap: int,
) -> list[dict]:
    """Draws every word separately at an exact position and returns its ink box."""
    words: list[dict] = []
    y = margin_y
    for line in lines:
        height = _line_height(line, spacing)
        if isinstance(line, _Rule):
            _draw_rule(draw, line, y + height // 2, margin_x, width - margin_x, ink, dash, gap)
            y += height
            continue
        font, stroke = _font(line.size), int(line.bold)
        baseline = y + stroke + font.getmetrics()[0]
        for seg in line.segments:
            seg_w = _text_width(seg.text, line.size, stroke)
            if seg.align == "left":
                x = margin_x
            elif seg.align == "right":
                x = width - margin_x - seg_w
            else:
                x = (width - seg_w) // 2
            for word in seg.text.split():
                # Draw so that the word's ink starts exactly at x.
                left = font.getbbox(word, anchor="ls", stroke_width=stroke)[0]
                origin = (x - left, baseline)
                draw.text(origin, word, font=font, fill=ink, anchor="ls",
                          stroke_width=stroke, stroke_fill=ink)
                x0, y0, x1, y1 = draw.textbbox(origin, word, font=font, anchor="ls",
                                               stroke_width=stroke)
                words.append({"points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
                              "transcription": word})
                x += _ink_width(word, line.size, stroke) + _word_gap(line.size)
        y += height
    return words


def _rotation_matrix(w: int, h: int, angle: float) -> tuple[np.ndarray, int, int]:
    """Rotation about the centre with the canvas expanded so no corner is cut."""
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w = math.ceil(w * cos + h * sin)
    new_h = math.ceil(w * sin + h * cos)
    matrix[0, 2] += (new_w - w) / 2
    matrix[1, 2] += (new_h - h) / 2
    return matrix, new_w, new_h


def render_receipt(
    seed: int, font_size_range: tuple[int, int] = (13, 20), degrade: bool = True,
) -> tuple[Image.Image, list[dict]]:
    """One synthetic receipt: RGB image and its words.

    Each word is ``{"points": [[x, y]] * 4, "transcription": str}`` with float points,
    clockwise on screen from the top-left. ``degrade=False`` skips margin, rotation, fading,
    blur and noise (same layout as ``degrade=True`` for the same seed); tests rely on it.
    """
    # Separate streams: layout draws never shift with the degradation switch and vice versa.
    layout_seq, degrade_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(layout_seq)
    drng = np.random.default_rng(degrade_seq)

    lo, hi = font_size_range
    size = int(rng.integers(lo, hi + 1))
    title_size = round(size * rng.uniform(1.3, 1.7))
    width = int(rng.integers(360, 481))
    target_height = int(rng.integers(480, 761))
    margin_x, margin_y = int(rng.integers(14, 31)), int(rng.integers(14, 36))
    spacing = float(rng.uniform(1.1, 1.45))
    lines = _build_lines(rng, width, margin_x, size, title_size, spacing, target_height, margin_y)
    content_h = sum(_line_height(line, spacing) for line in lines) + 2 * margin_y
    # A short blank tail like a real tear-off, but not half a page of empty paper.
    height = max(480, content_h + int(rng.integers(0, 81)))

    paper_base = int(rng.integers(236, 253))
    paper = (paper_base, paper_base - int(rng.integers(0, 5)), paper_base - int(rng.integers(2, 11)))
    ink_level = int(rng.integers(10, 61))
    ink = (ink_level, ink_level, ink_level + int(rng.integers(0, 21)))
    dash, gap = int(rng.integers(3, 9)), int(rng.integers(2, 6))

    # Degradation parameters, drawn unconditionally so the stream does not depend on flags.
    faded = drng.random() < 0.3
    faded_level = int(drng.integers(90, 141))
    patchy = drng.random() < 0.3
    patch_field = drng.uniform(0.0, 0.45, size=(6, 4)).astype(np.float32)
    contrast = float(drng.uniform(0.7, 1.0)) if drng.random() < 0.3 else 1.0
    with_margin = drng.random() < 0.5
    margins = drng.integers(0, 51, size=4)  # left, top, right, bottom
    background = tuple(int(v) for v in drng.integers(30, 151) + drng.integers(-15, 16, size=3))
    angle = float(drng.uniform(-4.0, 4.0))
    blur_radius = float(drng.uniform(0.4, 1.1)) if drng.random() < 0.35 else 0.0
    noise_sigma = float(drng.uniform(2.0, 9.0))
    noise_seed = int(drng.integers(0, 2**31))

    if degrade and faded:
        ink = (faded_level, faded_level, faded_level + ink[2] - ink[0])
    image = Image.new("RGB", (width, height), paper)
    words = _draw_lines(ImageDraw.Draw(image), lines, width, margin_x, margin_y, spacing, ink, dash, gap)
    if not degrade:
        return image, _finalise(words, width, height)

    arr = np.asarray(image, dtype=np.float32)
    paper_arr = np.array(paper, dtype=np.float32)
    if patchy and not faded:
        # Uneven thermal print: pull ink towards paper by a smooth random amount.
        field = cv2.resize(patch_field, (width, height), interpolation=cv2.INTER_CUBIC)
        field = np.clip(field, 0.0, 0.45)[..., None]
        arr = arr * (1.0 - field) + paper_arr * field
    if contrast < 1.0:
        arr = paper_arr + (arr - paper_arr) * contrast

    if with_margin:
        ml, mt, mr, mb = (int(v) for v in margins)
        canvas = np.empty((height + mt + mb, width + ml + mr, 3), dtype=np.float32)
        canvas[:] = np.array(background, dtype=np.float32)
        canvas[mt:mt + height, ml:ml + width] = arr
        arr = canvas
        for word in words:
            word["points"] = [[x + ml, y + mt] for x, y in word["points"]]

    h, w = arr.shape[:2]
    matrix, new_w, new_h = _rotation_matrix(w, h, angle)
    arr = cv2.warpAffine(arr, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in background))
    for word in words:
        pts = np.asarray(word["points"], dtype=np.float64)
        word["points"] = (pts @ matrix[:, :2].T + matrix[:, 2]).tolist()

    if blur_radius > 0:
        blurred = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(blur_radius))
        arr = np.asarray(blurred, dtype=np.float32)
    noise = np.random.default_rng(noise_seed).standard_normal(arr.shape, dtype=np.float32)
    arr = np.clip(arr + noise * noise_sigma + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB"), _finalise(words, new_w, new_h)


def _finalise(words: list[dict], width: int, height: int) -> list[dict]:
    """Floats rounded to 2 decimals and clamped into the image (a safety net only)."""
    out = []
    for word in words:
        points = [[round(min(max(float(x), 0.0), width - 1.0), 2),
                   round(min(max(float(y), 0.0), height - 1.0), 2)] for x, y in word["points"]]
        out.append({"points": points, "transcription": word["transcription"]})
    return out


# ---------------------------------------------------------------------------------------
# Dataset on disk
# ---------------------------------------------------------------------------------------
def _image_seed(seed: int, split_index: int, image_index: int) -> int:
    """Disjoint, reproducible seed per (dataset seed, split, image)."""
    return int(np.random.SeedSequence([seed, split_index, image_index]).generate_state(1)[0])


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def build_synthetic_dataset(
    root: str | Path, num_train: int = 160, num_val: int = 32, num_test: int = 16, seed: int = 0,
) -> Path:
    """Writes ``images/{train,val,test}/*.jpg`` and ``jsons/{train,val,test}.json`` under root.

    Cached: when ``root/.complete`` holds the fingerprint of these arguments (plus
    ``GENERATOR_VERSION``), nothing is regenerated. Returns ``root`` as a Path.
    """
    root = Path(root)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    fingerprint = json.dumps(
        {"num_train": num_train, "num_val": num_val, "num_test": num_test, "seed": seed,
         "version": GENERATOR_VERSION}, sort_keys=True)
    marker = root / _COMPLETE_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == fingerprint:
        logger.info("Using cached synthetic receipts at %s", root)
        return root

    # Invalidate first, so an interrupted run is never mistaken for a complete one.
    marker.unlink(missing_ok=True)
    (root / "jsons").mkdir(parents=True, exist_ok=True)
    for split_index, split in enumerate(SPLITS):
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        # Remove only our own stale files (e.g. from a larger count): root may hold other data.
        for stale in image_dir.glob(f"synth_{split}_*.jpg"):
            stale.unlink()
        images: dict[str, dict] = {}
        for index in range(counts[split]):
            name = f"synth_{split}_{index:04d}.jpg"
            image, words = render_receipt(_image_seed(seed, split_index, index))
            image.save(image_dir / name, format="JPEG", quality=95)
            images[name] = {
                "img_w": image.width,
                "img_h": image.height,
                "words": {f"{i + 1:04d}": word for i, word in enumerate(words)},
            }
        _write_json(root / "jsons" / f"{split}.json", {"images": images})

    marker.write_text(fingerprint + "\n", encoding="utf-8")
    logger.info("Generated %d synthetic receipts at %s (train/val/test = %d/%d/%d)",
                sum(counts.values()), root, num_train, num_val, num_test)
    return root
