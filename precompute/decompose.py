"""Exact decomposition of a CLIP ViT image embedding into per-layer, per-head, per-token terms.

The convention (docs/design.md section 3). open_clip ViT, class-token pooling:
x0 = ln_pre(patch + class/pos embeddings); block l adds ls_1 * attn(ln_1(x)) then
ls_2 * mlp(ln_2(x)); e = ln_post(z) @ proj with z the final residual at the class
token. z is the sum of

- ``embed``: the class row of x0;
- per layer l, head h, source token m: a[l,h,0,m] (W_V ln_1(x_m) + b_V) W_O[:, h]^T ls_1
  (the class-token query row only; the value bias stays with its head);
- per layer l: the attention output bias b_O ls_1;
- per layer l: the MLP output at the class token.

ln_post is linear once the image's own sigma is fixed, and its centring is
linear, so every term x maps to

    phi(x) = x @ Cg / (sigma * ||e||),   Cg = (I - 11^T / d) diag(gamma) proj

plus one constant term beta @ proj / ||e|| for the LayerNorm bias. All terms sum
to e / ||e||, the normalised image embedding, up to float32 round-off.

A head's vector is r[l,h] = sum_m phi(term[l,h,m]). The model runs unchanged
(open_clip's stock blocks, fused attention kernel included); a pre-hook on each
chosen layer's attention recomputes only what the class token needs, cheaply:

    q = W_Q x_0 + b_Q                          the class-token query   [b, h, k]
    logits_m = x_m . (W_K^T q) + b_K . q       no key for every token  [b, h, t]
    o = W_V (sum_m a_m x_m) + b_V              no value for every token [b, h, k]

so the extra cost per image is O(t d h + d^2), not O(t d^2) (about 1% of the
layer). Per-token terms need every token's value, and are computed only when
asked for.

The captured activations are named as TransformerLens names its hooks (module path,
then ``hook_...``) and listed once, in ``CAPTURES``; ``Decomposer.run_with_cache``
returns them by those names.

Dimension letters: b batch, L all layers, l chosen layers, h heads, t tokens,
d residual width, k head width, D output width (e is the image embedding, not a dimension).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from precompute.errors import ModelError
from precompute.hooks import Hook, hooked

# What the decomposition captures, by name (``.format(l=layer)`` for a block's); class-token rows unless the
# shape says otherwise. hook_z is TransformerLens's name for a head's output before W_O, not the residual z.
EMBED = "ln_pre.hook_out"  # [b, d] x0, the embeddings after ln_pre
ATTN_IN = "blocks.{l}.ln_1.hook_out"  # [b, t, d] the attention's input at every token (spatial only)
PATTERN = "blocks.{l}.attn.hook_pattern"  # [b, h, t] a, the class token's attention row (spatial only)
HEAD_OUT = "blocks.{l}.attn.hook_z"  # [b, h, k] o, each head's output before W_O (chosen layers only)
ATTN_OUT = "blocks.{l}.hook_attn_out"  # [b, d] the attention block's output, before layer scale
MLP_OUT = "blocks.{l}.hook_mlp_out"  # [b, d] the MLP's output, before layer scale
RESID_FINAL = "ln_post.hook_in"  # [b, d] z, the final residual (already pooled when ln_post follows the pooling)
CAPTURES = (EMBED, ATTN_IN, PATTERN, HEAD_OUT, ATTN_OUT, MLP_OUT, RESID_FINAL)


@dataclass(frozen=True)
class Decomposition:
    """Every term of the normalised image embedding, already mapped to output space."""

    embedding: Tensor  # [b, D] normalised encode_image output
    embed: Tensor  # [b, D] class row of x0
    attn: Tensor  # [b, L, D] each block's whole attention output (heads + b_O)
    mlp: Tensor  # [b, L, D] each block's MLP output
    ln_bias: Tensor  # [b, D] beta @ proj / ||e||
    layers: tuple[int, ...]  # absolute indices of the chosen layers
    heads: Tensor  # [b, l, h, D] r[l,h], summed over tokens
    attn_bias: Tensor  # [b, l, D] the b_O term of each chosen layer
    tokens: Tensor | None  # [b, l, h, t, D] per-token terms, when asked for

    def total(self) -> Tensor:
        """Sum of all terms; equals ``embedding`` up to round-off."""
        return self.embed + self.attn.sum(1) + self.mlp.sum(1) + self.ln_bias  # [b, D]


def _layer_scale(module: torch.nn.Module, like: Tensor) -> Tensor:
    """The block's layer-scale gains as float32 [d], or ones on ``like``'s device when it has none."""
    gamma = getattr(module, "gamma", None)
    if gamma is not None:
        return gamma.detach().float()
    return torch.ones(like.shape[-1], device=like.device, dtype=torch.float32)


class Decomposer:
    """Runs the model once per batch with capture hooks and returns a ``Decomposition``.

    Built once per (model, layers): it precomputes the per-head readout matrices
    A[l] = (W_O[:, h] * ls_1)^T @ Cg, shape [h, k, D], so a head's vector is one
    small einsum of its output at the class token.
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[int], spatial: bool = False):
        visual = model.visual
        self.model = model
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        n = len(self.blocks)
        self.layers = tuple(sorted(set(int(i) for i in layers)))
        if not self.layers or any(not 0 <= i < n for i in self.layers):
            raise ModelError(f"layers {list(layers)} out of range: the model has layers 0..{n - 1}")
        self.spatial = spatial
        attn0 = self.blocks[0].attn
        if not all(hasattr(attn0, a) for a in ("out_proj", "in_proj_weight", "num_heads")):
            raise ModelError("the vision tower has no recognisable attention blocks")
        if not getattr(attn0, "batch_first", True):
            raise ModelError("attention blocks must be batch-first (open_clip >= 2.24 builds them so)")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ModelError("only class-token pooling can be decomposed")
        self.heads = attn0.num_heads
        self.width = visual.transformer.width
        self.head_width = self.width // self.heads
        with torch.no_grad():
            gamma = visual.ln_post.weight.detach().float()  # [d]
            beta = visual.ln_post.bias.detach().float()  # [d]
            proj = visual.proj.detach().float()  # [d, D]
            readout = gamma[:, None] * proj  # [d, D]
            self.cg = readout - readout.mean(0, keepdim=True)  # [d, D]: (I - 11^T/d) diag(gamma) proj
            self.beta_out = beta @ proj  # [D]
            self.eps = float(visual.ln_post.eps)
            self.ls_attn = [_layer_scale(b.ls_1, gamma) for b in self.blocks]  # L x [d]
            self.ls_mlp = [_layer_scale(b.ls_2, gamma) for b in self.blocks]  # L x [d]
            self.qkv = {i: self._qkv(i) for i in self.layers}
            self.readout_heads = {i: self._head_readout(i) for i in self.layers}  # l x [h, k, D]
            self.bias_out = {
                i: (self.blocks[i].attn.out_proj.bias.detach().float() * self.ls_attn[i]) @ self.cg
                for i in self.layers
            }  # l x [D]

    def _qkv(self, i: int) -> tuple[Tensor, ...]:
        """W_Q, W_K, W_V as [h, k, d], their biases as [h, k], and the head scale as [h, 1] (ones if none)."""
        attn = self.blocks[i].attn
        h, k, d = self.heads, self.head_width, self.width
        w = attn.in_proj_weight.detach().float().view(3, h, k, d)  # [3, h, k, d]
        like = dict(device=w.device, dtype=torch.float32)  # constants live where the weights do (GPU, meta)
        has_bias = attn.in_proj_bias is not None
        b = attn.in_proj_bias.detach().float().view(3, h, k) if has_bias else torch.zeros(3, h, k, **like)
        scale = getattr(attn, "head_scale", None)
        scale = scale.detach().float().view(h, 1) if scale is not None else torch.ones(h, 1, **like)  # [h, 1]
        return w[0], w[1], w[2], b[0], b[1], b[2], scale

    def _head_readout(self, i: int) -> Tensor:
        w_o = self.blocks[i].attn.out_proj.weight.detach().float()  # [d, d]: out = o @ W_O^T
        w_o = (w_o * self.ls_attn[i][:, None]).view(self.width, self.heads, self.head_width)  # [d, h, k]
        return torch.einsum("dhk,dD->hkD", w_o, self.cg)  # [h, k, D]

    def _class_attention(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """The class-token attention row a [b, h, t] and head outputs o [b, h, k] of layer i, from its input x."""
        wq, wk, wv, bq, bk, bv, scale = self.qkv[i]
        q = torch.einsum("bd,hkd->bhk", x[:, 0], wq) + bq  # [b, h, k]
        u = torch.einsum("bhk,hkd->bhd", q, wk)  # [b, h, d]: W_K^T q
        logits = torch.einsum("btd,bhd->bht", x, u) + (q * bk).sum(-1)[..., None]  # [b, h, t]
        a = (logits * self.head_width ** -0.5).softmax(-1)  # [b, h, t]
        mixed = torch.einsum("bht,btd->bhd", a, x)  # [b, h, d]: sum_m a_m x_m
        o = (torch.einsum("bhd,hkd->bhk", mixed, wv) + bv) * scale  # [b, h, k]
        return a, o

    def _hooks(self, cache: dict[str, Tensor]) -> list[Hook]:
        def first(out):
            return out[0] if isinstance(out, tuple) else out  # nn.MultiheadAttention returns (output, weights)

        def save_output(name):
            def fn(_module, _args, out):
                cache[name] = first(out)[:, 0].to(dtype=torch.float32, copy=True)  # [b, d], not a view of [b, t, d]
            return fn

        def class_attention(i):
            def fn(_module, args):
                x = args[0].float()  # [b, t, d]: ln_1 output
                a, o = self._class_attention(i, x)
                cache[HEAD_OUT.format(l=i)] = o
                if self.spatial:
                    cache[PATTERN.format(l=i)], cache[ATTN_IN.format(l=i)] = a, x.clone()
            return fn

        def save_z(_module, args):
            z = args[0]
            cache[RESID_FINAL] = (z[:, 0] if z.ndim == 3 else z).to(dtype=torch.float32, copy=True)  # [b, d]

        hooks = [Hook(self.visual.ln_pre, "forward", save_output(EMBED), EMBED)]
        for i, block in enumerate(self.blocks):
            attn_out, mlp_out, head_out = ATTN_OUT.format(l=i), MLP_OUT.format(l=i), HEAD_OUT.format(l=i)
            hooks.append(Hook(block.attn, "forward", save_output(attn_out), attn_out))
            hooks.append(Hook(block.mlp, "forward", save_output(mlp_out), mlp_out))
            if i in self.readout_heads:
                hooks.append(Hook(block.attn, "forward_pre", class_attention(i), head_out))
        hooks.append(Hook(self.visual.ln_post, "forward_pre", save_z, RESID_FINAL))
        return hooks

    @torch.inference_mode()
    def run_with_cache(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The model's own embedding e [b, D] (in float32) and every capture, by its name in ``CAPTURES``."""
        cache: dict[str, Tensor] = {}
        weight = self.visual.ln_post.weight
        dtype = self.visual.conv1.weight.dtype  # the model's compute dtype (fp32, fp16 or bf16)
        images = images.to(device=weight.device, dtype=dtype, non_blocking=True)
        with hooked(self._hooks(cache)):
            e = self.model.encode_image(images)  # [b, D]
        e = e[0] if isinstance(e, tuple) else e  # (pooled, tokens) when the vision config sets output_tokens
        return e.float(), cache  # the readout and every sum run in fp32

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Decomposition:
        e, cache = self.run_with_cache(images)
        z = cache[RESID_FINAL]  # [b, d]
        sigma = torch.sqrt(z.var(-1, unbiased=False) + self.eps)  # [b]
        norm = e.norm(dim=-1)  # [b]
        scale = (sigma * norm)[:, None]  # [b, 1]
        b = e.shape[0]
        L = len(self.blocks)

        embed = cache[EMBED] @ self.cg / scale  # [b, D]
        attn = torch.stack([(cache[ATTN_OUT.format(l=i)] * self.ls_attn[i]) @ self.cg for i in range(L)], 1)
        mlp = torch.stack([(cache[MLP_OUT.format(l=i)] * self.ls_mlp[i]) @ self.cg for i in range(L)], 1)
        attn = attn / scale[:, None]  # [b, L, D]
        mlp = mlp / scale[:, None]  # [b, L, D]
        ln_bias = self.beta_out[None, :].expand(b, -1) / norm[:, None]  # [b, D]

        heads = torch.stack(
            [torch.einsum("bhk,hkD->bhD", cache[HEAD_OUT.format(l=i)], self.readout_heads[i]) for i in self.layers], 1
        ) / scale[:, None, None]  # [b, l, h, D]
        attn_bias = torch.stack([self.bias_out[i].expand(b, -1) for i in self.layers], 1) / scale[:, None]  # [b, l, D]
        tokens = None
        if self.spatial:
            tokens = torch.stack(
                [self._token_terms(i, cache[ATTN_IN.format(l=i)], cache[PATTERN.format(l=i)]) for i in self.layers], 1
            )
            tokens = tokens / scale[:, None, None, None]  # [b, l, h, t, D]
        return Decomposition(e / norm[:, None], embed, attn, mlp, ln_bias, self.layers, heads, attn_bias, tokens)

    def _token_terms(self, i: int, x: Tensor, a: Tensor) -> Tensor:
        """Per-token terms of layer i before the 1/(sigma ||e||) scale: [b, h, t, D]."""
        _, _, wv, _, _, bv, scale = self.qkv[i]
        v = torch.einsum("btd,hkd->bthk", x, wv) + bv  # [b, t, h, k]: every token's value
        readout = self.readout_heads[i] * scale[:, :, None]  # [h, k, D]
        return a[..., None] * torch.einsum("bthk,hkD->bhtD", v, readout)  # [b, h, t, D]


def decompose(model: torch.nn.Module, images: Tensor, layers: Sequence[int], spatial: bool = False) -> Decomposition:
    """One-shot convenience: build a Decomposer and run it on one batch."""
    return Decomposer(model, layers, spatial=spatial)(images)


def spatial_maps(tokens: Tensor, query: Tensor, grid: int) -> Tensor:
    """Patch-token terms dotted with a query direction, on the patch grid.

    tokens [..., t, D] (t = 1 + grid^2, token 0 the class token, dropped here);
    query [D] (a normalised text embedding, or a difference of two). Returns [..., grid, grid].
    """
    patches = tokens[..., 1:, :]  # [..., grid^2, D]
    scores = patches @ query  # [..., grid^2]
    return scores.reshape(*scores.shape[:-1], grid, grid)  # [..., grid, grid]
