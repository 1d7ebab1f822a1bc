"""Toy-world speed: generator images/s, probe-set writing, and training step time fp32 vs bf16.

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/toyworld_speed.py [--skip-train]``.
Everything is measured side by side in this one run; numbers depend on what
else runs on the machine (see the load average printed first).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def images_per_second(n: int, repeats: int = 3) -> float:
    from precompute.toyworld.captions import CaptionDropout
    from precompute.toyworld.generator import render_batch

    render_batch(64, 0)  # build the cached masks and background tiles outside the timing
    best = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        render_batch(n, (1, r), CaptionDropout(single=0.15))
        best = max(best, n / (time.perf_counter() - t0))
    return best


def probe_set_per_second(n: int) -> float:
    from precompute.toyworld.generator import write_probe_set

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_probe_set(os.path.join(tmp, "probe"), n, seed=0)
        return n / (time.perf_counter() - t0)


def step_seconds(model_name: str, batch_size: int, bf16: bool, steps: int = 6) -> float:
    """Median seconds per training step (render, forward, losses, backward, AdamW) after 2 warm-up steps."""
    import torch

    from precompute.toyworld.generator import render_batch
    from precompute.toyworld.losses import AuxHeads
    from precompute.toyworld.models import create_toy_model
    from precompute.toyworld.train import Tokens, TrainConfig, train_step

    cfg = TrainConfig(model=model_name, batch_size=batch_size, bf16=bf16)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = create_toy_model(model_name)
    aux = AuxHeads(model.text_projection.shape[1])
    opt = torch.optim.AdamW([*model.parameters(), *aux.parameters()], lr=1e-4)
    tokens = Tokens(model.context_length)
    times = []
    for step in range(steps + 2):
        t0 = time.perf_counter()
        train_step(model, aux, opt, render_batch(batch_size, (0, step), cfg.dropout), tokens, cfg)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000, help="images per generator timing")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    parser.add_argument("--skip-train", action="store_true", help="only time the generator")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average before: {os.getloadavg()[0]:.2f}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    rate = images_per_second(args.images)
    print(f"render_batch: {rate:,.0f} images/s (one core, best of 3 x {args.images}; arrays + attributes + captions)")
    print(f"write_probe_set: {probe_set_per_second(1000):,.0f} images/s (1000 PNGs + attributes.parquet)")
    if args.skip_train:
        return
    print(f"training step, batch {args.batch_size}, 2 threads, median of 6:")
    for name in ("toy-s", "toy-m", "toy-l"):
        fp32 = step_seconds(name, args.batch_size, bf16=False)
        bf16 = step_seconds(name, args.batch_size, bf16=True)
        print(f"  {name}: fp32 {fp32:.2f} s, bf16 {bf16:.2f} s, bf16 speed-up x{fp32 / bf16:.2f}; "
              f"generation is {args.batch_size / rate / bf16:.1%} of a bf16 step")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
