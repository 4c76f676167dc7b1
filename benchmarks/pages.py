"""Synthetic receipt pages with a known number of word polygons, for the benchmarks."""

from __future__ import annotations

import cv2
import numpy as np


def make_page(width: int, height: int, num_words: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A white page with ``num_words`` dark word blocks laid out in receipt-like rows.

    Words are 14-24 px tall, 30-140 px wide, a few slightly rotated, some touching the
    page edge. Returns the RGB image and the word quads (float64, (4, 2)).
    """
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 235, np.uint8)
    polygons: list[np.ndarray] = []
    words_per_line = max(width / (85.0 + 25.0), 1.0)  # mean word width + gap
    lines = int(np.ceil(num_words / words_per_line))
    line_height = max(26, int(height / max(lines, 1)))
    y = 4.0
    while len(polygons) < num_words:
        x = float(rng.uniform(0, 20))
        word_h = float(rng.uniform(14, min(24, line_height - 6)))
        while x < width - 20 and len(polygons) < num_words:
            word_w = float(rng.uniform(30, 140))
            angle = np.deg2rad(rng.uniform(-3, 3)) if rng.random() < 0.3 else 0.0
            cx, cy = x + word_w / 2, y + word_h / 2
            corners = np.array(
                [[-word_w / 2, -word_h / 2], [word_w / 2, -word_h / 2], [word_w / 2, word_h / 2], [-word_w / 2, word_h / 2]]
            )
            rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            polygon = corners @ rotation.T + [cx, cy]
            polygons.append(polygon)
            cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], (40, 40, 40))
            x += word_w + float(rng.uniform(10, 40))
        y += line_height
        if y > height - 10:
            y = float(rng.uniform(2, 8))  # wrap around: later words overlap earlier rows
    return image, polygons
