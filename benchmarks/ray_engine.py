"""The Ray engine against the local one on the same toy images, as ratios measured side by side in one run.

For each engine, the decompose stage of one toy model over the same 1,000 images of the toy-world probe set (the
same plan, the same chunks), each into a fresh run folder:

1. Throughput: images / the stage's compute seconds (``DecomposeSummary.seconds``: the chunks' decoding,
   decomposition and writes, not the merge or the driver's model load). For Ray it includes starting the actors and
   their model loads, so it is the whole cost a user pays per command beyond ``ray.init``; the steady rate (images
   after the first chunk / seconds after it) is printed too. Target: Ray >= 0.8x local.
2. Start to first chunk: from before ``ray.init`` to the first chunk's ``DONE``. Target: < 30 s.
3. The tables are equal (every Parquet file's sha256 in the manifest), so the engines are compared on equal work.

Modes: 'actors' (an ActorPool over chunks, the default) and 'data' (Ray Data map_batches, same actor class).

Usage: python benchmarks/ray_engine.py [--model toy-l] [--images 1000] [--chunk-size 125] [--modes actors,data]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precompute import pipeline  # noqa: E402
from precompute.engine_ray import RayOptions, RaySession  # noqa: E402
from precompute.stage_decompose import run_decompose  # noqa: E402


def one(req, out: Path, session: RaySession | None):
    loaded = req.load()
    compute = None if session is None else session.compute_chunks
    summary = run_decompose(loaded, dataclasses.replace(req, out=out).options(progress=False), compute)
    files = json.loads((out / "manifest.json").read_text())["files"]
    return summary, {k: v["sha256"] for k, v in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy-l")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=125)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--modes", default="actors,data")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: every core)")
    args = ap.parse_args()

    probe = pipeline.ensure_default_probe(progress=False)
    req = pipeline.DecomposeRequest(args.model, probe, limit=args.images, chunk_size=args.chunk_size,
                                    batch_size=args.batch_size, device="cpu")
    print(f"{args.model}, {args.images} toy images, chunks of {args.chunk_size}, batch {args.batch_size}, "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        local, local_files = one(req, Path(tmp) / "local", None)
        print(f"local                   {local.images_per_second:8.1f} images/s  ({local.seconds:.2f} s)")
        for mode in args.modes.split(","):
            t0 = time.perf_counter()
            with RaySession(RayOptions(num_cpus=args.cpus, mode=mode)) as session:
                started = time.perf_counter() - t0
                summary, files = one(req, Path(tmp) / mode, session)
                first = started + session.first_chunk_at
                actors, _, _, threads = session.actor_shape("cpu")
            ratio = summary.images_per_second / local.images_per_second
            print(f"ray {mode:<6} {actors} actors x {threads} thread  {summary.images_per_second:8.1f} images/s  "
                  f"({summary.seconds:.2f} s)  ratio {ratio:.2f}x local (target >= 0.8)")
            n_after = summary.computed - args.chunk_size
            steady = n_after / (summary.seconds - session.first_chunk_at)
            print(f"           steady, after the first chunk: {steady:8.1f} images/s, "
                  f"{steady / local.images_per_second:.2f}x local")
            print(f"           start to first chunk: {first:.1f} s (ray.init {started:.1f} s; target < 30 s); "
                  f"tables equal to local: {files == local_files}")


if __name__ == "__main__":
    main()
