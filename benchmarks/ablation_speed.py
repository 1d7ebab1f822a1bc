"""How long the ablate stage and the cross-model CKA take, measured in one run of this script.

1. The ablate stage on a toy run (a copy of runs/<toy>, 5,000 images): the whole `clip-interpret ablate`
   command in a fresh process (model load and prompt embedding included), and the same with --forward.
2. The ablate stage at ImageNet scale: a synthetic run (benchmarks/synthetic_run.py; 50,000 images,
   4 x 12 = 48 heads, D = 512, 1,000 classes), its textspan and label stages by the CLI and its score stage
   without zero-shot; then the ablate stage in a fresh process, given the 1,000 class embeddings (random unit
   vectors: a random-init text tower would spend minutes embedding 3,000 prompts on a CPU, which is the text
   tower's cost and not the stage's, measured separately on 256 prompts and scaled).
3. CKA of the 48 heads of that run against the 48 heads of a second synthetic run (another seed, the same
   images), in a fresh process.

    .venv/bin/python benchmarks/ablation_speed.py [--images 50000] [--toy toy-s] [--keep DIR]

Prints one JSON object (seconds, peak memory, sizes) and writes it to benchmarks/out/ablation_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from precompute.runtime import passive_openmp  # noqa: E402

passive_openmp()

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def cli(*args) -> float:
    """One `clip-interpret` command in a fresh process; its wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "precompute.cli", *map(str, args)], check=True, cwd=ROOT, env=ENV,
                   stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 2)


def child(mode: str, *args) -> dict:
    """This script in a fresh process (``--child MODE``): its JSON result, with its peak RSS."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, *map(str, args)], check=True, cwd=ROOT, env=ENV,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_ablate(run_dir: str, classes: str) -> dict:
    """The ablate stage on a synthetic run, given random unit class embeddings for its labels."""
    import numpy as np
    import pyarrow.parquet as pq

    from precompute import ablate
    from precompute.stage_ablate import AblateOptions, run_ablate

    labels = pq.read_table(Path(run_dir) / "images.parquet", columns=["label"]).column("label").to_pylist()
    names = sorted(set(labels))
    index = {c: i for i, c in enumerate(names)}
    d = json.loads((Path(run_dir) / "manifest.json").read_text())["model"]["embed_dim"]
    w = np.random.default_rng(0).standard_normal((len(names), d)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    target = ablate.Target("label", tuple(names), w, np.array([index[c] for c in labels]))
    t0 = time.perf_counter()
    run_ablate(Path(run_dir), AblateOptions(progress=False), targets=[target], force=True)
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_mb(), "classes": len(names)}


def child_cka(run_a: str, run_b: str, out: str) -> dict:
    from precompute.compare import compare_runs

    result = compare_runs(Path(run_a), Path(run_b), Path(out))
    return {"seconds": round(result.seconds, 1), "peak_rss_mb": peak_mb(), "pairs": result.rows,
            "images": result.images, "retained_min": round(result.retained, 6),
            "best_match_mean": round(float(result.cka.max(1).mean()), 4)}


def child_prompts(run_dir: str) -> dict:
    """Seconds to embed 256 prompts with the run's (random-init) text tower, scaled to 3,000."""
    from precompute import pipeline
    from precompute.textenc import encode_texts

    loaded = pipeline.loaded_for_run(Path(run_dir), "cpu")
    t0 = time.perf_counter()
    encode_texts(loaded, [f"a photo of a class_{i:03d}." for i in range(256)])
    s = time.perf_counter() - t0
    return {"seconds_256": round(s, 1), "seconds_3000_scaled": round(s * 3000 / 256, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000, help="Images in the synthetic runs.")
    ap.add_argument("--toy", default="toy-s", help="The toy run under runs/ to time the stage on.")
    ap.add_argument("--keep", type=Path, default=None, help="Folder for the synthetic runs, kept (default: temporary).")
    ap.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, *rest = args.child
        print(json.dumps({"ablate": child_ablate, "cka": child_cka, "prompts": child_prompts}[mode](*rest)))
        return

    base = args.keep or Path(tempfile.mkdtemp(prefix="ablation_speed-"))
    base.mkdir(parents=True, exist_ok=True)
    results: dict = {"cores": os.cpu_count()}
    try:
        toy = base / args.toy
        shutil.rmtree(toy, ignore_errors=True)
        shutil.copytree(ROOT / "runs" / args.toy, toy)
        manifest = json.loads((toy / "manifest.json").read_text())
        results["toy"] = {"run": args.toy, "images": manifest["images"]["count"],
                          "heads": len(manifest["layers"]) * manifest["heads"],
                          "ablate_command_s": cli("ablate", "--out", toy, "--force", "--quiet"),
                          "ablate_forward_500_command_s": cli("ablate", "--out", toy, "--force", "--quiet",
                                                              "--forward", "--forward-images", 500)}
        print(json.dumps(results["toy"]), flush=True)

        from benchmarks.synthetic_run import write_synthetic_run
        from precompute.stage_score import ScoreOptions, run_score

        runs = []
        for seed in (0, 1):
            run = base / f"synthetic-{args.images}-s{seed}"
            if not (run / "manifest.json").is_file():
                shutil.rmtree(run, ignore_errors=True)
                written = write_synthetic_run(run, images=args.images, classes=1000, seed=seed, progress=False)
                results[f"write_s{seed}_s"] = round(written.seconds, 1)
            runs.append(run)
        a = runs[0]
        stages = json.loads((a / "manifest.json").read_text())["stages"]
        for name in ("textspan", "label"):
            if not (stages.get(name) or {}).get("done"):
                results[f"{name}_s"] = cli(name, "--out", a, *(["--quiet"] if name == "textspan" else []))
        if not (json.loads((a / "manifest.json").read_text())["stages"].get("score") or {}).get("done"):
            t0 = time.perf_counter()
            run_score(a, ScoreOptions(progress=False))  # no model: zero-shot skipped, the rest as the CLI does
            results["score_s"] = round(time.perf_counter() - t0, 1)
        results["scale_ablate"] = child("ablate", a, 1000)
        results["scale_ablate"]["text_tower"] = child("prompts", a)
        print(json.dumps(results["scale_ablate"]), flush=True)
        results["cka_48x48"] = child("cka", runs[0], runs[1], base / "_compare")
        results["disk_gb"] = round(sum(f.stat().st_size for r in runs for f in r.rglob("*") if f.is_file()) / 1e9, 2)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    out = ROOT / "benchmarks" / "out" / "ablation_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
