"""Finding, decoding and thumbnailing images; one decoder and one conversion to RGB for the whole project.

``open_image`` decodes probe images and the dashboard's uploads alike (limits,
notes, EXIF, 16-bit, CMYK, animations, truncated files, bombs, non-image bytes
named). Probe images are decoded in DataLoader worker processes; a file that
cannot be decoded comes back as a reason string, never as an exception, so one
bad file never ends a run.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

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


# --------------------------------------------------------------------------- decoding: probe images and uploads

IMAGE_FORMATS = "JPEG, PNG, WebP, GIF, BMP"  # what error messages offer as the valid choices

# Leading bytes of common files that are not images PIL reads, to name what was given instead.
_SIGNATURES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or a .docx/.xlsx/.pptx, which are ZIP files)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a Linux executable"),
    (b"MZ", "a Windows executable"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg audio/video file"),
    (b"\x1a\x45\xdf\xa3", "a WebM/Matroska video"),
    (b"{\\rtf", "an RTF document"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
    (b"SQLite format 3", "an SQLite database"),
    (b"PAR1", "a Parquet file"),
)
_ISO_BRANDS = {b"heic": "a HEIC photo", b"heix": "a HEIC photo", b"mif1": "a HEIF photo", b"msf1": "a HEIF photo",
               b"avif": "an AVIF image", b"isom": "an MP4 video", b"mp41": "an MP4 video", b"mp42": "an MP4 video",
               b"qt  ": "a QuickTime video", b"M4A ": "an M4A audio file"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError)


def open_image(data: bytes | str | Path, *, max_pixels: int = MAX_PIXELS, max_bytes: int | None = None,
               subject: str = "the file") -> tuple[Image.Image, list[str]]:
    """Decode bytes or a file fully to 8-bit RGB: (image, notes for the user); InputError with the reason otherwise.

    The one decoder of the project, for probe images and uploads alike. In order: the size in bytes
    (``max_bytes``); the header only (a file PIL cannot read is named from its first bytes, ``describe_bytes``);
    the pixel count declared in the header, before a single pixel is decoded (decompression bombs:
    ``max_pixels`` and PIL's own ``MAX_IMAGE_PIXELS``, whichever is lower); the first frame of an animation,
    with a note; every pixel, so a truncated file fails here rather than half-grey later; then ``to_rgb``.
    ``subject`` names the input in messages ("the upload"). No ``warnings`` filters: they are process-wide and
    the dashboard decodes in threads, so a bomb is refused by the pixel check (PIL may still warn about it).
    An I/O error reading a path (errno set) propagates as the OSError it is.
    """
    size = len(data) if isinstance(data, bytes) else os.stat(data).st_size
    _check_size(size, max_bytes, subject)
    img = _open(data, subject)
    _check_pixels(img, max_pixels)
    notes = _frame_notes(img, subject)
    _decode(img)
    if _exif_rotated(img):
        notes.append("rotated upright as its EXIF orientation asks")
    return _to_rgb(img), notes


def describe_bytes(data: bytes) -> str:
    """A guess at what a file that is not a readable image is, from its first bytes."""
    head = data[:64]
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp" and head[8:12] in _ISO_BRANDS:
        return _ISO_BRANDS[head[8:12]]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")):
        return "an SVG/XML file (vector images are not supported: export it to PNG)"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    try:
        sample = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "not an image PIL can read"
    printable = sum(c.isprintable() or c.isspace() for c in sample)
    return "a text file" if printable >= 0.95 * len(sample) else "not an image PIL can read"


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _check_size(size: int, max_bytes: int | None, subject: str) -> None:
    if size == 0:
        raise InputError(f"{subject} is empty (0 bytes); expected an image file ({IMAGE_FORMATS})")
    if max_bytes is not None and size > max_bytes:
        raise InputError(f"{subject} is {human_bytes(size)}, over the {human_bytes(max_bytes)} limit; "
                         "resize or compress the image first")


def _first_bytes(data: bytes | str | Path, n: int = 4096) -> bytes:
    if isinstance(data, bytes):
        return data[:n]
    with open(data, "rb") as f:
        return f.read(n)


def _open(data: bytes | str | Path, subject: str) -> Image.Image:
    """Read the header only; refuse what is not an image, naming what it looks like."""
    try:
        return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError as e:
        raise InputError(f"the image is too large to decode safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{subject} is {describe_bytes(_first_bytes(data))}; expected an image file "
                         f"({IMAGE_FORMATS})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # the file system's error, not the format's
            raise
        raise InputError(f"{subject} is not a readable image ({e})") from None


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    """Refuse a decompression bomb from its declared size, before a single pixel is decoded."""
    w, h = img.size
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if w * h > limit:
        raise InputError(f"the image is {w}x{h} = {w * h:,} pixels, over the {limit:,} pixel limit; "
                         "downscale it first")
    if w == 0 or h == 0:
        raise InputError(f"the image has no pixels ({w}x{h})")


def _corrupt(img: Image.Image, error: Exception) -> InputError:
    return InputError(f"the {img.format or 'image'} file is truncated or corrupt ({error})")


def _frame_notes(img: Image.Image, subject: str) -> list[str]:
    """A note for an animation (GIF, WebP, APNG), whose first frame is the one used."""
    try:
        frames = getattr(img, "n_frames", 1)  # counting frames reads through the file, not decoding them
        if frames > 1:
            img.seek(0)
    except _DECODE_ERRORS as e:
        raise _corrupt(img, e) from None
    if frames > 1:
        return [f"{subject} is an animated {img.format or 'image'} with {frames} frames; the first frame is used"]
    return []


def _decode(img: Image.Image) -> None:
    """Decode every pixel now, so a truncated or corrupt file fails here."""
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise InputError(f"the image is too large to decode safely ({e})") from None
    except _DECODE_ERRORS as e:
        raise _corrupt(img, e) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    try:
        return to_rgb(img)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot convert a {img.mode} image to RGB ({e}); save it as an RGB JPEG or PNG") from None


def _exif_rotated(img: Image.Image) -> bool:
    try:
        return img.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)
    except (OSError, SyntaxError, ValueError):
        return False


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
            img, _notes = open_image(path)
            return Decoded(self.indices[i], self.preprocess(img), img.width, img.height, thumbnail_jpeg(img))
        except (InputError, ValueError) as e:
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
