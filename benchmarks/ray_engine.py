"""The Ray engine against the local one on the same toy images, as ratios measured side by side in one run.

For each engine, the decompose stage of one toy model over the same 1,000 images of the toy-world probe set (the
same plan, the same chunks), each into a fresh run folder:

1. Throughput: images / the stage's compute seconds (``DecomposeSummary.seconds``: the chunks' decoding,
   decomposition and writes, not the merge or the driver's model load). For Ray it includes starting the actors and
   their model loads, so it is the whole cost a user pays per command beyond ``ray.init``; the steady rate (images
   after the first chunk / seconds after it) is printed too, and the whole command's (ray.init, the driver's model
   load, planning, the chunks, the merge). Target: Ray >= 0.8x local.
2. Start to first chunk: from before ``ray.init`` to the first chunk's ``DONE``. Target: < 30 s.
3. The tables are equal (every Parquet file's sha256 in the manifest), so the engines are compared on equal work.

Modes: 'actors' (an ActorPool over chunks, the default) and 'data' (Ray Data map_batches, same actor class).

Usage: python benchmarks/ray_engine.py [--model toy-l] [--images 1000] [--chunk-size 125] [--rounds 2]
       [--modes actors,data] [--shapes auto,2x1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
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
    """(summary, sha256 of every file, seconds of the whole command from the model load to the merged run)."""
    t0 = time.perf_counter()
    loaded = req.load()
    compute = None if session is None else session.compute_chunks
    summary = run_decompose(loaded, dataclasses.replace(req, out=out).options(progress=False), compute)
    whole = time.perf_counter() - t0
    files = json.loads((out / "manifest.json").read_text())["files"]
    return summary, {k: v["sha256"] for k, v in files.items()}, whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy-l")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=125)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--modes", default="actors,data")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: every core)")
    ap.add_argument("--rounds", type=int, default=2, help="local and Ray runs alternated this many times")
    ap.add_argument("--shapes", default="auto,2x1",
                    help="actors x torch threads each to try with mode 'actors' ('auto': actor_shape's default)")
    args = ap.parse_args()

    probe = pipeline.ensure_default_probe(progress=False)
    req = pipeline.DecomposeRequest(args.model, probe, limit=args.images, chunk_size=args.chunk_size,
                                    batch_size=args.batch_size, device="cpu")
    print(f"{args.model}, {args.images} toy images, chunks of {args.chunk_size}, batch {args.batch_size}, "
          f"{os.cpu_count()} cores, {args.rounds} rounds alternated (ratios: against the same round's local run)")
    configs = [(m, sh) for m in args.modes.split(",") for sh in args.shapes.split(",") if m == "actors" or sh == "auto"]
    figures: dict[tuple, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            local, local_files, local_whole = one(req, Path(tmp) / f"local-{r}", None)
            print(f"round {r + 1}: local {local.images_per_second:.1f} images/s over the chunks, whole command "
                  f"{local_whole:.2f} s")
            for mode, shape in configs:
                figures[(mode, shape)].append(ray_round(req, Path(tmp) / f"{mode}-{shape}-{r}", mode, shape, args,
                                                        local, local_files, local_whole))
    print("\nmedians over the rounds (targets: chunks >= 0.8x local, start to first chunk < 30 s)")
    for (mode, shape), rows in figures.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0] if k != "shape"}
        print(f"ray {mode:<7} {rows[0]['shape']:<24} chunks {med['chunks']:.2f}x  steady {med['steady']:.2f}x  "
              f"whole command {med['whole']:.2f}x  first chunk {med['first']:.1f} s  "
              f"tables equal: {all(row['equal'] for row in rows)}")


def ray_round(req, out: Path, mode: str, shape: str, args, local, local_files, local_whole) -> dict:
    actors, threads = (None, None) if shape == "auto" else map(int, shape.split("x"))
    t0 = time.perf_counter()
    with RaySession(RayOptions(num_cpus=args.cpus, mode=mode, actors=actors, threads=threads)) as session:
        started = time.perf_counter() - t0
        summary, files, whole = one(req, out, session)
        actors, _, _, threads = session.actor_shape("cpu")
        first = session.first_chunk_at
        to_first = session.compute_started + first - t0
    whole += started
    steady = (summary.computed - args.chunk_size) / (summary.seconds - first)
    row = dict(shape=f"{actors} actor(s) x {threads} thread(s)", chunks=summary.images_per_second /
               local.images_per_second, steady=steady / local.images_per_second, whole=local_whole / whole,
               first=to_first, equal=files == local_files)
    print(f"  ray {mode}, {row['shape']}: {summary.images_per_second:.1f} images/s over the chunks (actor start "
          f"included) = {row['chunks']:.2f}x; steady after the first chunk {row['steady']:.2f}x; whole command "
          f"with ray.init {whole:.2f} s = {row['whole']:.2f}x; first chunk at {to_first:.1f} s "
          f"(ray.init {started:.1f} s); tables equal: {row['equal']}")
    return row


if __name__ == "__main__":
    main()
