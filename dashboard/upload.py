"""The upload boundary: an uploaded file's bytes -> an RGB image, under the dashboard's limits. No streamlit.

An upload is decoded by the project's one decoder, ``precompute.images.open_image``, exactly as a probe
image is (EXIF, 16-bit, CMYK, animations, truncated files, bombs refused from the header, non-image bytes
named); only the limits and the wording ("the upload ...") are the dashboard's. Pages show the
``InputError`` with ``st.error``.
"""

from __future__ import annotations

from PIL import Image

from precompute.images import open_image

MAX_UPLOAD_BYTES = 20 * 2**20  # the same limit as server.maxUploadSize in dashboard/.streamlit/config.toml
MAX_UPLOAD_PIXELS = 40_000_000


def load_upload(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """The upload as an RGB image ready for preprocessing; InputError with the reason otherwise."""
    return load_upload_with_notes(data, max_bytes=max_bytes, max_pixels=max_pixels)[0]


def load_upload_with_notes(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES,
                           max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[Image.Image, list[str]]:
    """(RGB image, notes for the user, e.g. 'an animated GIF: the first frame is used'); InputError otherwise."""
    return open_image(bytes(data), max_pixels=max_pixels, max_bytes=max_bytes, subject="the upload")
