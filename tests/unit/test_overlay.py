"""PNG rendering: long titles wrap inside the picture instead of running off its edge; download names."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dashboard import overlay, widgets


def test_a_long_title_wraps_to_the_panel_and_grows_it():
    view = Image.new("RGB", (64, 64), "gray")
    grid = np.zeros((4, 4), np.float32)
    title = "“a photo of a striped red shape on a plain background” - “a dotted blue thing” · sum over all 32 heads"
    short = overlay.panel(view, grid, 1.0, "short")
    long = overlay.panel(view, grid, 1.0, title)
    lines = overlay.wrap(title, long.width)
    assert len(lines) > 1 and " ".join(lines) == title
    assert all(overlay._font().getlength(line) <= long.width for line in lines)
    assert long.height == short.height + overlay.LINE * (len(lines) - 1)
    png = Image.open(io.BytesIO(overlay.render_png([(title, view, grid)], 1.0, "a long colour-bar label " * 8)))
    assert png.width == long.width  # nothing wider than the panels: the title no longer runs off the edge


def test_a_word_wider_than_the_panel_is_cut():
    lines = overlay.wrap("x" * 400, 100)
    assert "".join(lines) == "x" * 400 and all(overlay._font().getlength(line) <= 100 for line in lines)


def test_download_names_say_what_they_hold():
    assert widgets.file_stem("topic-map", "team/toy-l", "image 42", "a red shape", "L7.H0") == \
        "topic-map_team-toy-l_image-42_a-red-shape_L7.H0"
    assert widgets.file_stem("contrastive-map", "toy", "my photo.jpg", "“a dog” vs a/cat", None) == \
        "contrastive-map_toy_my-photo.jpg_a-dog-vs-a-cat"
    assert widgets.file_stem() == "download"
