"""Every architecture `clip-interpret models` marks decomposable, built shrunk, decomposes exactly (timm's model zoo test).

Each architecture keeps its own vision config (patch size, MLP ratio, layer scale, head scale, QuickGELU) and is
shrunk to 2 blocks of width 64 (4 heads of 16) on a 2 x 2 patch grid, random init; its text tower becomes
test-tiny's, since ``encode_image`` never reads the text tower and a Hugging Face one would need a download (so the
multilingual ones build as ``CLIP``, not ``CustomTextCLIP``: both encode an image with nothing but ``visual``).
With open_clip 3.3 that is 53 architectures, 46 of open_clip's and 7 of the project's, in about 10 s on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from precompute.decompose import Decomposer
from precompute.registry import ModelSpec, WeightsSource, catalogue, decomposability, load_model, model_config
from tests.unit.test_decompose import TOL, perturb_

DECOMPOSABLE = [e.architecture for e in catalogue() if e.decomposable]
SHRINK = dict(layers=2, width=64, head_width=16)
GRID = 2  # patches per side


def shrunk_config(arch: str) -> dict:
    """``arch``'s own config at test size: SHRINK and a GRID x GRID image in its vision tower, a tiny text tower."""
    cfg = model_config(arch, WeightsSource("none"))
    vision = cfg["vision_cfg"] | SHRINK
    vision["image_size"] = GRID * vision["patch_size"]
    tiny = model_config("test-tiny", WeightsSource("none"))
    return cfg | {"embed_dim": tiny["embed_dim"], "vision_cfg": vision, "text_cfg": tiny["text_cfg"]}


def _build(arch: str, cfg: dict, folder: Path):
    """``cfg`` loaded the way a run loads a model (an open_clip ``local-dir:`` folder, no weights), perturbed."""
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    loaded = load_model(ModelSpec(arch, WeightsSource("local-dir", str(folder))))
    perturb_(loaded.model)
    return loaded


def _assert_exact(loaded, folder: Path) -> None:
    """The terms sum to a stock open_clip twin's normalised embedding, and the per-head split is exact."""
    visual = loaded.model.visual
    images = torch.randn(2, 3, *visual.image_size)
    dec = Decomposer(loaded.model, range(loaded.info.layers), spatial=True)(images)

    twin = open_clip.create_model(f"local-dir:{folder}")  # the same weights in a model no hook has touched
    twin.load_state_dict(loaded.model.state_dict(), strict=True)
    with torch.no_grad():
        e = twin.eval().encode_image(images)
    e = e[0] if isinstance(e, tuple) else e  # output_tokens: (pooled, tokens)
    target = e / e.norm(dim=-1, keepdim=True)
    assert (dec.total() - target).abs().max() < TOL
    assert (dec.embedding - target).abs().max() < TOL
    # the per-head split: heads + b_O give each block's attention output, tokens give the heads
    assert (dec.heads.sum(2) + dec.attn_bias - dec.attn).abs().max() < 1e-5
    assert (dec.tokens.sum(3) - dec.heads).abs().max() < 1e-5
    assert dec.heads.abs().max() > 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small gain nothing from threads, and OpenMP's spinning threads cost 10x on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_zoo_covers_every_decomposable_architecture():
    assert len(DECOMPOSABLE) >= 50  # open_clip 3.3 and the project's configs: 53
    assert {"ViT-B-32", "ViT-L-14-336", "ViT-bigG-14", "ViT-M-16-alt", "xlm-roberta-base-ViT-B-32", "toy-s"} <= set(
        DECOMPOSABLE)
    assert "RN50" not in DECOMPOSABLE and "ViT-B-16-SigLIP" not in DECOMPOSABLE


@pytest.mark.parametrize("arch", DECOMPOSABLE)
def test_shrinking_keeps_the_vision_tower_and_its_verdict(arch):
    full, small = model_config(arch, WeightsSource("none")), shrunk_config(arch)
    kept = {k: v for k, v in full["vision_cfg"].items() if k not in (*SHRINK, "image_size")}
    assert kept.items() <= small["vision_cfg"].items()
    assert small.get("quick_gelu") == full.get("quick_gelu")
    assert decomposability(small) is None


@pytest.mark.parametrize("arch", DECOMPOSABLE)
def test_every_decomposable_architecture_sums_to_its_stock_embedding(arch, tmp_path):
    loaded = _build(arch, shrunk_config(arch), tmp_path)
    info = loaded.info
    assert (info.layers, info.width, info.heads, info.grid) == (2, 64, 4, GRID)
    assert info.quick_gelu == bool(model_config(arch, WeightsSource("none")).get("quick_gelu"))
    _assert_exact(loaded, tmp_path)


# Vision options no shipped config sets but a local-dir config may, all of which decomposability() accepts (a
# non-square image_size it refuses: test_registry).
ACCEPTED_OPTIONS = [
    dict(no_ln_pre=True), dict(final_ln_after_pool=True), dict(pos_embed_type="sin_cos_2d"), dict(scale_fc=True),
    dict(block_type="custom"), dict(output_tokens=True), dict(act_kwargs={"approximate": "tanh"}),
    dict(norm_kwargs={"eps": 1e-6}), dict(image_size=[32, 32]), dict(ls_init_value=0.1, scale_heads=True),
]


@pytest.mark.parametrize("options", ACCEPTED_OPTIONS, ids=lambda o: ",".join(o))
def test_every_vision_option_decomposability_accepts_sums_exactly(options, tmp_path):
    cfg = shrunk_config("ViT-B-16")
    cfg["vision_cfg"] |= options
    assert decomposability(cfg) is None
    _assert_exact(_build("ViT-B-16", cfg, tmp_path), tmp_path)
