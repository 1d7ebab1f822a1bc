"""TEXTSPAN: product path (Gram + r-dim loop) vs the plain data-matrix loop, measured side by side.

    python benchmarks/textspan_speed.py            # N=50,000 D=768 M=3,500 K=20, 64 heads
    python benchmarks/textspan_speed.py --quick    # small config, a few seconds

Synthetic heads with planted structure so the picks are well defined: each head
writes into a 64-dim space made of 24 text directions with clearly separated
variances (each 10% below the last) plus 40 random directions with less
variance, a mean, and float32-level noise; the texts share a common direction
as CLIP text embeddings do. Generation is not timed.

Prints the seconds of each formulation on one head, the ratio, whether the picks
agree (and whether they are the planted texts), then the total for all heads of
a ViT-L-14-sized run (Gram + loop per head).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.textspan import textspan, textspan_reference  # noqa: E402

N_PLANTED = 24
N_OTHER = 40


def make_texts(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    """[m, d] unit rows with a shared component (mean pairwise cosine about 0.2)."""
    texts = rng.standard_normal((m, d)) / np.sqrt(d) + 0.5 * rng.standard_normal(d) / np.sqrt(d)  # [m, d]
    return (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)


def make_head(rng: np.random.Generator, texts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One head [n, d] float32 and its planted text indices in variance order."""
    m, d = texts.shape
    planted = rng.choice(m, N_PLANTED, replace=False)
    other = np.linalg.qr(rng.standard_normal((d, N_OTHER)))[0].T  # [o, d]
    directions = np.vstack([texts[planted], other])  # [p + o, d]
    std = np.concatenate([0.95 ** np.arange(N_PLANTED), 0.15 * 0.93 ** np.arange(N_OTHER)]).astype(np.float32)
    coeff = rng.standard_normal((n, N_PLANTED + N_OTHER), dtype=np.float32) * std  # [n, p + o]
    vectors = coeff @ directions + rng.standard_normal(d).astype(np.float32)  # [n, d]
    vectors += 1e-4 * rng.standard_normal((n, d), dtype=np.float32)
    return vectors, planted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="images per head")
    parser.add_argument("--d", type=int, default=768, help="embedding width")
    parser.add_argument("--m", type=int, default=3_500, help="texts in the pool")
    parser.add_argument("--k", type=int, default=20, help="TEXTSPAN picks")
    parser.add_argument("--rank", type=int, default=80, help="rank of the text projection")
    parser.add_argument("--heads", type=int, default=64, help="heads in the all-heads timing (ViT-L-14: 4 x 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small config: n=5000 d=256 m=800 heads=8")
    parser.add_argument("--skip-reference", action="store_true", help="time only the product path")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the product path's Gram (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3, help="timings of the product path on the first head (median shown)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.m, args.heads = 5_000, 256, 800, 8

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    print(f"config: N={args.n} D={args.d} M={args.m} K={args.k} rank={args.rank} heads={args.heads} "
          f"torch threads={torch.get_num_threads()} load average={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    texts = make_texts(rng, args.m, args.d)
    vectors, planted = make_head(rng, texts, args.n)
    warm = np.random.default_rng(1).standard_normal((200, args.d)).astype(np.float32)
    textspan(warm, texts, k=2, rank=8)  # BLAS and LAPACK thread pools start outside the timings
    textspan_reference(warm, texts, k=2, rank=8)

    runs = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        fast = textspan(vectors, texts, k=args.k, rank=args.rank)
        runs.append(time.perf_counter() - start)
    t_fast = float(np.median(runs))
    print(f"product path (Gram + r-dim loop), one head: {t_fast:8.2f} s (median of {' '.join(f'{r:.2f}' for r in runs)})")
    in_set = int(np.isin(fast.picks, planted).sum())
    in_order = int(np.sum(fast.picks == planted[: len(fast.picks)]))
    print(f"picks among the planted texts: {in_set}/{len(fast.picks)} ({in_order} at their planted rank)")
    if not args.skip_reference:
        start = time.perf_counter()
        ref = textspan_reference(vectors, texts, k=args.k, rank=args.rank)
        t_ref = time.perf_counter() - start
        agree = np.array_equal(fast.picks, ref.picks)
        gap = float(np.max(np.abs(fast.variance_explained - ref.variance_explained)))
        print(f"plain data-matrix loop (SVD + std argmax), one head: {t_ref:8.2f} s")
        print(f"speed ratio plain / product: {t_ref / t_fast:8.1f}x")
        print(f"picks agree: {agree} (variance explained max abs diff {gap:.2e})")
    del vectors

    total = 0.0
    for _ in range(args.heads):
        vectors, _ = make_head(rng, texts, args.n)
        start = time.perf_counter()
        textspan(vectors, texts, k=args.k, rank=args.rank)
        total += time.perf_counter() - start
    print(f"all {args.heads} heads, product path (Gram + loop, generation not timed): {total:8.2f} s total, {total / args.heads:.2f} s/head")


if __name__ == "__main__":
    main()
