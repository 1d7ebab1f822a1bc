"""The decomposition is exact: every term sums to the normalised embedding of the *stock* open_clip model."""

from __future__ import annotations

import open_clip
import pytest
import torch

from precompute.decompose import (
    ATTN_IN, ATTN_OUT, CAPTURES, EMBED, HEAD_OUT, MLP_OUT, PATTERN, RESID_FINAL, Decomposer, decompose, spatial_maps,
)
from precompute.hooks import hook_count
from precompute.registry import ModelSpec, WeightsSource, load_model

TOL = 1e-4


def perturb_(model) -> None:
    """Give a random model non-trivial LayerNorm gains/biases, attention biases and head scales (all initialised to
    constants), so every term matters."""
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            if p.ndim == 1 or name.endswith("head_scale"):  # LN gamma/beta, biases, layer scale, class embedding
                p.add_(torch.randn_like(p) * 0.2)


def _perturbed(arch: str, seed: int = 0):
    """A seeded random ``arch``, perturbed."""
    torch.manual_seed(seed)
    loaded = load_model(ModelSpec(arch, WeightsSource("none")))
    perturb_(loaded.model)
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


def test_captures_have_transformerlens_names_listed_in_one_place():
    loaded = _perturbed("test-tiny")
    e, cache = Decomposer(loaded.model, [1, 2], spatial=True).run_with_cache(torch.randn(2, 3, 32, 32))
    every_layer = {name.format(l=i) for name in (ATTN_OUT, MLP_OUT) for i in range(3)}
    chosen = {name.format(l=i) for name in (HEAD_OUT, PATTERN, ATTN_IN) for i in (1, 2)}
    assert set(cache) == {EMBED, RESID_FINAL} | every_layer | chosen
    assert {name.format(l=1) for name in CAPTURES} <= set(cache)
    assert cache["blocks.2.attn.hook_z"].shape == (2, 4, 16)  # [b, h, k]
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 4, 17)  # [b, h, t]: the class token's row
    assert torch.allclose(cache["blocks.1.attn.hook_pattern"].sum(-1), torch.ones(2, 4))
    assert cache["blocks.1.ln_1.hook_out"].shape == (2, 17, 64)  # [b, t, d]
    assert cache["ln_pre.hook_out"].shape == cache["ln_post.hook_in"].shape == (2, 64)  # [b, d]
    assert e.shape == (2, 32)


def test_an_error_in_a_capture_hook_names_the_capture(monkeypatch):
    loaded = _perturbed("test-tiny")
    dec = Decomposer(loaded.model, [1])

    def broken(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr(dec, "_class_attention", broken)
    with pytest.raises(RuntimeError, match="boom") as info:
        dec(torch.randn(1, 3, 32, 32))
    assert "blocks.1.attn.hook_z" in " ".join(info.value.__notes__)
    assert hook_count(loaded.model) == 0


def test_out_of_range_layers_are_refused():
    from precompute.errors import ModelError

    loaded = _perturbed("test-tiny")
    with pytest.raises(ModelError, match="0..2"):
        Decomposer(loaded.model, [3])


# --------------------------------------------------------------------------- devices and precisions

# Max abs error of the sum of all terms vs the model's own normalised embedding, by the precision the model
# runs in (the readout and every sum run in float32 whatever it is). Measured on random-init ViT-B-16, CPU:
# fp32 1e-7, bf16 1.1e-3, fp16 1.4e-4 (README, "Devices and precisions"); these bounds leave 3-5x headroom.
PRECISION_TOL = {"fp32": 1e-4, "bf16": 5e-3, "fp16": 1e-3}


def low_precision_copy(arch: str, precision: str, device: str = "cpu", seed: int = 0):
    """A random model cast the way open_clip's ``precision=`` casts it, on ``device`` (fp16 is refused on the CPU
    by the registry, so tests cast by hand to check the math there too)."""
    import open_clip

    loaded = _perturbed(arch, seed)
    if precision != "fp32":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        open_clip.model.convert_weights_to_lp(loaded.model, dtype=dtype)
    loaded.model.to(device)
    return loaded


def reconstruction_error(arch: str, precision: str, device: str, spatial: bool, batch: int = 2) -> dict:
    """Run the decomposition at ``precision`` on ``device``; errors of the sums, and where the outputs live."""
    loaded = low_precision_copy(arch, precision, device)
    n, size = loaded.info.layers, loaded.info.image_size
    images = torch.randn(batch, 3, size, size)  # on the CPU: the decomposer moves them
    dec = Decomposer(loaded.model, range(max(0, n - 4), n), spatial=spatial)(images)
    out = {"total": (dec.total() - dec.embedding).abs().max().item(), "device": dec.heads.device.type,
           "dtype": dec.heads.dtype, "tokens": None}
    if spatial:
        out["tokens"] = (dec.tokens.sum(3) - dec.heads).abs().max().item()
        assert dec.tokens.dtype == torch.float32
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("spatial", [False, True])
def test_low_precision_models_still_sum_exactly_in_float32(precision, spatial):
    err = reconstruction_error("test-tiny", precision, "cpu", spatial)
    assert err["dtype"] == torch.float32  # the readout runs in fp32 whatever the model's precision
    assert err["total"] < PRECISION_TOL[precision]
    if spatial:
        assert err["tokens"] < 1e-5  # token terms sum to the head vectors: both fp32, from the same captures


def test_the_decomposition_creates_no_tensor_off_the_models_device():
    """On a ``meta``-device ViT-B-32 every op of building the Decomposer and of one batch stays on ``meta``:
    a constant made on the CPU (the bug that broke CUDA) would show up as an op output on ``cpu``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OffDevice(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    self.seen.append(f"{func} -> {t.device}")
            return out

    model = load_model(ModelSpec("ViT-B-32", WeightsSource("none"))).model.to("meta")
    images = torch.empty(2, 3, 224, 224, device="meta")
    with OffDevice() as mode:
        dec = Decomposer(model, [8, 9, 10, 11], spatial=True)(images)
    assert mode.seen == []
    assert dec.heads.device.type == "meta" and dec.heads.shape == (2, 4, 12, 512)
    assert dec.tokens.shape == (2, 4, 12, 50, 512)


def test_images_on_the_cpu_are_moved_to_the_models_device():
    model = load_model(ModelSpec("ViT-B-32", WeightsSource("none"))).model.to("meta")
    dec = Decomposer(model, [11])(torch.zeros(1, 3, 224, 224))  # a CPU batch, as a DataLoader yields it
    assert dec.embedding.device.type == "meta"
