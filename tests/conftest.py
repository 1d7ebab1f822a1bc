"""Shared fixtures. Tests never touch the network: the hub is switched off before anything imports it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from precompute.runtime import passive_openmp  # noqa: E402 (imports no torch)

passive_openmp()  # before torch loads, as the CLI does: spinning waits make 2-thread tests ~10x slower on a busy core

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

logging.getLogger().addFilter(lambda r: "No pretrained weights loaded" not in r.getMessage())


def make_image_folder(root: Path, per_class: int = 6, classes=("cat", "dog"), size=(40, 48), seed: int = 0,
                      bad_files: bool = True) -> Path:
    """Class folders of random PNG/JPEG images, plus (optionally) a corrupt, a zero-byte and a non-image file."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size[0] + i, size[1], 3), dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / c / f"{i:03d}.{ext}")
    if bad_files:
        (root / classes[0] / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (root / classes[0] / "empty.png").write_bytes(b"")
        (root / classes[-1] / "notes.txt").write_text("not an image")
        good = root / classes[-1] / "000.png"
        (root / classes[-1] / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")
