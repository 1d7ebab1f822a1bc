"""Live analysis of an uploaded image: upload -> RGB image -> preprocess -> decomposition -> frames.

No streamlit here: pages call these functions and show ``InterpretError`` messages
with ``st.error``. The analyses below the upload section are the five of DESIGN.md
section 5, as pure functions over numpy arrays; the caller (``dashboard.state``)
holds the model's lock around anything that runs the model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import ExifTags, Image

from precompute.decompose import Decomposer, spatial_maps
from precompute.errors import InputError
from precompute.images import to_rgb
from precompute.registry import LoadedModel

# --------------------------------------------------------------------------- uploads
#
# ``load_upload`` turns the bytes of an upload into an RGB image, or raises InputError
# with a message for the user. The pixel count is checked from the header before any
# decoding (decompression bombs), the whole image is then decoded so a truncated file
# fails here rather than half-grey later, and the conversion to RGB is the project's
# one conversion (``precompute.images.to_rgb``: EXIF rotation, alpha on white, 16-bit
# scaled, CMYK converted), so an upload is read exactly as a probe image is.
# No ``warnings`` filters: they are process-wide and Streamlit serves sessions in
# threads, so a bomb is refused by our own pixel check instead (PIL's
# DecompressionBombError is still caught).

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000

# Leading bytes of common files that are not images PIL reads, to name what was uploaded.
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


def load_upload(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """The upload as an RGB image ready for preprocessing; InputError with the reason otherwise."""
    return load_upload_with_notes(data, max_bytes=max_bytes, max_pixels=max_pixels)[0]


def load_upload_with_notes(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES,
                           max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[Image.Image, list[str]]:
    """(RGB image, notes for the user, e.g. 'animated GIF: first frame used'); InputError otherwise."""
    _check_size(data, max_bytes)
    img = _open(data)
    _check_pixels(img, max_pixels)
    notes = _frame_notes(img)
    _decode(img)
    if _exif_rotated(img):
        notes.append("rotated upright as its EXIF orientation asks")
    return _to_rgb(img), notes


def _human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _check_size(data: bytes, max_bytes: int) -> None:
    if not data:
        raise InputError("the upload is empty (0 bytes); choose an image file (JPEG, PNG, WebP, GIF, BMP)")
    if len(data) > max_bytes:
        raise InputError(f"the upload is {_human_bytes(len(data))}, over the {_human_bytes(max_bytes)} limit; "
                         "resize or compress the image first")


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


def _open(data: bytes) -> Image.Image:
    """Read the header only; refuse what is not an image, naming what it looks like."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise InputError(f"the image is too large to decode safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"the upload is {describe_bytes(data)}; choose an image file (JPEG, PNG, WebP, GIF, "
                         "BMP)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"the upload is not a readable image ({e})") from None


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    """Refuse a decompression bomb from its declared size, before a single pixel is decoded."""
    w, h = img.size
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if w * h > limit:
        raise InputError(f"the image is {w}x{h} = {w * h:,} pixels, over the {limit:,} pixel limit; "
                         "downscale it first")
    if w == 0 or h == 0:
        raise InputError(f"the image has no pixels ({w}x{h})")


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError)


def _corrupt(img: Image.Image, error: Exception) -> InputError:
    return InputError(f"the {img.format or 'image'} file is truncated or corrupt ({error}); upload the complete file")


def _frame_notes(img: Image.Image) -> list[str]:
    """A note for an animation (GIF, WebP, APNG), whose first frame is the one used."""
    try:
        frames = getattr(img, "n_frames", 1)  # counting frames reads through the file, not decoding them
        if frames > 1:
            img.seek(0)
    except _DECODE_ERRORS as e:
        raise _corrupt(img, e) from None
    if frames > 1:
        return [f"the upload is an animated {img.format or 'image'} with {frames} frames; the first frame is used"]
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


# --------------------------------------------------------------------------- decomposition of one image


@dataclass(frozen=True)
class LiveImage:
    """One image decomposed by the live model: the terms the analyses need, as numpy."""

    view: Image.Image  # the crop the model saw, at its input size (what maps are overlaid on)
    embedding: np.ndarray  # [D] normalised image embedding
    layers: tuple[int, ...]  # absolute indices of the decomposed layers
    heads: np.ndarray  # [l, h, D] r[l,h], summed over tokens
    tokens: np.ndarray | None  # [l, h, t, D] per-token terms (spatial decomposition only)
    grid: int  # patches per side: t = 1 + grid^2

    def head_vector(self, layer: int, head: int) -> np.ndarray:
        return self.heads[self.layers.index(layer), head]  # [D]


def _normalize_stats(preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the preprocessing's Normalize step (open_clip's OpenAI defaults if it has none)."""
    for t in getattr(preprocess, "transforms", ()):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return np.asarray(t.mean, dtype=np.float32), np.asarray(t.std, dtype=np.float32)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return np.asarray(OPENAI_DATASET_MEAN, np.float32), np.asarray(OPENAI_DATASET_STD, np.float32)


def model_view(pixels: torch.Tensor, preprocess) -> Image.Image:
    """Undo the normalisation of a preprocessed [3, H, W] tensor: the exact crop the model saw."""
    mean, std = _normalize_stats(preprocess)
    arr = pixels.detach().float().cpu().numpy().transpose(1, 2, 0) * std + mean  # [H, W, 3] in 0..1
    return Image.fromarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))


def decompose_image(loaded: LoadedModel, decomposer: Decomposer, image: Image.Image) -> LiveImage:
    """Preprocess like the precompute (``LoadedModel.preprocess``) and decompose; hold the model lock around this."""
    pixels = loaded.preprocess(image)  # [3, H, W]
    device = next(loaded.model.parameters()).device
    dec = decomposer(pixels[None].to(device))  # batch of one
    tokens = dec.tokens[0].cpu().numpy() if dec.tokens is not None else None  # [l, h, t, D]
    return LiveImage(model_view(pixels, loaded.preprocess), dec.embedding[0].cpu().numpy(), dec.layers,
                     dec.heads[0].cpu().numpy(), tokens, loaded.info.grid)  # [D], [l, h, D]


# --------------------------------------------------------------------------- spatial maps (analyses 2 and 3)


def head_maps(live: LiveImage, query: np.ndarray) -> np.ndarray:
    """Every decomposed head's spatial map for a query direction: [l, h, grid, grid] (``spatial_maps``)."""
    if live.tokens is None:
        raise InputError("this decomposition has no per-token terms; decompose with spatial=True for maps")
    query = torch.tensor(np.asarray(query, dtype=np.float32))  # a copy: cached embeddings are read-only
    maps = spatial_maps(torch.from_numpy(live.tokens), query, live.grid)
    return maps.numpy()  # [l, h, g, g]


def summed_map(maps: np.ndarray, layers: Sequence[int], chosen: Sequence[tuple[int, int]]) -> np.ndarray:
    """Sum of the chosen heads' maps, [grid, grid]; InputError for a head that was not decomposed."""
    if not chosen:
        raise InputError("choose at least one head")
    missing = [(l, h) for l, h in chosen if l not in layers or not 0 <= h < maps.shape[1]]
    if missing:
        raise InputError(f"heads {', '.join(f'L{l}.H{h}' for l, h in missing)} were not decomposed; "
                         f"layers available: {', '.join(map(str, layers))}, heads 0..{maps.shape[1] - 1}")
    return sum(maps[layers.index(l), h] for l, h in chosen)  # [g, g]


def contrastive_map(maps1: np.ndarray, maps2: np.ndarray, layers: Sequence[int],
                    chosen: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map(t1), map(t2), map(t1) - map(t2)), each summed over the SAME chosen heads: [grid, grid] each."""
    m1, m2 = summed_map(maps1, layers, chosen), summed_map(maps2, layers, chosen)
    return m1, m2, m1 - m2


def map_frame(grid_map: np.ndarray):
    """A [g, g] map as a long table (row, col, value) for CSV download."""
    import pandas as pd

    g_rows, g_cols = grid_map.shape
    rows, cols = np.divmod(np.arange(g_rows * g_cols), g_cols)  # [g*g] each
    return pd.DataFrame({"row": rows, "col": cols, "value": grid_map.reshape(-1)})  # [g, g] -> [g*g]


# --------------------------------------------------------------------------- nearest neighbours (1, 4, 5)


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """||v_i|| for each row, float32 [n] (float16 rows are widened in blocks, never all at once)."""
    if vectors.dtype == np.float16:
        return np.concatenate([row_norms(vectors[i:i + _BLOCK].astype(np.float32))
                               for i in range(0, len(vectors), _BLOCK)] or [np.zeros(0, np.float32)])
    return np.sqrt(np.einsum("nd,nd->n", vectors, vectors, dtype=np.float32))  # [n]; no [n, D] temporary


_BLOCK = 8192  # rows widened to float32 at a time


def matvec(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """vectors [n, d] @ query [d] as float32 [n]; float16 vectors through torch's half kernel.

    NumPy has no BLAS for float16 (a 50,000 x 512 product takes ~70 ms); torch's takes ~8 ms, as float32
    does in NumPy. Its scores are within 1e-3 |v| |q| of the float32 product (rounding of v, q and the result).
    """
    query = np.asarray(query, dtype=np.float32).reshape(-1)  # [d]
    if vectors.dtype != np.float16:
        return vectors @ query  # [n]
    import torch

    tv = torch.from_dlpack(np.ascontiguousarray(vectors))  # no copy; DLPack accepts the read-only cached arrays
    return (tv @ torch.from_numpy(query.astype(np.float16))).float().numpy()  # [n]


def similarities(query: np.ndarray, vectors: np.ndarray, norms: np.ndarray | None = None,
                 cosine: bool = False) -> np.ndarray:
    """Dot products of every row of ``vectors`` [n, d] with ``query`` [d], or cosines (``norms``: row norms)."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)  # [d]
    if vectors.ndim != 2 or query.shape[0] != vectors.shape[1]:
        raise InputError(f"a query of width {query.shape[0]} cannot be compared with vectors of shape "
                         f"{vectors.shape}; the run and the model must have the same output width")
    scores = matvec(vectors, query)  # [n]
    if cosine:
        norms = row_norms(vectors) if norms is None else norms
        scores = scores / np.maximum(norms * np.linalg.norm(query), 1e-12)
    return scores


def top_k(scores: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row indices [k], scores [k]) of the k largest scores, best first; row ``exclude`` left out."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if exclude is not None:
        scores = scores.copy()
        scores[exclude] = -np.inf
    n = len(scores) - (exclude is not None)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, scores.dtype)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))  # [k], unordered
    top = top[np.argsort(-scores[top], kind="stable")][:k]
    return top, scores[top]


def heads_with_property(labels, prop: str) -> list[tuple[int, int]]:
    """(layer, head) of every head labelled ``prop``, from a head_labels table or frame."""
    frame = labels.to_pandas() if hasattr(labels, "to_pandas") else labels
    hit = frame[frame["property"] == prop]
    return [(int(l), int(h)) for l, h in zip(hit["layer"], hit["head"])]


def mean_vector(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of r[l,h] over a property's heads: the property's query vector (analysis 1). [.., D] each."""
    if not vectors:
        raise InputError("no heads carry this property")
    return np.mean(np.stack(vectors), axis=0)  # [heads, ..., D] -> [..., D]


def principal_direction(vectors: np.ndarray) -> np.ndarray:
    """First principal direction of the centred rows of ``vectors`` [n, D]: top eigenvector of the covariance, [D].

    The sign is chosen so that the projections' third moment is positive (the longer tail points along +v),
    so "largest projection" names the images the direction stands out in.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    mean = vectors.mean(0)  # [D]
    centred = vectors - mean  # [n, D]
    cov = (centred.T @ centred).astype(np.float64)  # [D, D]; one BLAS call, exact (no iteration to converge)
    v = np.linalg.eigh(cov)[1][:, -1].astype(np.float32)  # [D], eigenvalues ascending
    return orient(v, vectors, mean)


def orient(direction: np.ndarray, vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``direction`` [D] or its negative, whichever gives the centred projections a positive third moment."""
    direction = np.asarray(direction, dtype=np.float32)
    proj = (matvec(vectors, direction) - float(np.asarray(mean, np.float32) @ direction)).astype(np.float64)  # [n]
    return direction if np.sum(proj ** 3) >= 0 else -direction


def neighbours_frame(image_ids: np.ndarray, scores: np.ndarray, meta, **context):
    """Ranked neighbour table: rank, image_id, path, label, score, then ``context`` columns (run, layer, ...).

    ``meta`` is the run's image table (image_id, path, label, ...), joined on image_id.
    """
    import pandas as pd

    frame = meta.to_pandas() if hasattr(meta, "to_pandas") else meta
    out = pd.DataFrame({"rank": np.arange(1, len(image_ids) + 1), "image_id": np.asarray(image_ids, np.int64),
                        "score": np.asarray(scores, dtype=np.float64)})
    out = out.merge(frame[["image_id", "path", "label"]], on="image_id", how="left")
    out = out[["rank", "image_id", "path", "label", "score"]]
    for key, value in context.items():
        out[key] = value
    return out


def top_along(vectors: np.ndarray, direction: np.ndarray, k: int, centred: bool = False,
              mean: np.ndarray | None = None):
    """(rows [k], projections [k]) of the rows with the largest projection on unit(direction), best first.

    ``centred`` subtracts the mean row first (for a principal direction, defined on centred data);
    ``mean`` [D] is that mean when the caller has it (float16 rows are not averaged here).
    """
    unit = np.asarray(direction, np.float32) / max(float(np.linalg.norm(direction)), 1e-12)  # [D]
    scores = matvec(vectors, unit)  # [n]
    if centred:
        mean = vectors.mean(0, dtype=np.float32) if mean is None else np.asarray(mean, np.float32)  # [D]
        scores = scores - float(mean @ unit)
    return top_k(scores, k)
