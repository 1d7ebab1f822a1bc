"""Mean ablation through the model: the exact counterpart of the direct-effect ablation (docs/design.md 6.4).

The decomposition's ablation removes what a head writes straight into the class token's final residual; the
layers after it still see the head. Here the head's output is replaced by its mean at every token position
(``mu[t, k]``, the head's output before W_O averaged over the sample's images), so every later layer sees the
change, and the normalised embedding is read from ``encode_image``. A forward hook on the block's attention
(through ``hooks.hooked``, the project's one hook context manager) recomputes the head's output at every
token from the attention's input and swaps its contribution to the output:

    out' = out - o_h W_O[:, h]^T + mu_h W_O[:, h]^T        o_h = softmax(q_h k_h^T / sqrt(k)) v_h   [b, t, k]

It costs one forward pass per head over the sample, so it runs on a seeded sample of the probe images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from precompute import ablate
from precompute.decompose import Decomposer
from precompute.errors import InputError
from precompute.hooks import Hook, hooked
from precompute.images import open_image, split_preprocess
from precompute.registry import LoadedModel


def sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``size`` of n images (all of them when size >= n)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n, size]).choice(n, size, replace=False))


def pixel_batches(loaded: LoadedModel, root: Path, paths: list[str], batch_size: int):
    """The model's float32 inputs for ``paths`` (relative to ``root``), batch by batch, on its device."""
    pipe = split_preprocess(loaded.preprocess)
    device = next(loaded.model.parameters()).device
    dtype = loaded.model.visual.conv1.weight.dtype
    for s in range(0, len(paths), batch_size):
        try:
            pixels = torch.stack([pipe.to_pixels(open_image(root / p)[0]) for p in paths[s:s + batch_size]])
        except (InputError, OSError) as e:
            raise InputError(f"the forward ablation cannot read a probe image under {root} ({e}); "
                             "is the probe folder still where the run was made?") from e
        yield pipe.normalise(pixels.to(device)).to(dtype)  # [b, 3, H, W]


class HeadAblator:
    """Mean-ablates one head at a time in a model's forward pass; also measures the per-position means."""

    def __init__(self, model: torch.nn.Module, layers: list[int]):
        self.model = model
        self.dec = Decomposer(model, layers)  # its q/k/v slices, built on the weights' device
        self.blocks = self.dec.blocks
        self.means: dict[tuple[int, int], torch.Tensor] = {}  # (layer, head) -> [t, k]

    def _head_out(self, layer: int, head: int, x: torch.Tensor) -> torch.Tensor:
        """o_h at every token [b, t, k] from the attention's input x [b, t, d]."""
        wq, wk, wv, bq, bk, bv, scale = self.dec.qkv[layer]
        q = x @ wq[head].T + bq[head]  # [b, t, k]
        k = x @ wk[head].T + bk[head]  # [b, t, k]
        v = x @ wv[head].T + bv[head]  # [b, t, k]
        a = (q @ k.transpose(1, 2) * self.dec.head_width ** -0.5).softmax(-1)  # [b, t, t]
        return (a @ v) * scale[head]  # [b, t, k]

    def _w_o(self, layer: int, head: int) -> torch.Tensor:
        k = self.dec.head_width
        return self.blocks[layer].attn.out_proj.weight.detach().float()[:, head * k:(head + 1) * k]  # [d, k]

    @torch.inference_mode()
    def measure_means(self, heads: list[tuple[int, int]], batches) -> None:
        """Per-position means of every head's output over the images of ``batches``."""
        sums: dict[tuple[int, int], torch.Tensor] = {}
        count = 0

        def capture(layer):
            def fn(_module, args):
                x = args[0].float()  # [b, t, d]
                for h in [h for (l, h) in heads if l == layer]:
                    o = self._head_out(layer, h, x).sum(0)  # [t, k]
                    sums[(layer, h)] = sums[(layer, h)] + o if (layer, h) in sums else o
            return fn

        hooks = [Hook(self.blocks[l].attn, "forward_pre", capture(l), f"blocks.{l}.attn.hook_z")
                 for l in sorted({l for l, _ in heads})]
        for x in batches:
            with hooked(hooks):
                self.model.encode_image(x)
            count += len(x)
        self.means = {h: s / count for h, s in sums.items()}

    @torch.inference_mode()
    def embed(self, x: torch.Tensor, head: tuple[int, int] | None = None) -> torch.Tensor:
        """Normalised embeddings [b, D] with ``head`` mean-ablated (None: intact)."""
        if head is None:
            hooks = []
        else:
            layer, h = head
            w_o, mu = self._w_o(layer, h), self.means[head]

            def swap(_module, args, out):
                o = self._head_out(layer, h, args[0].float())  # [b, t, k]
                change = ((mu[None] - o) @ w_o.T).to(out[0].dtype)  # [b, t, d]
                return (out[0] + change,) + tuple(out[1:])

            hooks = [Hook(self.blocks[layer].attn, "forward", swap, f"blocks.{layer}.attn.hook_z")]
        with hooked(hooks):
            e = self.model.encode_image(x)
        e = e[0] if isinstance(e, tuple) else e
        return torch.nn.functional.normalize(e.float(), dim=-1)


def forward_totals(loaded: LoadedModel, root: Path, paths: list[str], heads: list[tuple[int, int]],
                   clf: ablate.Classifier, rows: np.ndarray, batch_size: int, progress: bool) -> ablate.Totals:
    """Totals (``ablate.Totals``) of each head mean-ablated through the model, over the images ``rows``."""
    ablator = HeadAblator(loaded.model, sorted({l for l, _ in heads}))
    sub = replace(clf, labels=clf.labels[:, rows])
    ablator.measure_means(heads, pixel_batches(loaded, root, paths, batch_size))
    totals = ablate.Totals.zeros(len(heads), len(clf.slices))
    w = torch.as_tensor(clf.weights, device=next(loaded.model.parameters()).device)  # [c, D]
    bar = tqdm(total=len(heads) * len(paths), desc="ablate (forward)", unit="img", disable=not progress,
               dynamic_ncols=True)
    start = 0
    for x in pixel_batches(loaded, root, paths, batch_size):
        block = slice(start, start + len(x))
        e = ablator.embed(x)  # [b, D]
        totals.intact += sub.correct((e @ w.T).cpu().numpy(), block)
        totals.scored += (sub.labels[:, block] >= 0).sum(1)
        totals.images += len(x)
        for a, head in enumerate(heads):
            e2 = ablator.embed(x, head)  # [b, D]
            totals.correct[a] += sub.correct((e2 @ w.T).cpu().numpy(), block)
            totals.cosine[a] += float((e2 * e).sum(-1).double().sum())
            bar.update(len(x))
        start += len(x)
    bar.close()
    return totals


def compare_forward(loaded: LoadedModel, run_dir: Path, manifest: dict, images: pa.Table, heads, labels, means,
                    embeddings, targets: list[ablate.Target], opts) -> tuple[dict, dict]:
    """HEAD_ABLATIONS rows of the forward variant, and how it differs from the direct one on the same images."""
    from precompute.stage_ablate import head_rows, part_blocks

    clf = ablate.Classifier.of(targets)
    rows = sample(len(embeddings), opts.forward_images, opts.seed)
    root = Path(manifest["images"]["root"])
    paths = [images.column("path")[int(i)].as_py() for i in rows]
    fwd = forward_totals(loaded, root, paths, heads, clf, rows, opts.batch_size, opts.progress)
    # the direct ablation on the same images, for the comparison
    direct = ablate.Totals.zeros(len(heads), len(clf.slices))
    ids = images.column("image_id").to_numpy()
    for block, vectors in part_blocks(run_dir, heads, ids, ablate.block_rows(len(heads), clf.weights.shape[0],
                                                                             embeddings.shape[1])):
        keep = rows[(rows >= block.start) & (rows < block.stop)]
        if len(keep) == 0:
            continue
        local = keep - block.start
        centred = vectors[:, local] - means[:, None]  # [H, b', D]
        direct.add(ablate.block_totals(embeddings[keep], centred, clf, keep, []))
    out = head_rows(heads, labels, targets, fwd, "forward", opts.min_drop)
    d = np.nanmean(direct.accuracy()[0][None] - direct.accuracy()[1], axis=1)  # [H]
    f = np.nanmean(fwd.accuracy()[0][None] - fwd.accuracy()[1], axis=1)  # [H]
    corr = float(np.corrcoef(d, f)[0, 1]) if len(d) > 1 and d.std() > 0 and f.std() > 0 else None
    info = {"forward": {"images": len(rows), "heads": len(heads), "drop_correlation": corr,
                        "mean_abs_drop_difference": float(np.mean(np.abs(d - f))),
                        "max_abs_drop_difference": float(np.max(np.abs(d - f))),
                        "direct_mean_drop": float(d.mean()), "forward_mean_drop": float(f.mean()),
                        "cosine_direct": float(direct.mean_cosine().mean()),
                        "cosine_forward": float(fwd.mean_cosine().mean())}}
    return out, info

