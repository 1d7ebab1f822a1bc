"""Live analysis of an uploaded image: upload -> RGB image -> preprocess -> decomposition -> frames.

No streamlit here: pages call these functions and show ``InterpretError`` messages
with ``st.error``.
"""

from __future__ import annotations

import io

from PIL import ExifTags, Image

from precompute.errors import InputError
from precompute.images import to_rgb

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
