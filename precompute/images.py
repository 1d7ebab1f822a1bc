"""Finding, decoding and thumbnailing probe images; one conversion to RGB for the whole project.

Decoding happens in DataLoader worker processes; a file that cannot be decoded
comes back as a reason string, never as an exception, so one bad file never
ends a run.

The model's preprocessing is split in two (``split_preprocess``): the PIL steps
(resize, crop) run in the workers, which ship the crop as uint8 (a quarter of
the bytes of float32, and pinnable); ``ToTensor`` + ``Normalize`` run on the
model's device, batched (``PixelPipeline.normalise``), with the same float32 ops
in the same order, so the result is bit-identical to open_clip's preprocess.
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
import torch
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


_TO_TENSOR = {"ToTensor", "MaybeToTensor"}  # torchvision's and open_clip's (a no-op on tensors)


@dataclass(frozen=True)
class PixelPipeline:
    """A model's preprocessing, split at ``ToTensor``: PIL steps in the workers, normalisation on the device.

    ``to_pixels`` maps an RGB PIL image to what a worker ships; ``normalise`` maps a stacked batch of those,
    already on the model's device, to the model's float32 input. Without a recognisable
    ``[PIL steps..., ToTensor, Normalize]`` pipeline, ``crop`` is the whole preprocess and ``mean`` is None:
    workers then ship float tensors and ``normalise`` only casts.
    """

    crop: Callable  # PIL image -> PIL image (resize, crop, mode) or, unsplit, -> float [3, H, W]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def split(self) -> bool:
        return self.mean is not None

    def to_pixels(self, img: Image.Image) -> torch.Tensor:
        """uint8 [3, H, W] (split) or the preprocess's own float [3, H, W]."""
        out = self.crop(img)
        if not self.split:
            return out
        arr = np.asarray(out.convert("RGB") if out.mode != "RGB" else out, dtype=np.uint8)  # [H, W, 3]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # [3, H, W], as ToTensor lays it out

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """[b, 3, H, W] uint8 on any device -> float32, exactly ToTensor (/255) then Normalize ((x - m) / s)."""
        x = pixels.to(torch.float32)
        if not self.split:
            return x
        like = dict(device=x.device, dtype=torch.float32)
        mean = torch.as_tensor(self.mean, **like).view(1, -1, 1, 1)  # [1, 3, 1, 1]
        std = torch.as_tensor(self.std, **like).view(1, -1, 1, 1)  # [1, 3, 1, 1]
        return x.div_(255).sub_(mean).div_(std)


def split_preprocess(preprocess: Callable) -> PixelPipeline:
    """Split an open_clip/torchvision ``Compose`` at ``ToTensor`` (see ``PixelPipeline``)."""
    steps = list(getattr(preprocess, "transforms", ()))
    names = [type(t).__name__ for t in steps]
    at = next((i for i, n in enumerate(names) if n in _TO_TENSOR), None)
    if at is None or names[at + 1:] != ["Normalize"] or getattr(steps[-1], "inplace", False):
        return PixelPipeline(preprocess)
    pil_steps = steps[:at]

    def crop(img: Image.Image) -> Image.Image:
        for t in pil_steps:
            img = t(img)
        return img

    norm = steps[-1]
    return PixelPipeline(crop, tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std))


@dataclass
class Decoded:
    index: int  # position in the plan
    tensor: object | None  # pixels [3, H, W] (``PixelPipeline.to_pixels``), None when the file was skipped
    width: int = 0
    height: int = 0
    thumbnail: bytes = b""
    error: str | None = None


@dataclass
class Batch:
    """What a worker ships for one batch: every item's metadata, and the good items' pixels stacked."""

    items: list[Decoded]  # in plan order; ``tensor`` is None (the pixels are in ``pixels``)
    pixels: torch.Tensor | None  # [b_good, 3, H, W], uint8 when the preprocess was split

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pin-memory thread (``pin_memory=True``) for a fast, async host-to-GPU copy."""
        return Batch(self.items, self.pixels.pin_memory() if self.pixels is not None else None)


class ImageFolderDataset:
    """Map-style dataset over planned files; bad files come back with ``error`` set.

    ``preprocess`` maps an RGB PIL image to the tensor to ship: ``PixelPipeline.to_pixels``, or a whole preprocess.
    """

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


def collate(items: list[Decoded]) -> Batch:
    """Stack the good items' pixels in the worker: one shared-memory tensor per batch crosses to the main process."""
    good = [it.tensor for it in items if it.error is None]
    pixels = torch.stack(good) if good else None  # [b_good, 3, H, W]
    for it in items:
        it.tensor = None
    return Batch(items, pixels)
