"""The textspan, label and score stages at ImageNet size, each timed in its own process (CPU).

Writes a synthetic run (``benchmarks/synthetic_run.py``: the project's format, N images, the last L
layers x H heads of a random-init model of width D, a 3,276-text pool), then runs every stage as the
CLI does (``clip-interpret textspan|label|score --out RUN --force``) in a fresh subprocess and prints
its wall time, the stage's own time (from the manifest) and the process's peak RSS (``wait4``, so
per stage). ``--before REV`` also runs the score stage of git revision REV (exported with
``git archive``) on the same run, just before the current one, for a side-by-side ratio.

Usage: python benchmarks/scale.py [--images 50000] [--layers 4] [--heads 12] [--width 512]
                                  [--out DIR] [--keep] [--before REV]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This process imports nothing heavy and runs every step in a child: Linux keeps the RSS high-water mark of the
# process that forks across exec, so a large parent would show up as every child's peak.
ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"  # precompute.schema.MANIFEST
WRITE = """import json, sys
from pathlib import Path
from benchmarks.synthetic_run import write_synthetic_run
a = json.loads(sys.argv[1])
run = write_synthetic_run(Path(a["out"]), a["images"], a["layers"], a["heads"], a["width"])
print(json.dumps({"seconds": run.seconds, "architecture": run.architecture, "images": run.images}))
"""
STAGE_ARGS = {"textspan": ["--quiet", "--device", "cpu"], "label": [], "score": ["--quiet", "--device", "cpu"]}


def child(cmd: list[str], cwd: Path, pythonpath: Path | None = None) -> tuple[str, float, int]:
    """Run ``cmd``: (output, wall seconds, peak RSS in MB of that process alone)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if pythonpath is not None:  # an exported older revision shadows the installed package
        env["PYTHONPATH"] = str(pythonpath)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return output, wall, round(usage.ru_maxrss / 1024)  # ru_maxrss is in kB on Linux


def run_stage(stage: str, run_dir: Path, pythonpath: Path | None = None) -> dict:
    """One CLI stage in a fresh process: wall seconds, the stage's own seconds, peak RSS in MB."""
    cmd = [sys.executable, "-m", "precompute.cli", stage, "--out", str(run_dir), "--force", *STAGE_ARGS[stage]]
    _, wall, rss = child(cmd, pythonpath or ROOT, pythonpath)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    return {"wall_s": round(wall, 1), "stage_s": manifest["timings"][stage]["seconds"], "peak_rss_mb": rss}


def export_revision(rev: str, into: Path) -> Path:
    """The package of git revision ``rev`` in a folder of its own."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "precompute"], check=True,
                             capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000, help="Images N in the synthetic run.")
    ap.add_argument("--layers", type=int, default=4, help="Analysed layers L (the model's last L).")
    ap.add_argument("--heads", type=int, default=12, help="Heads per layer H (must be the model's: 12 for D=512, "
                                                          "16 for D=768).")
    ap.add_argument("--width", type=int, default=512, help="Embedding width D: 512 (ViT-B-16) or 768 (ViT-L-14).")
    ap.add_argument("--out", type=Path, default=None, help="Folder for the run (default: a temporary folder). "
                                                           "A run already there is reused.")
    ap.add_argument("--keep", action="store_true", help="Keep the run folder afterwards.")
    ap.add_argument("--before", default=None, help="Git revision whose score stage runs too, for the ratio.")
    args = ap.parse_args()

    base = args.out or Path(tempfile.mkdtemp(prefix="clip-scale-"))
    run_dir = base / f"synthetic-{args.images}-{args.layers}x{args.heads}-d{args.width}"
    results: dict = {"images": args.images, "layers": args.layers, "heads_per_layer": args.heads,
                     "width": args.width, "cpus": os.cpu_count()}
    try:
        if (run_dir / MANIFEST).is_file():
            print(f"reusing {run_dir}", flush=True)
        else:
            spec = {"out": str(run_dir), "images": args.images, "layers": args.layers, "heads": args.heads,
                    "width": args.width}
            output, _, rss = child([sys.executable, "-c", WRITE, json.dumps(spec)], ROOT)
            run = json.loads(output.strip().splitlines()[-1])
            results["write"] = {"seconds": round(run["seconds"], 1), "peak_rss_mb": rss}
            print(f"wrote {run_dir} ({run['architecture']}, {run['images']:,} images) in {run['seconds']:.0f} s",
                  flush=True)
        results["disk_gb"] = round(sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) / 1e9, 2)
        stages = ["textspan", "label"] + (["score_before"] if args.before else []) + ["score"]
        for stage in stages:
            if stage == "score_before":
                old = export_revision(args.before, base / "_before")
                try:
                    results[stage] = run_stage("score", run_dir, pythonpath=old)
                finally:
                    shutil.rmtree(old, ignore_errors=True)
                results[stage]["revision"] = args.before
            else:
                results[stage] = run_stage(stage, run_dir)
            print(f"  {stage:<13} {json.dumps(results[stage])}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir if args.out else base, ignore_errors=True)
    out_dir = ROOT / "benchmarks" / "out"
    out_dir.mkdir(exist_ok=True)
    name = f"scale-{args.images}-{args.layers}x{args.heads}-d{args.width}.json"
    (out_dir / name).write_text(json.dumps(results, indent=2))
    ts, sc = results["textspan"], results["score"]
    line = (f"\nsummary: N={args.images:,}, {args.layers * args.heads} heads, D={args.width}: textspan "
            f"{ts['stage_s']} s, score {sc['stage_s']} s (score/textspan {sc['stage_s'] / ts['stage_s']:.2f}x)")
    if "score_before" in results:
        b = results["score_before"]
        line += f"; score at {args.before}: {b['stage_s']} s ({b['stage_s'] / sc['stage_s']:.1f}x the current)"
    worst = max(results[s]["peak_rss_mb"] for s in stages)
    print(line + f"; largest peak RSS {worst} MB (target < 3,000 at N=50,000, D=512)")


if __name__ == "__main__":
    main()
