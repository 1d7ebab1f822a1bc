"""Heat-map overlays rendered in memory: spatial map -> diverging colours -> PNG bytes.

Conventions (the paper's demo got these wrong: uint8 overflow, inverted
intensities, fixed file names shared by every user):

- maps are signed dot products; the colour scale is always symmetric around 0,
  [-s, +s], so white means 0, red means the map points toward the text (or toward
  t1 in a contrastive map) and blue away from it;
- values are mapped in float and clipped to [0, 1] before the colour lookup, and
  colours are rounded from float, so nothing wraps around;
- the overlay is alpha-blended over the image the model actually saw (the
  preprocessed crop), upsampled bilinearly from the patch grid;
- every PNG carries its own colour bar with the scale written on it, and is
  returned as bytes: no file is ever written, so users never collide.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# ColorBrewer RdBu (11 classes), reversed: blue for negative, white at 0, red for positive.
RDBU_R = np.array([
    (5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31),
], dtype=np.float64) / 255.0  # [11, 3] in 0..1
ALPHA = 0.6  # weight of the colour over the image
MIN_SIDE = 224  # small models (32 px) are shown upscaled to at least this
BAR_HEIGHT = 14
FONT_SIZE = 13


def symmetric_scale(*maps: np.ndarray) -> float:
    """s = max |value| over all maps (one shared scale); a tiny positive number when every value is 0."""
    s = max((float(np.max(np.abs(m))) for m in maps if np.size(m)), default=0.0)
    return s if s > 0 else 1e-12


def diverging(values: np.ndarray, scale: float) -> np.ndarray:
    """Values in [-scale, scale] -> RGB floats in [0, 1] of RdBu_r; values beyond the scale are clipped."""
    x = np.clip((np.asarray(values, dtype=np.float64) / scale + 1.0) / 2.0, 0.0, 1.0)  # [...] in 0..1
    pos = x * (len(RDBU_R) - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, len(RDBU_R) - 2)
    frac = (pos - lo)[..., None]  # [..., 1]
    return RDBU_R[lo] * (1.0 - frac) + RDBU_R[lo + 1] * frac  # [..., 3]


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8, rounded after clipping (no wrap-around)."""
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def display_size(view: Image.Image) -> tuple[int, int]:
    w, h = view.size
    factor = max(1.0, MIN_SIDE / min(w, h))
    return round(w * factor), round(h * factor)


def upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [g, g] map -> [H, W] float32, bilinear (PIL mode 'F' keeps floats)."""
    img = Image.fromarray(np.ascontiguousarray(grid_map, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)  # [H, W]


def overlay(view: Image.Image, grid_map: np.ndarray, scale: float, alpha: float = ALPHA) -> Image.Image:
    """The map in RdBu_r on [-scale, scale], alpha-blended over ``view`` (shown at least MIN_SIDE px)."""
    size = display_size(view)
    base = np.asarray(view.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    colours = diverging(upsample(grid_map, size), scale)  # [H, W, 3]
    return Image.fromarray(to_uint8((1.0 - alpha) * base + alpha * colours))


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font, fixed size
        return ImageFont.load_default()


def colour_bar(width: int, scale: float, label: str) -> Image.Image:
    """A horizontal RdBu_r bar from -scale to +scale with the end values and 0 written under it."""
    font = _font()
    ramp = diverging(np.linspace(-scale, scale, width)[None, :].repeat(BAR_HEIGHT, 0), scale)  # [bar, W, 3]
    lines = wrap(label, width, font)
    out = Image.new("RGB", (width, BAR_HEIGHT + FONT_SIZE + 10 + LINE * len(lines)), "white")
    out.paste(Image.fromarray(to_uint8(ramp)), (0, 0))
    draw = ImageDraw.Draw(out)
    y = BAR_HEIGHT + 2
    for text, anchor, x in ((f"{-scale:+.3g}", "la", 0), ("0", "ma", width // 2), (f"{scale:+.3g}", "ra", width - 1)):
        draw.text((x, y), text, fill="black", font=font, anchor=anchor)
    for i, line in enumerate(lines):
        draw.text((width // 2, y + FONT_SIZE + 3 + i * LINE), line, fill="black", font=font, anchor="ma")
    return out


def wrap(text: str, width: int, font: ImageFont.ImageFont | None = None) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px (a single longer word is cut)."""
    font = font or _font()
    lines: list[str] = []
    for word in text.split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(line) <= width:
            lines[-1] = line
            continue
        while font.getlength(word) > width and len(word) > 1:  # a word wider than the panel: cut it
            cut = max(1, next(i for i in range(len(word), 0, -1) if font.getlength(word[:i]) <= width))
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


LINE = FONT_SIZE + 4  # px per line of a wrapped title


def panel(view: Image.Image, grid_map: np.ndarray, scale: float, title: str) -> Image.Image:
    """[image | overlay] side by side under a title wrapped to their width: one analysis result."""
    shown = overlay(view, grid_map, scale)
    plain = view.convert("RGB").resize(shown.size, Image.Resampling.BICUBIC)
    gap = 8
    width = 2 * shown.width + gap
    lines = wrap(title, width)
    top = LINE * len(lines) + 4
    out = Image.new("RGB", (width, shown.height + top), "white")
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((0, 2 + i * LINE), line, fill="black", font=_font())
    out.paste(plain, (0, top))
    out.paste(shown, (shown.width + gap, top))
    return out


def render_png(panels: list[tuple[str, Image.Image, np.ndarray]], scale: float, scale_label: str) -> bytes:
    """Panels (title, view, [g, g] map) stacked, all on ONE symmetric scale, with its colour bar; PNG bytes."""
    rendered = [panel(view, m, scale, title) for title, view, m in panels]
    width = max(p.width for p in rendered)
    bar = colour_bar(width, scale, scale_label)
    out = Image.new("RGB", (width, sum(p.height + 6 for p in rendered) + bar.height), "white")
    y = 0
    for p in rendered:
        out.paste(p, (0, y))
        y += p.height + 6
    out.paste(bar, (0, y))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
