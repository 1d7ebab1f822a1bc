"""Finding, decoding and thumbnailing probe images; one conversion to RGB for the whole project.

Decoding happens in DataLoader worker processes; a file that cannot be decoded
comes back as a reason string, never as an exception, so one bad file never
ends a run.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from precompute.errors import InputError
from precompute.schema import THUMBNAIL_SIZE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
MAX_PIXELS = 100_000_000  # refuse larger images (decompression bombs) before decoding them


@dataclass(frozen=True)
class ImageEntry:
    path: str  # relative to the root, '/' separated
    label: str | None


@dataclass(frozen=True)
class Discovery:
    entries: tuple[ImageEntry, ...]
    ignored: tuple[tuple[str, str], ...]  # (relative path, reason) of files that are not images by type
    labelled: bool


def discover(root: str | Path, limit: int | None = None, seed: int = 0) -> Discovery:
    """Walk ``root`` recursively for image files, sorted by path.

    Labels: when every image sits inside a sub-folder (``root/<class>/...``), the
    first folder name is the image's class label. ``limit`` keeps a seeded random
    sample (so a class-folder dataset keeps its classes), in path order.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"image folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"--images must be a folder, got a file: {root}")
    found: list[str] = []
    ignored: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.startswith("_"))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(rel)
            else:
                ignored.append((rel, f"not an image file type ({Path(name).suffix or 'no extension'})"))
    found.sort()
    if not found:
        raise InputError(
            f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)} recursively"
            + (f"; found {len(ignored)} other files" if ignored else "")
            + ")"
        )
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, got {limit}")
        if limit < len(found):
            found = sorted(random.Random(seed).sample(found, limit))
    labelled = all("/" in p for p in found)
    entries = tuple(ImageEntry(p, p.split("/", 1)[0] if labelled else None) for p in found)
    return Discovery(entries, tuple(ignored), labelled)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: EXIF rotation applied, alpha on white, 16-bit scaled, CMYK converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def open_image(data: bytes | str | Path, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Decode fully (first frame of an animation) to RGB, or raise ValueError with the reason."""
    notes: list[str] = []
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as e:
            raise ValueError(f"image too large to decode safely ({e})") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not an image PIL can read") from None
        except OSError as e:
            raise ValueError(f"unreadable: {e}") from None
        w, h = img.size
        if w * h > max_pixels:
            raise ValueError(f"image too large: {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})")
        if getattr(img, "n_frames", 1) > 1:
            notes.append(f"animated image with {img.n_frames} frames: using the first frame")
            img.seek(0)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"corrupt or truncated image: {e}") from None
        return to_rgb(img), notes


def thumbnail_jpeg(img: Image.Image, size: int = THUMBNAIL_SIZE, quality: int = 85) -> bytes:
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Decoded:
    index: int  # position in the plan
    tensor: object | None  # preprocessed [3, H, W] tensor, None when the file was skipped
    width: int = 0
    height: int = 0
    thumbnail: bytes = b""
    error: str | None = None


class ImageFolderDataset:
    """Map-style dataset over planned files; bad files come back with ``error`` set."""

    def __init__(self, root: str | Path, paths: list[str], indices: list[int], preprocess: Callable):
        self.root = Path(root)
        self.paths = paths
        self.indices = indices
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        path = self.root / self.paths[i]
        try:
            if path.stat().st_size == 0:
                raise ValueError("empty file (0 bytes)")
            img, _notes = open_image(path)
            return Decoded(self.indices[i], self.preprocess(img), img.width, img.height, thumbnail_jpeg(img))
        except ValueError as e:
            return Decoded(self.indices[i], None, error=str(e))
        except OSError as e:
            return Decoded(self.indices[i], None, error=f"unreadable: {e.strerror or e}")


def collate(items: list[Decoded]) -> list[Decoded]:
    return items
