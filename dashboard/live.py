"""The live decomposition of one image (an upload or a dataset image's file): preprocess -> Decomposer -> numpy.

No streamlit here; the caller (``dashboard.state``) holds the model's lock around anything that runs the
model. Uploads reach it through ``dashboard.upload`` (the one decoder, ``precompute.images.open_image``);
the analyses' maths over its terms is ``precompute.analysis``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from precompute.decompose import Decomposer
from precompute.images import split_preprocess
from precompute.registry import LoadedModel

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
    """Undo the normalisation of a preprocessed [3, H, W] tensor: the crop the model saw (for a preprocess that
    ``split_preprocess`` cannot split; otherwise the uint8 crop is the view itself)."""
    mean, std = _normalize_stats(preprocess)
    arr = pixels.detach().float().cpu().numpy().transpose(1, 2, 0) * std + mean  # [H, W, 3] in 0..1
    return Image.fromarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))


def decompose_image(loaded: LoadedModel, decomposer: Decomposer, image: Image.Image) -> LiveImage:
    """Preprocess as the decompose stage does (``precompute.images.split_preprocess``: the PIL crop, then
    ToTensor + Normalize on the model's device) and decompose; hold the model lock around this."""
    pipe = split_preprocess(loaded.preprocess)
    pixels = pipe.to_pixels(image)  # [3, H, W]: uint8 crop (split) or the preprocess's own float tensor
    device = next(loaded.model.parameters()).device
    dec = decomposer(pipe.normalise(pixels[None].to(device)))  # batch of one
    view = Image.fromarray(pixels.permute(1, 2, 0).numpy()) if pipe.split else model_view(pixels, loaded.preprocess)
    tokens = dec.tokens[0].cpu().numpy() if dec.tokens is not None else None  # [l, h, t, D]
    return LiveImage(view, dec.embedding[0].cpu().numpy(), dec.layers,
                     dec.heads[0].cpu().numpy(), tokens, loaded.info.grid)  # [D], [l, h, D]
