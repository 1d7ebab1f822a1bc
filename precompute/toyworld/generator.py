"""The toy world: procedural 64x64 images whose attributes are known, with captions.

Every image shows 1-3 copies of one shape in one colour, grouped at one of five
positions, small or large, on a patterned, coloured background. Rendering is
numpy on precomputed anti-aliased masks (no per-image drawing), so a batch is
fast enough to generate fresh for every training step.

Determinism: a batch is a pure function of its seed. ``seed`` may be an int or
a tuple of ints (a ``numpy.random.SeedSequence`` entropy), which is how
training derives one independent batch per step: ``(seed, step)``.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from precompute.errors import InputError
from precompute.schema import ATTRIBUTES_FILE
from precompute.store import write_table_atomic
from precompute.toyworld.captions import ATTRIBUTE_NAMES, ATTRIBUTES, NO_DROPOUT, TEMPLATES, CaptionDropout, caption

IMAGE_SIZE = 64
PATCH = 8  # the toy models' patch size: objects are laid out on this grid
CELL = 16  # every object sits in its own 16 x 16 cell (2 x 2 patches)
OBJECT_PIXELS = {"small": 10, "large": 14}  # side of the box a shape is drawn in, centred in its cell
WIGGLE = 1  # max random shift of an object inside its cell, pixels
PERIOD = 16  # every background pattern repeats within 16 px, so a random crop offset keeps its look

RGB = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 30),
    "green": (30, 165, 50),
    "cyan": (0, 205, 225),
    "blue": (35, 65, 235),
    "purple": (140, 45, 195),
    "pink": (255, 125, 195),
    "black": (18, 18, 18),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
    "brown": (115, 72, 35),
}
ANCHORS = {  # where the centre of a group goes, (x, y); the group then snaps to the patch grid
    "top left": (16, 16),
    "top right": (48, 16),
    "center": (32, 32),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
}
# Cells (column, row) each copy occupies; a few layouts per count for variety.
LAYOUTS = {
    1: (((0, 0),),),
    2: (((0, 0), (1, 0)), ((0, 0), (0, 1)), ((0, 0), (1, 1)), ((1, 0), (0, 1))),
    3: (((0, 0), (1, 0), (0, 1)), ((0, 0), (1, 0), (1, 1)), ((0, 0), (0, 1), (1, 1)), ((1, 0), (0, 1), (1, 1))),
}


@dataclass(frozen=True)
class Batch:
    """A rendered batch: images, attribute indices, which attributes each caption names, captions."""

    images: np.ndarray  # [n, 64, 64, 3] uint8
    codes: np.ndarray  # [n, a] int64, index into ATTRIBUTES[a] (a in ATTRIBUTE_NAMES order)
    named: np.ndarray  # [n, a] bool, the caption names attribute a
    captions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.captions)

    def records(self) -> list[dict[str, str]]:
        """One dict per image: attribute name -> value word."""
        return [
            {a: ATTRIBUTES[a][int(c)] for a, c in zip(ATTRIBUTE_NAMES, row)} for row in self.codes
        ]


def _shape_polygon(shape: str, s: float) -> list[tuple[float, float]] | None:
    """Vertices of a shape in an s x s box (None for shapes drawn as ellipses)."""
    c, r = s / 2, s / 2
    if shape == "square":
        m = s * 0.08
        return [(m, m), (s - m, m), (s - m, s - m), (m, s - m)]
    if shape == "triangle":
        return [(c, 0.0), (s, s * 0.9), (0.0, s * 0.9)]
    if shape == "diamond":
        return [(c, 0.0), (s * 0.85, c), (c, s), (s * 0.15, c)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((c + rad * np.cos(ang), c + 0.05 * s + rad * np.sin(ang)))
        return pts
    if shape == "cross":
        a, b = s * 0.32, s * 0.68
        return [(a, 0), (b, 0), (b, a), (s, a), (s, b), (b, b), (b, s), (a, s), (a, b), (0, b), (0, a), (a, a)]
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        x = (x - x.min()) / (x.max() - x.min()) * s
        y = (y - y.min()) / (y.max() - y.min()) * s
        return list(zip(x.tolist(), y.tolist()))
    return None


@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, pixels: int) -> np.ndarray:
    """[pixels, pixels] uint16 alpha in 0..256, anti-aliased by 4x supersampling."""
    big = pixels * 4
    im = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(im)
    poly = _shape_polygon(shape, big - 1)
    if poly is not None:
        draw.polygon(poly, fill=255)
    elif shape == "circle":
        draw.ellipse([0, 0, big - 1, big - 1], fill=255)
    elif shape == "ring":
        draw.ellipse([0, 0, big - 1, big - 1], fill=255)
        hole = big * 0.25
        draw.ellipse([hole, hole, big - 1 - hole, big - 1 - hole], fill=0)
    else:
        raise InputError(f"unknown shape {shape!r}; valid: {', '.join(ATTRIBUTES['shape'])}")
    small = im.resize((pixels, pixels), Image.Resampling.BOX)
    alpha = np.asarray(small, dtype=np.uint16)
    return alpha + (alpha > 127)  # 255 -> 256 so full coverage replaces the pixel exactly


def _pattern_mask(pattern: str) -> np.ndarray:
    """[64+PERIOD, 64+PERIOD] bool: where the pattern's second shade goes."""
    n = IMAGE_SIZE + PERIOD
    y, x = np.mgrid[0:n, 0:n]
    if pattern == "plain":
        return np.zeros((n, n), bool)
    if pattern == "striped":
        return (x + y) % 8 < 3
    if pattern == "dotted":
        return ((x % 8 - 3.5) ** 2 + (y % 8 - 3.5) ** 2) < 3.0
    if pattern == "checkered":
        return ((x // 8) + (y // 8)) % 2 == 0
    if pattern == "grid":
        return (x % 8 == 0) | (y % 8 == 0)
    raise InputError(f"unknown pattern {pattern!r}; valid: {', '.join(ATTRIBUTES['pattern'])}")


@functools.lru_cache(maxsize=None)
def _backgrounds() -> np.ndarray:
    """[pattern, background, 64+PERIOD, 64+PERIOD, 3] uint8 tiles to crop from."""
    n = IMAGE_SIZE + PERIOD
    tiles = np.empty((len(ATTRIBUTES["pattern"]), len(ATTRIBUTES["background"]), n, n, 3), np.uint8)
    for i, pattern in enumerate(ATTRIBUTES["pattern"]):
        mask = _pattern_mask(pattern)
        for j, name in enumerate(ATTRIBUTES["background"]):
            base = np.array(RGB[name], np.float64)
            # The second shade moves a third of the way to white (dark grounds) or black (light ones).
            shade = base * 0.62 if base.mean() > 160 else base + (255 - base) * 0.33
            tiles[i, j] = base.astype(np.uint8)
            tiles[i, j][mask] = shade.astype(np.uint8)
    return tiles


def _entropy(seed: int | Sequence[int]) -> list[int]:
    return [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]


def sample_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, a] attribute indices, each attribute uniform and independent."""
    return np.stack([rng.integers(0, len(ATTRIBUTES[a]), n) for a in ATTRIBUTE_NAMES], axis=1)


def render_codes(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n, 64, 64, 3] uint8 images for the given attribute indices (layout, wiggle, pattern phase from rng).

    Groups snap to the 8-px patch grid and each object is centred in its own
    16-px cell (give or take WIGGLE px), so a patch sees the same piece of a
    shape wherever the group is. With free sub-patch placement a small ViT
    needs far more steps than 2 CPU cores allow to learn shape (measured:
    supervised shape accuracy 0.29 vs 0.49 after 200 steps).
    """
    n = len(codes)
    a = {name: codes[:, i] for i, name in enumerate(ATTRIBUTE_NAMES)}
    tiles = _backgrounds()
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    phase = rng.integers(0, PERIOD, (n, 2))
    wiggle = rng.integers(-WIGGLE, WIGGLE + 1, (n, 2))
    layout_pick = rng.integers(0, 1 << 30, n)
    colours = np.array([RGB[c] for c in ATTRIBUTES["color"]], np.uint16)
    for k in range(n):
        py, px = phase[k]
        out[k] = tiles[a["pattern"][k], a["background"][k], py : py + IMAGE_SIZE, px : px + IMAGE_SIZE]
        pixels = OBJECT_PIXELS[ATTRIBUTES["size"][a["size"][k]]]
        alpha = shape_mask(ATTRIBUTES["shape"][a["shape"][k]], pixels)[..., None]  # [p, p, 1]
        layouts = LAYOUTS[int(a["count"][k]) + 1]
        cells = np.array(layouts[layout_pick[k] % len(layouts)])  # [count, 2] (column, row)
        extent = (cells.max(0) + 1) * CELL  # group width, height
        centre = np.array(ANCHORS[ATTRIBUTES["position"][a["position"][k]]])
        corner = np.clip(np.round((centre - extent / 2) / PATCH) * PATCH, 0, IMAGE_SIZE - extent).astype(int)
        inset = (CELL - pixels) // 2 + wiggle[k]
        colour = colours[a["color"][k]]
        for x0, y0 in corner + cells * CELL + inset:
            region = out[k, y0 : y0 + pixels, x0 : x0 + pixels]
            region[...] = (region * (256 - alpha) + colour * alpha) >> 8
    return out


def sample_named(n: int, rng: np.random.Generator, dropout: CaptionDropout) -> np.ndarray:
    """[n, a] bool: which attributes each caption names, never none at all."""
    named = rng.random((n, len(ATTRIBUTE_NAMES))) < dropout.keep_probabilities()
    single = rng.random(n) < dropout.single
    only = rng.integers(0, len(ATTRIBUTE_NAMES), n)
    named[single] = np.eye(len(ATTRIBUTE_NAMES), dtype=bool)[only[single]]
    empty = ~named.any(axis=1)
    named[empty, ATTRIBUTE_NAMES.index("shape")] = True
    return named


def captions_for(codes: np.ndarray, named: np.ndarray, templates: np.ndarray) -> tuple[str, ...]:
    """One caption per row of attribute indices / named flags / template index."""
    out = []
    for row, flags, template in zip(codes, named, templates):
        values = {a: ATTRIBUTES[a][int(c)] for a, c in zip(ATTRIBUTE_NAMES, row)}
        out.append(caption(values, dict(zip(ATTRIBUTE_NAMES, flags.tolist())), int(template)))
    return tuple(out)


def sample_contrast_codes(n: int, group: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[n, a] attribute indices in groups of ``group`` rows that share every attribute but one.

    Each group draws one base code and one attribute to vary (uniform over attributes); the varied attribute takes
    distinct values while it has enough of them. Returns the codes and, per row, the index of the varied attribute.
    In-batch negatives that differ in one attribute only are what a contrastive loss cannot solve by colour alone.
    """
    codes = sample_codes(n, rng)
    varied = np.empty(n, np.int64)
    for start in range(0, n, group):
        rows = slice(start, min(start + group, n))
        size = rows.stop - rows.start
        codes[rows] = codes[start]
        a = int(rng.integers(0, len(ATTRIBUTE_NAMES)))
        values = len(ATTRIBUTES[ATTRIBUTE_NAMES[a]])
        codes[rows, a] = rng.permutation(values)[:size] if size <= values else rng.integers(0, values, size)
        varied[rows] = a
    return codes, varied


def render_batch(n: int, seed: int | Sequence[int], dropout: CaptionDropout = NO_DROPOUT, group: int = 1) -> Batch:
    """Render n images with random attributes; the same seed gives byte-identical output.

    ``group`` > 1 builds the batch from contrast groups (``sample_contrast_codes``) whose captions always name the
    attribute their images differ in; 1 (the default, and every probe set) draws each image independently.
    """
    if n < 0:
        raise InputError(f"number of images must be >= 0, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence(_entropy(seed)))
    if group > 1:
        codes, varied = sample_contrast_codes(n, group, rng)
    else:
        codes, varied = sample_codes(n, rng), None
    images = render_codes(codes, rng)
    named = sample_named(n, rng, dropout)
    if varied is not None:
        named[np.arange(n), varied] = True
    templates = rng.integers(0, len(TEMPLATES), n)
    return Batch(images=images, codes=codes, named=named, captions=captions_for(codes, named, templates))


CHUNK = 1000  # probe sets render in chunks seeded (seed, chunk index): image i does not depend on n


def iter_batches(n: int, seed: int, dropout: CaptionDropout = NO_DROPOUT) -> Iterator[Batch]:
    """Batches of up to CHUNK images that together make the n-image set of this seed."""
    for start in range(0, n, CHUNK):
        yield render_batch(min(CHUNK, n - start), (seed, start // CHUNK), dropout)


def _probe_table(rows: list[dict[str, str]]) -> pa.Table:
    columns = ["path", *ATTRIBUTE_NAMES, "caption"]
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})


def _is_probe_set(out: Path) -> bool:
    """Does this folder hold only a probe set written by write_probe_set?"""
    shapes = set(ATTRIBUTES["shape"])
    for child in out.iterdir():
        if child.name == ATTRIBUTES_FILE or child.name.startswith((".probe-", f".{ATTRIBUTES_FILE}.")):  # + temp files
            continue
        if not (child.is_dir() and child.name in shapes and all(p.suffix == ".png" for p in child.iterdir())):
            return False
    return (out / ATTRIBUTES_FILE).is_file()


def write_probe_set(out_dir: str | Path, n: int, seed: int, progress: bool = False) -> Path:
    """Write n PNGs as OUT/<shape>/NNNNNN.png plus OUT/attributes.parquet; return the parquet path.

    A folder that already holds a probe set is replaced (same n/seed: identical
    bytes); a non-empty folder holding anything else is refused.
    """
    from tqdm import tqdm

    if n <= 0:
        raise InputError(f"number of images must be >= 1, got {n}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not _is_probe_set(out):
            raise InputError(
                f"output folder {out} is not empty and does not hold a toy-world probe set; "
                "choose an empty or new folder"
            )
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    width = max(6, len(str(n - 1)))
    bar = tqdm(total=n, desc="images", unit="img", disable=not progress)
    for batch in iter_batches(n, seed, NO_DROPOUT):
        for image, record, text in zip(batch.images, batch.records(), batch.captions):
            rel = f"{record['shape']}/{len(rows):0{width}d}.png"
            (out / record["shape"]).mkdir(exist_ok=True)
            Image.fromarray(image).save(out / rel, format="PNG", optimize=False)
            rows.append({"path": rel, **record, "caption": text})
        bar.update(len(batch))
    bar.close()
    write_table_atomic(out / ATTRIBUTES_FILE, _probe_table(rows))
    return out / ATTRIBUTES_FILE
