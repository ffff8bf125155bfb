"""Pictures for people: masks and prompts drawn over images (OpenCV drawing)."""
from __future__ import annotations

import cv2
import numpy as np


def palette_color(index: int) -> tuple[int, int, int]:
    """RGB colour of object `index` in the DAVIS / PASCAL VOC palette (1 = dark red, 2 = green, ...)."""
    r = g = b = 0
    for bit in range(8):
        r |= ((index >> 0) & 1) << (7 - bit)
        g |= ((index >> 1) & 1) << (7 - bit)
        b |= ((index >> 2) & 1) << (7 - bit)
        index >>= 3
    return r, g, b


def draw_masks(image: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """H x W x 3 uint8 RGB with every object id > 0 of `ids` (H x W ints) tinted and outlined in its colour."""
    out = image.copy()
    for index in np.unique(ids):
        if index == 0:
            continue
        region = ids == index
        color = np.array(palette_color(int(index)), np.float32)
        out[region] = (out[region] * (1 - alpha) + color * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness=2)
    return out


def draw_prompts(image: np.ndarray, points=(), labels=(), box=None) -> np.ndarray:
    """Foreground clicks as green dots, background clicks as red dots, a box as a blue rectangle."""
    out = np.ascontiguousarray(image.copy())
    radius = max(4, round(min(out.shape[:2]) / 120))
    for (x, y), label in zip(points, labels):
        color = (0, 220, 0) if label == 1 else (230, 0, 0)
        cv2.circle(out, (round(x), round(y)), radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, (round(x), round(y)), radius, color, -1, cv2.LINE_AA)
    if box is not None:
        x0, y0, x1, y1 = (round(v) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (30, 144, 255), 2, cv2.LINE_AA)
    return out


TEXT_FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_MARGIN = 6  # pixels left of the text, and kept free right of it


def text_scale(image: np.ndarray) -> float:
    return max(0.4, min(image.shape[:2]) / 900)


def fit_text(lines, width: int, scale: float) -> list[tuple[str, int]]:
    """The lines wrapped to fit `width` pixels with a margin each side, as (text, drawn width in pixels).
    A line breaks first between its items (parts separated by two spaces, as in "n: new object  q: quit"),
    and an item too long for a line between its words; a single word wider than the image stays whole."""
    room = width - 2 * TEXT_MARGIN

    def measure(text: str) -> int:
        return cv2.getTextSize(text, TEXT_FONT, scale, 1)[0][0]

    def pack(parts: list[str], separator: str) -> list[str]:
        out: list[str] = []
        for part in parts:
            joined = out[-1] + separator + part if out else part
            if out and measure(joined) <= room:
                out[-1] = joined
            elif measure(part) <= room or separator == " ":
                out.append(part)
            else:
                out.extend(pack(part.split(" "), " "))
        return out

    wrapped = [row for line in lines for row in (pack(line.split("  "), "  ") if line else [""])]
    return [(row, measure(row)) for row in wrapped]


def draw_text(image: np.ndarray, lines, color=(255, 255, 255), bottom: bool = False) -> np.ndarray:
    """Lines of text on a dark band along the top (or bottom) edge, wrapped to the image's width (see
    fit_text), drawn in place; returns `image`."""
    scale = text_scale(image)
    rows = [text for text, _ in fit_text(lines, image.shape[1], scale)]
    step = int(26 * scale) + 6
    top = image.shape[0] - step * len(rows) - 4 if bottom else 0
    band = image[max(top, 0):top + step * len(rows) + 4]
    band[:] = band // 3  # darkened, so the text reads on any frame
    for i, row in enumerate(rows):
        cv2.putText(image, row, (TEXT_MARGIN, top + step * (i + 1) - 4), TEXT_FONT, scale, color, 1, cv2.LINE_AA)
    return image
