"""The textspan stage with its heads as Ray tasks against the local loop, on copies of one existing run.

Each round copies the run folder twice and recomputes the stage in each copy (``--force``): once with the local
loop, once with ``RaySession.map_heads`` on a fresh local Ray instance. Printed per round: the stage's seconds
either way (Ray: from the first task's submission to the tables written; ``ray.init`` and shutdown on their own
line) and whether head_texts, head_spans and head_summary are byte-identical. The ratio is local / Ray.

Usage: python benchmarks/ray_textspan.py [--run runs/toy-l] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precompute import pipeline, schema, store  # noqa: E402
from precompute.engine_ray import RaySession  # noqa: E402
from precompute.stage_textspan import TextspanOptions, run_textspan  # noqa: E402

TABLES = (schema.HEAD_TEXTS_FILE, schema.HEAD_SPANS_FILE, schema.HEAD_SUMMARY_FILE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/toy-l"), help="a run folder with its textspan stage")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, each a local and a Ray recomputation")
    args = ap.parse_args()
    manifest = store.read_manifest(args.run)
    if manifest is None or "textspan" not in manifest.get("stages", {}):
        sys.exit(f"error: {args.run} is not a run folder with a textspan stage")
    loaded = pipeline.loaded_for_run(args.run, "cpu")
    stage = manifest["stages"]["textspan"]
    opts = TextspanOptions(stage["pool"], stage["k"], stage["rank"], progress=False)  # a shipped pool's name
    print(f"{args.run}: {len(manifest['layers']) * manifest['heads']} heads, {manifest['images']['count']} images")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            local, ray = Path(tmp) / f"local{r}", Path(tmp) / f"ray{r}"
            for d in (local, ray):
                shutil.copytree(args.run, d)
            t = time.perf_counter()
            run_textspan(loaded, local, opts, force=True)
            t_local = time.perf_counter() - t
            t = time.perf_counter()
            with RaySession() as session:
                t_init = time.perf_counter() - t
                t = time.perf_counter()
                run_textspan(loaded, ray, opts, force=True, map_heads=session.map_heads)
                t_ray = time.perf_counter() - t
                tasks = session.head_tasks
                t = time.perf_counter()
            t_init += time.perf_counter() - t
            same = all((local / n).read_bytes() == (ray / n).read_bytes() for n in TABLES)
            print(f"round {r + 1}: local {t_local:.1f} s, Ray {t_ray:.1f} s ({tasks} tasks; ray.init + shutdown "
                  f"{t_init:.1f} s); local / Ray = {t_local / t_ray:.2f}; tables byte-identical: {same}")


if __name__ == "__main__":
    main()
