"""The input pipeline: uint8 crops from the workers, normalised on the device, equal to open_clip's preprocess."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from precompute.images import Decoded, PixelPipeline, collate, split_preprocess
from precompute.registry import ModelSpec, WeightsSource, load_model


def _photo(seed: int, size=(375, 500)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[0] // 25, size[1] // 25, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size[::-1], Image.Resampling.BICUBIC)


@pytest.mark.parametrize("arch", ["test-tiny", "ViT-B-32"])
def test_split_preprocess_is_bit_identical_to_open_clips(arch):
    preprocess = load_model(ModelSpec(arch, WeightsSource("none"))).preprocess
    pipe = split_preprocess(preprocess)
    assert pipe.split, f"open_clip's eval preprocess should split at ToTensor: {preprocess}"
    images = [_photo(i) for i in range(3)] + [_photo(3, (60, 30))]  # portrait and tiny images too
    pixels = torch.stack([pipe.to_pixels(im) for im in images])  # [b, 3, H, W]
    assert pixels.dtype == torch.uint8
    expected = torch.stack([preprocess(im) for im in images])
    assert torch.equal(pipe.normalise(pixels), expected)


def test_an_unrecognised_preprocess_ships_its_own_float_tensors():
    def preprocess(img):  # not a Compose: nothing to split
        return torch.full((3, 4, 4), 0.5)

    pipe = split_preprocess(preprocess)
    assert not pipe.split
    x = torch.stack([pipe.to_pixels(_photo(0))])
    assert torch.equal(pipe.normalise(x), torch.full((1, 3, 4, 4), 0.5))


def test_normalise_runs_on_the_device_of_its_input():
    pipe = PixelPipeline(lambda im: im, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = pipe.normalise(torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device="meta"))
    assert out.device.type == "meta" and out.dtype == torch.float32


def test_collate_stacks_good_pixels_once_and_keeps_every_items_metadata():
    good = [Decoded(i, torch.full((3, 2, 2), i, dtype=torch.uint8), 10, 20, b"jpg") for i in (0, 2)]
    bad = Decoded(1, None, error="corrupt")
    batch = collate([good[0], bad, good[1]])
    assert [it.index for it in batch.items] == [0, 1, 2]
    assert batch.pixels.shape == (2, 3, 2, 2) and batch.pixels[1, 0, 0, 0] == 2
    assert all(it.tensor is None for it in batch.items)  # the pixels cross the process boundary once
    assert collate([bad]).pixels is None
