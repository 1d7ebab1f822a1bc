"""load_upload: every kind of upload a user can throw at the dashboard, generated in memory.

The upload goes through the project's one decoder, ``precompute.images.open_image``, under the dashboard's limits.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dashboard.upload import load_upload, load_upload_with_notes
from precompute.images import describe_bytes
from precompute.errors import InputError


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with one empty IDAT: a bomb that costs nothing to build."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def noise(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_plain_jpeg_comes_back_rgb_with_its_size():
    img = load_upload(encode(noise(), "JPEG"))
    assert img.mode == "RGB" and img.size == (40, 30)


def test_cmyk_jpeg_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in CMYK
    img = load_upload(encode(cmyk, "JPEG", quality=95))
    r, g, b = img.getpixel((10, 5))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_to_8_bit_not_clipped_to_white():
    ramp = np.tile(np.linspace(0, 65535, 64), (8, 1)).astype(np.uint16)  # [8, 64], dark to bright along x
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    px = np.asarray(load_upload(data))
    assert px.shape == (8, 64, 3)
    assert px[0, 0, 0] < 5 and 120 < px[0, 32, 0] < 136 and px[0, -1, 0] > 250


@pytest.mark.parametrize("mode, colour", [("RGBA", (0, 0, 255, 0)), ("LA", (0, 0))])
def test_transparent_pixels_are_composited_on_white(mode, colour):
    img = load_upload(encode(Image.new(mode, (8, 8), colour), "PNG"))
    assert img.mode == "RGB" and img.getpixel((4, 4)) == (255, 255, 255)


def test_palette_png_keeps_its_colour():
    pal = Image.new("RGB", (8, 8), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    img = load_upload(encode(pal, "PNG"))
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (0, 128, 0)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_gives_its_first_frame_and_a_note(fmt):
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                  **({"lossless": True} if fmt == "WEBP" else {}))
    img, notes = load_upload_with_notes(data)
    r, g, b = img.getpixel((6, 6))
    assert r > 200 and g < 50 and b < 50
    assert len(notes) == 1 and "3 frames" in notes[0] and "first frame" in notes[0]


def test_still_image_has_no_notes():
    assert load_upload_with_notes(encode(noise(), "PNG"))[1] == []


def test_exif_orientation_6_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(noise((40, 30)), "JPEG", exif=exif.tobytes())
    img, notes = load_upload_with_notes(data)
    assert img.size == (30, 40)
    assert any("EXIF" in n for n in notes)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(fmt):
    data = encode(noise((200, 150)), fmt)
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_upload(data[: len(data) // 2])


def test_bomb_header_is_refused_before_decoding():
    with pytest.raises(InputError, match="too large|pixel limit"):
        load_upload(png_header_only(50_000, 50_000))


def test_pixel_limit_is_checked_from_the_header():
    data = png_header_only(8_000, 6_000)  # 48 Mpx, under PIL's own bomb limit, over ours
    with pytest.raises(InputError, match=r"8000x6000 = 48,000,000 pixels, over the 40,000,000 pixel limit"):
        load_upload(data)
    with pytest.raises(InputError, match="over the 100 pixel limit"):
        load_upload(encode(noise((20, 10)), "PNG"), max_pixels=100)


def test_empty_upload_is_refused():
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        load_upload(b"")


def test_oversized_upload_names_size_and_limit():
    with pytest.raises(InputError, match=r"2\.0 MiB, over the 1\.0 MiB limit"):
        load_upload(b"\0" * (2 * 2**20), max_bytes=2**20)


@pytest.mark.parametrize(
    "data, what",
    [
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", "a PDF document"),
        (b"PK\x03\x04\x14\x00\x00\x00" + b"\0" * 40, "a ZIP archive"),
        (b"Hello, this is just a note.\nNot a picture at all.\n", "a text file"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "an SVG/XML file"),
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 16, "a HEIC photo"),
        (bytes(range(256)) * 4, "not an image PIL can read"),
    ],
)
def test_not_an_image_says_what_it_looks_like(data, what):
    with pytest.raises(InputError, match="the upload is " + what):
        load_upload(data)
    assert describe_bytes(data).startswith(what)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns; the header check refuses
def test_a_probe_image_is_skipped_with_the_reason_an_upload_is_refused_with(tmp_path):
    """One decoder: a bad probe file gets the upload's reason (naming the file, not the upload), never an exception."""
    from precompute.images import ImageFolderDataset

    good = encode(noise((200, 150)), "PNG")
    cases = {"doc.jpg": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", "empty.png": b"", "cut.png": good[:500],
             "bomb.png": png_header_only(50_000, 50_000), "big.png": png_header_only(12_000, 9_000)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "ok.png").write_bytes(good)
    names = [*cases, "ok.png"]
    dataset = ImageFolderDataset(tmp_path, names, list(range(len(names))), lambda img: img.size)
    for i, (name, data) in enumerate(cases.items()):
        with pytest.raises(InputError) as refused:
            load_upload(data, max_pixels=100_000_000)
        assert dataset[i].tensor is None and dataset[i].error == str(refused.value).replace("the upload", "the file")
    assert dataset[len(cases)].error is None and dataset[len(cases)].tensor == (200, 150)
