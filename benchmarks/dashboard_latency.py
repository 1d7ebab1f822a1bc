"""How fast the dashboard answers, measured on this machine (CPU; other jobs share it: read the ratios).

1. Nearest neighbours: one head over N images (default 50,000, D=512, a synthetic run written
   with tests/fixtures/runs.py): cold load of the head's matrix, then the per-query cost
   (scores + top-k, dot and cosine, the query image left out) p50/p95 over many queries,
   and the thumbnail lookup of the k results. Target: p50 < 50 ms per query.
2. Page switch: AppTest run time of every page on runs found under --data-dir (default: the
   toy runs in ./runs when there are any, else a fresh folder of tiny real + synthetic runs),
   first visit and warm median. Target: < 1 s.
3. One upload, full analysis, random-init ViT-B-32 already loaded: decode + preprocess + spatial
   decomposition of the last 4 layers (48 heads) + one text embedding + 48 head maps + the summed
   map rendered to PNG + per-head nearest neighbours over the N-image matrix. Target: < 2 s.
   Also the plain ``encode_image`` of one image, for the ratio.
4. ImageNet scale (``--scale-run DIR``, or ``--scale`` to write one): a synthetic 50,000-image
   ViT-B-16 run (``benchmarks/synthetic_run.py``: 48 heads, D=512, thumbnails, the 3,276-text
   pool; textspan, label and score run by the CLI), served in a child process of its own so its
   RSS is the dashboard's alone: every page's first visit and warm revisit (AppTest), the model
   load (once per server, apart), a property vector (the mean of 6 heads not read yet), a
   head's principal direction (stored by the textspan stage, and computed, for the ratio), the
   per-head nearest-neighbour query p50 once the head is loaded, and the RSS after the head
   explorer has shown 30 different heads. ``--before REV`` serves the same run with the
   dashboard of git revision REV (``git archive``) first, for before/after figures.
   Targets: first visit < 3 s, warm < 1 s, NN p50 < 50 ms, RSS < 2.5 GB after 30 heads.

Usage: python benchmarks/dashboard_latency.py [--images 50000] [--queries 200] [--data-dir DIR] [--quick]
       python benchmarks/dashboard_latency.py --only-scale --scale-run DIR [--before REV]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as dashboard/app.py sets it for the server
ROOT = Path(__file__).resolve().parent.parent
# A scale child may serve an exported older revision: its dashboard and precompute go first on the path.
APP_ROOT = Path(sys.argv[sys.argv.index("--app-root") + 1]).resolve() if "--app-root" in sys.argv else ROOT
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(APP_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dashboard import data, live, overlay  # noqa: E402

try:
    from precompute import analysis  # noqa: E402
except ImportError:  # an exported revision from before the analyses moved to precompute/analysis.py
    try:
        from dashboard import analysis  # noqa: E402
    except ImportError:  # before dashboard/analysis.py and upload.py: live.py held both
        analysis = live
try:
    from dashboard import upload  # noqa: E402
except ImportError:
    upload = live
from precompute import paths  # noqa: E402
from precompute.decompose import Decomposer  # noqa: E402
from precompute.registry import ModelSpec, WeightsSource, load_model  # noqa: E402
from precompute.textenc import encode_texts  # noqa: E402

PAGES = ["rankings", "head", "search", "property_nn", "topic_map", "contrastive", "image_nn", "text_nn", "sql"]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def nearest_neighbours(root: Path, n: int, queries: int, k: int = 16) -> tuple[dict, np.ndarray, np.ndarray]:
    from tests.fixtures.runs import make_run

    t0 = time.perf_counter()
    make_run(root, "big", d=512, layers=(11,), heads=1, n_images=n, n_texts=20, stages=("decompose",), seed=0)
    write_s = time.perf_counter() - t0
    con = data.connect(root)
    t0 = time.perf_counter()
    ids, vectors = data.head_vectors(con, "big", 11, 0)
    load_s = time.perf_counter() - t0
    norms = analysis.row_norms(vectors)
    rng = np.random.default_rng(0)
    out = {"images": n, "dim": int(vectors.shape[1]), "k": k, "write_run_s": round(write_s, 1),
           "cold_load_ms": ms(load_s)}
    for cosine in (False, True):
        times = []
        for row in rng.integers(0, n, queries):
            t0 = time.perf_counter()
            analysis.top_k(analysis.similarities(vectors[row], vectors, norms, cosine), k, exclude=int(row))
            times.append(time.perf_counter() - t0)
        name = "cosine" if cosine else "dot"
        out[f"query_{name}_p50_ms"] = ms(pct(times, 50))
        out[f"query_{name}_p95_ms"] = ms(pct(times, 95))
    times = []
    for row in rng.integers(0, n, max(20, queries // 10)):
        picked = rng.choice(ids, k, replace=False)
        t0 = time.perf_counter()
        data.thumbnails(con, "big", picked)
        times.append(time.perf_counter() - t0)
    out["thumbnails_p50_ms"] = ms(pct(times, 50))
    return out, ids, vectors


def page_switch(data_dir: Path, repeats: int) -> dict:
    from streamlit.testing.v1 import AppTest

    os.environ["CLIP_INTERPRET_DATA_DIR"] = str(data_dir)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=600)
    t0 = time.perf_counter()
    at.run()
    out = {"data_dir": str(data_dir), "app_first_run_ms": ms(time.perf_counter() - t0), "pages": {}}
    live_run = _live_run(data_dir)
    for _ in range(repeats + 1):
        for page in PAGES:
            at.switch_page(f"app_pages/{page}.py")
            if live_run:  # give the live pages something to compute, like a pasted link would
                at.query_params.update({"run": live_run, "img": "1", "t": "a red circle", "t1": "a red circle",
                                        "t2": "a blue square", "q": "red"})
            t0 = time.perf_counter()
            at.run()
            took = time.perf_counter() - t0
            errors = [e.value for e in at.exception]
            entry = out["pages"].setdefault(page, {"runs_ms": [], "exceptions": errors})
            entry["runs_ms"].append(ms(took))
    for entry in out["pages"].values():
        runs = entry.pop("runs_ms")
        entry["first_ms"], entry["warm_median_ms"] = runs[0], statistics.median(runs[1:]) if runs[1:] else runs[0]
    return out


def _live_run(data_dir: Path) -> str | None:
    con = data.connect(data_dir)
    runs = data.runs(con).to_pylist()
    for r in runs:
        model = json.loads(r["manifest"]).get("model", {})
        if "label" in (r["stages"] or []) and (model.get("weights") or model.get("weights_kind")):  # new, old form
            return r["run"]
    return runs[0]["run"] if runs else None


def upload_analysis(ids: np.ndarray, vectors: np.ndarray, repeats: int) -> dict:
    t0 = time.perf_counter()
    loaded = load_model(ModelSpec("ViT-B-32", WeightsSource("none", "0"), "cpu"))
    load_s = time.perf_counter() - t0
    layers = tuple(range(loaded.info.layers - 4, loaded.info.layers))
    decomposer = Decomposer(loaded.model, layers, spatial=True)
    heads = [(l, h) for l in layers for h in range(loaded.info.heads)]
    rng = np.random.default_rng(0)
    steps = {"decode_ms": [], "decompose_ms": [], "text_ms": [], "maps_png_ms": [], "neighbours_ms": [],
             "total_ms": [], "plain_forward_ms": []}
    norms = analysis.row_norms(vectors)
    for i in range(repeats + 1):  # the first round warms up and is dropped
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "PNG")
        raw = buf.getvalue()
        t = [time.perf_counter()]
        img = upload.load_upload(raw)
        t.append(time.perf_counter())
        li = live.decompose_image(loaded, decomposer, img)
        t.append(time.perf_counter())
        text = encode_texts(loaded, [f"a photo of a dog {i}"])[0]
        t.append(time.perf_counter())
        grid = analysis.summed_map(analysis.head_maps(li, text), li.layers, heads)
        png = overlay.render_png([("all heads", li.view, grid)], overlay.symmetric_scale(grid), "scale")
        t.append(time.perf_counter())
        rows, _ = analysis.top_k(analysis.similarities(li.head_vector(*heads[-1]), vectors, norms), 16)
        t.append(time.perf_counter())
        with torch.inference_mode():
            t_plain = time.perf_counter()
            loaded.model.encode_image(loaded.preprocess(img)[None])
            plain = time.perf_counter() - t_plain
        if i == 0:
            continue
        for key, (a, b) in zip(["decode_ms", "decompose_ms", "text_ms", "maps_png_ms", "neighbours_ms"],
                               zip(t, t[1:])):
            steps[key].append(b - a)
        steps["total_ms"].append(t[-1] - t[0])
        steps["plain_forward_ms"].append(plain)
    out = {"model": "ViT-B-32 random init", "layers": list(layers), "heads": len(heads), "png_bytes": len(png),
           "model_load_s": round(load_s, 2), "neighbour_matrix_images": int(len(ids))}
    out.update({k: ms(statistics.median(v)) for k, v in steps.items()})
    out["decompose_over_plain_forward"] = round(statistics.median(steps["decompose_ms"])
                                                / statistics.median(steps["plain_forward_ms"]), 2)
    return out



# --------------------------------------------------------------------------- 4. ImageNet scale

SCALE_PAGES = ["head", "search", "property_nn", "image_nn", "text_nn", "topic_map", "contrastive", "sql"]
BROWSED_HEADS = 30


def rss_mb() -> dict:
    """This process's resident set now and its high-water mark, MiB (/proc: not inherited across exec)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[f].split()[0]) / 1024) for k, f in (("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"))}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def scale_child(data_dir: Path, run: str, repeats: int, queries: int) -> dict:
    """Serve ``data_dir`` with the dashboard of APP_ROOT in AppTest; the figures of section 4."""
    import gc

    import pyarrow.parquet as pq
    from streamlit.testing.v1 import AppTest

    from dashboard import state

    os.environ["CLIP_INTERPRET_DATA_DIR"] = str(data_dir)
    run_dir = data_dir / run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    heads = [(l, h) for l in manifest["layers"] for h in range(manifest["heads"])]
    labels = pq.read_table(run_dir / "head_labels.parquet").to_pandas()
    by_prop = labels[labels["property"] != "mixed"].groupby("property").size().sort_values(ascending=False)
    page_prop = by_prop.index[0]  # the property with the most heads
    last = heads[-1]
    out = {"app_root": str(APP_ROOT), "images": manifest["images"]["count"], "heads": len(heads),
           "start": rss_mb(), "pages": {}}
    at = AppTest.from_file(str(APP_ROOT / "dashboard" / "app.py"), default_timeout=900)
    at.query_params.update({"run": run, "layer": str(last[0]), "head": str(last[1]), "img": "7", "k": "16",
                            "t": "a red object", "t1": "a dog", "t2": "grass", "q": "red", "prop": page_prop})
    out["pages"]["rankings"] = {"first_s": _timed(at.run), "exceptions": [e.value for e in at.exception]}
    cat = state.catalog(str(data_dir))
    spec, why = state.model_spec(cat.runs[run])
    out["model_load_s"] = _timed(lambda: state.model_bundle(spec)) if spec else why  # once per server
    warm: dict[str, list] = {p: [] for p in ["rankings", *SCALE_PAGES]}
    for rep in range(repeats + 1):
        for page in ["rankings", *SCALE_PAGES] if rep else SCALE_PAGES:
            at.switch_page(f"app_pages/{page}.py")
            took = _timed(at.run)
            entry = out["pages"].setdefault(page, {"exceptions": [e.value for e in at.exception]})
            if rep == 0:
                entry["first_s"] = took
            else:
                warm[page].append(took)
    for page, times in warm.items():
        out["pages"][page]["warm_s"] = statistics.median(times) if times else None
    out["after_pages"] = rss_mb()

    # one head not shown yet: read it, its principal direction (stored / computed), its nearest neighbours
    other = heads[-2]
    six = heads[-8:-2]  # a property vector over 6 heads none of which is cached yet (synthetic labels give 1-2)
    out["property_vector"] = {"heads": len(six), "s": _timed(lambda: state.mean_matrix(cat, run, six))}
    out["head_load_s"] = _timed(lambda: state.head_matrix(cat, run, *other))
    out["principal_s"] = _timed(lambda: state.principal_direction(cat, run, *other))
    out["principal_stored"] = (run_dir / "head_summary.parquet").is_file()
    vectors32 = data.head_vectors(cat.con, run, *other)[1]
    out["principal_computed_s"] = _timed(lambda: analysis.principal_direction(vectors32))
    del vectors32
    m = state.head_matrix(cat, run, *other)
    out["vectors_dtype"] = str(m.vectors.dtype)
    rng = np.random.default_rng(0)
    for cosine in (False, True):
        times = [_timed(lambda: analysis.top_k(analysis.similarities(m.vectors[r], m.vectors, m.norms, cosine), 16,
                                           exclude=int(r))) for r in rng.integers(0, len(m.ids), queries)]
        out[f"nn_{'cosine' if cosine else 'dot'}_p50_ms"] = ms(pct(times, 50))
    del m

    # a user browsing: the head explorer on 30 different heads, every other one by its principal direction
    at.switch_page("app_pages/head.py").run()
    switch = []
    for i, (layer, head) in enumerate(heads[:BROWSED_HEADS]):
        at.selectbox(key="head.layer").set_value(layer)
        at.selectbox(key="head.head").set_value(head)
        at.radio(key="head.dir").set_value("pc" if i % 2 else "text")
        switch.append(_timed(at.run))
    out["browse"] = {"heads": BROWSED_HEADS, "new_head_median_s": statistics.median(switch),
                     "new_head_max_s": max(switch), "exceptions": [e.value for e in at.exception]}
    gc.collect()
    out["after_browsing"] = rss_mb()
    cache = getattr(state, "matrix_cache", None)
    if cache is not None:
        c = cache()
        out["cache"] = {"capacity_mb": round(c.capacity / 2**20), "held_mb": round(c.size / 2**20),
                        "entries": len(c), "evictions": c.stats.evictions}
    return out


def stage(stage_name: str, run_dir: Path) -> float:
    """One CLI stage in a fresh process; its wall seconds."""
    t0 = time.perf_counter()
    quiet = [] if stage_name == "label" else ["--quiet"]  # the label stage has no progress bar to silence
    subprocess.run([sys.executable, "-m", "precompute.cli", stage_name, "--out", str(run_dir), *quiet],
                   check=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return time.perf_counter() - t0


def ensure_scale_run(run_dir: Path, images: int) -> dict:
    """A complete synthetic run at ``run_dir`` (written and staged here when it is not there yet)."""
    made = {}
    if not (run_dir / "manifest.json").is_file():
        from benchmarks.synthetic_run import write_synthetic_run

        made["write_s"] = round(write_synthetic_run(run_dir, images=images, progress=False).seconds, 1)
    done = json.loads((run_dir / "manifest.json").read_text())["stages"]
    for name in ("textspan", "label", "score"):
        if name not in done:
            made[f"{name}_s"] = round(stage(name, run_dir), 1)
    if not (run_dir / "head_summary.parquet").is_file():  # a run staged before the textspan stage stored it
        from precompute import derived

        t0 = time.perf_counter()
        derived.compute_head_summary(run_dir, json.loads((run_dir / "manifest.json").read_text()))
        made["head_summary_s"] = round(time.perf_counter() - t0, 1)
    return made


def export_revision(rev: str, into: Path) -> Path:
    """The dashboard and precompute of git revision ``rev`` in a folder of their own."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "dashboard", "precompute"], check=True,
                             capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def at_scale(run_dir: Path, repeats: int, queries: int, before: str | None) -> dict:
    """Section 4 in fresh child processes: REV's dashboard first when asked, then this one."""
    results = {}
    trees = ([("before", before)] if before else []) + [("after", None)]
    for name, rev in trees:
        with tempfile.TemporaryDirectory() as tmp:
            root = export_revision(rev, Path(tmp) / "tree") if rev else ROOT
            cmd = [sys.executable, str(Path(__file__).resolve()), "--scale-child", str(run_dir), "--app-root",
                   str(root), "--repeats", str(repeats), "--queries", str(queries)]
            env = dict(os.environ, PYTHONPATH=str(root))
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=root)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            results[name]["revision"] = rev or "working tree"
        print(json.dumps({f"scale_{name}": results[name]}, indent=2), flush=True)
    return results


def scale_summary(r: dict) -> str:
    pages = r["pages"]
    first = max(p["first_s"] for p in pages.values())
    warm = max(p["warm_s"] for p in pages.values() if p["warm_s"] is not None)
    return (f"{r['revision']}: slowest first visit {first:.2f} s, slowest warm {warm:.2f} s, model load "
            f"{r['model_load_s'] if isinstance(r['model_load_s'], str) else round(r['model_load_s'], 2)} s, "
            f"property vector ({r['property_vector']['heads']} heads) {r['property_vector']['s']:.2f} s, "
            f"principal direction {r['principal_s']:.2f} s, NN p50 {r['nn_dot_p50_ms']} ms, "
            f"RSS after {r['browse']['heads']} heads {r['after_browsing']['rss_mb']} MiB "
            f"({r['after_browsing']['rss_mb'] * 2**20 / 1e9:.2f} GB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000, help="Images in the synthetic run for nearest neighbours.")
    ap.add_argument("--queries", type=int, default=200, help="Queries timed per similarity.")
    ap.add_argument("--data-dir", type=Path, default=None, help="Runs for the page-switch timing.")
    ap.add_argument("--repeats", type=int, default=5, help="Warm repeats (page switch, upload analysis).")
    ap.add_argument("--quick", action="store_true", help="5,000 images, 50 queries, 2 repeats.")
    ap.add_argument("--scale-run", type=Path, default=None,
                    help="Section 4 over this synthetic run folder (written here, ~90 s + the stages, when absent).")
    ap.add_argument("--scale", action="store_true", help="Section 4 over benchmarks/out/scale-run.")
    ap.add_argument("--only-scale", action="store_true", help="Skip sections 1-3.")
    ap.add_argument("--before", default=None, help="Section 4 also with the dashboard of this git revision.")
    ap.add_argument("--scale-child", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one served tree
    ap.add_argument("--app-root", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_child is not None:
        result = scale_child(args.scale_child.parent, args.scale_child.name, args.repeats, args.queries)
        print(json.dumps(result, default=float))
        return
    if args.quick:
        args.images, args.queries, args.repeats = 5_000, 50, 2
    results = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    scale_run = args.scale_run or (ROOT / "benchmarks" / "out" / "scale-run" if args.scale or args.only_scale
                                   else None)
    if scale_run is not None:
        results["scale_run"] = {"path": str(scale_run), **ensure_scale_run(scale_run.resolve(), args.images)}
        results["scale"] = at_scale(scale_run.resolve(), min(args.repeats, 3), args.queries, args.before)
    if args.only_scale:
        _write(results)
        print("\nsummary (section 4):\n  " + "\n  ".join(scale_summary(r) for r in results["scale"].values()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nn, ids, vectors = nearest_neighbours(tmp / "nn", args.images, args.queries)
        results["nearest_neighbours"] = nn
        print(json.dumps({"nearest_neighbours": nn}, indent=2), flush=True)
        data_dir = args.data_dir
        if data_dir is None:
            default = paths.runs_dir()
            if default.is_dir() and data.runs(data.connect(default)).num_rows:
                data_dir = default
            else:
                from tests.fixtures.dashboard_runs import build_data_dir

                data_dir = build_data_dir(tmp / "pages")
        results["page_switch"] = page_switch(data_dir, args.repeats)
        print(json.dumps({"page_switch": results["page_switch"]}, indent=2), flush=True)
        results["upload_analysis"] = upload_analysis(ids, vectors, args.repeats)
        print(json.dumps({"upload_analysis": results["upload_analysis"]}, indent=2), flush=True)
    _write(results)
    nn, up = results["nearest_neighbours"], results["upload_analysis"]
    worst = max(p["warm_median_ms"] for p in results["page_switch"]["pages"].values())
    print(f"\nsummary: NN p50 {nn['query_dot_p50_ms']} ms (target < 50) over {nn['images']} images; "
          f"slowest warm page {worst} ms (target < 1000); upload analysis {up['total_ms']} ms (target < 2000), "
          f"decomposition = {up['decompose_over_plain_forward']}x the plain forward")
    for r in results.get("scale", {}).values():
        print("  at scale, " + scale_summary(r))


def _write(results: dict) -> None:
    out_dir = ROOT / "benchmarks" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "dashboard_latency.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
