"""The decomposition is exact: every term sums to the normalised embedding of the *stock* open_clip model."""

from __future__ import annotations

import open_clip
import pytest
import torch

from precompute.decompose import Decomposer, decompose, spatial_maps
from precompute.hooks import hook_count
from precompute.registry import ModelSpec, WeightsSource, load_model

TOL = 1e-4


def _perturbed(arch: str, seed: int = 0):
    """A random model with non-trivial LayerNorm gains/biases and attention biases, so every term matters."""
    torch.manual_seed(seed)
    loaded = load_model(ModelSpec(arch, WeightsSource("none")))
    with torch.no_grad():
        for name, p in loaded.model.visual.named_parameters():
            if p.ndim == 1:  # LN gamma/beta, biases, layer scale, class embedding
                p.add_(torch.randn_like(p) * 0.2)
    return loaded


def _stock_twin(loaded):
    """The same weights in a model open_clip builds itself, untouched by any hook."""
    twin = open_clip.create_model(
        loaded.spec.architecture, pretrained=None,
        force_quick_gelu=loaded.info.quick_gelu and "quickgelu" not in loaded.spec.architecture,
    )
    twin.load_state_dict(loaded.model.state_dict(), strict=True)
    return twin.eval()


def _reference_phi(model, z_cls: torch.Tensor, e: torch.Tensor):
    """ln_post linearised at this image's sigma, written independently of decompose.py."""
    ln = model.visual.ln_post
    sigma = torch.sqrt(z_cls.var(-1, unbiased=False) + ln.eps)  # [b]
    norm = e.norm(dim=-1)  # [b]

    def phi(x):  # x [b, ..., d]
        x = x - x.mean(-1, keepdim=True)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x * ln.weight) @ model.visual.proj / (sigma * norm).view(shape)

    return phi


@pytest.mark.parametrize("arch", ["test-tiny", "test-tiny-quickgelu", "test-tiny-ls", "test-tiny-scaleheads"])
def test_terms_sum_to_stock_embedding_tiny(arch):
    loaded = _perturbed(arch)
    images = torch.randn(4, 3, 32, 32)
    dec = Decomposer(loaded.model, [0, 1, 2], spatial=True)(images)
    with torch.no_grad():
        e = _stock_twin(loaded).encode_image(images)
    target = e / e.norm(dim=-1, keepdim=True)
    assert (dec.total() - target).abs().max() < TOL
    assert (dec.embedding - target).abs().max() < TOL
    # the head vectors carry a real share of the embedding, not zeros
    assert dec.heads.abs().max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-B-16-quickgelu"])
def test_terms_sum_to_embedding_vit_b(arch):
    loaded = _perturbed(arch)
    images = torch.randn(2, 3, 224, 224)
    dec = Decomposer(loaded.model, [8, 9, 10, 11])(images)
    with torch.no_grad():
        e = loaded.model.encode_image(images)
    target = e / e.norm(dim=-1, keepdim=True)
    assert loaded.info.quick_gelu == ("quickgelu" in arch)
    assert (dec.total() - target).abs().max() < TOL
    assert dec.heads.shape == (2, 4, 12, 512)


def test_heads_plus_bias_equal_attention_output():
    """Per-head terms + the b_O term equal the attention block's own output, mapped independently."""
    loaded = _perturbed("test-tiny-ls", seed=1)
    model = loaded.model
    images = torch.randn(3, 3, 32, 32)
    captured = {}
    blocks = model.visual.transformer.resblocks
    handles = [blocks[i].attn.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o[0][:, 0].clone()))  # MHA: (out, weights)
               for i in range(3)]
    handles.append(model.visual.ln_post.register_forward_pre_hook(lambda m, a: captured.__setitem__("z", a[0][:, 0].clone())))
    try:
        with torch.no_grad():
            e = model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    phi = _reference_phi(model, captured["z"], e)
    dec = decompose(model, images, [1, 2])
    for li, layer in enumerate(dec.layers):
        with torch.no_grad():
            block_out = phi(captured[layer] * blocks[layer].ls_1.gamma)  # [b, D]
        assert torch.allclose(dec.heads[:, li].sum(1) + dec.attn_bias[:, li], block_out, atol=1e-5)
        assert torch.allclose(dec.attn[:, layer], block_out, atol=1e-5)


@pytest.mark.parametrize("arch", ["test-tiny", "test-tiny-scaleheads"])
def test_token_terms_sum_to_head_vectors(arch):
    loaded = _perturbed(arch)
    dec = Decomposer(loaded.model, [2], spatial=True)(torch.randn(2, 3, 32, 32))
    assert dec.tokens.shape == (2, 1, 4, 17, 32)  # [b, l, h, t, D], t = 1 + 4*4
    assert torch.allclose(dec.tokens.sum(3), dec.heads, atol=1e-6)


def test_token_terms_not_materialised_by_default():
    loaded = _perturbed("test-tiny")
    dec = Decomposer(loaded.model, [2])(torch.randn(2, 3, 32, 32))
    assert dec.tokens is None


def test_spatial_maps_are_patch_scores_on_the_grid():
    tokens = torch.randn(2, 17, 8)  # [h, t, D]
    query = torch.randn(8)
    maps = spatial_maps(tokens, query, grid=4)
    assert maps.shape == (2, 4, 4)
    assert torch.allclose(maps[1, 2, 3], tokens[1, 1 + 2 * 4 + 3] @ query)


def test_no_hook_remains_after_an_exception_in_the_forward_pass():
    loaded = _perturbed("test-tiny")
    model = loaded.model
    before = hook_count(model)
    boom = model.visual.transformer.resblocks[1].mlp.register_forward_hook(
        lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        Decomposer(model, [0, 1, 2], spatial=True)(torch.randn(1, 3, 32, 32))
    boom.remove()
    assert hook_count(model) == before == 0


def test_out_of_range_layers_are_refused():
    from precompute.errors import ModelError

    loaded = _perturbed("test-tiny")
    with pytest.raises(ModelError, match="0..2"):
        Decomposer(loaded.model, [3])
