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

Usage: python benchmarks/dashboard_latency.py [--images 50000] [--queries 200] [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as dashboard/app.py sets it for the server
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dashboard import data, live, overlay  # noqa: E402
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
    norms = live.row_norms(vectors)
    rng = np.random.default_rng(0)
    out = {"images": n, "dim": int(vectors.shape[1]), "k": k, "write_run_s": round(write_s, 1),
           "cold_load_ms": ms(load_s)}
    for cosine in (False, True):
        times = []
        for row in rng.integers(0, n, queries):
            t0 = time.perf_counter()
            live.top_k(live.similarities(vectors[row], vectors, norms, cosine), k, exclude=int(row))
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
        if "label" in (r["stages"] or []) and json.loads(r["manifest"]).get("model", {}).get("weights_kind"):
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
    norms = live.row_norms(vectors)
    for i in range(repeats + 1):  # the first round warms up and is dropped
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "PNG")
        raw = buf.getvalue()
        t = [time.perf_counter()]
        img = live.load_upload(raw)
        t.append(time.perf_counter())
        li = live.decompose_image(loaded, decomposer, img)
        t.append(time.perf_counter())
        text = encode_texts(loaded, [f"a photo of a dog {i}"])[0]
        t.append(time.perf_counter())
        grid = live.summed_map(live.head_maps(li, text), li.layers, heads)
        png = overlay.render_png([("all heads", li.view, grid)], overlay.symmetric_scale(grid), "scale")
        t.append(time.perf_counter())
        rows, _ = live.top_k(live.similarities(li.head_vector(*heads[-1]), vectors, norms), 16)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000, help="Images in the synthetic run for nearest neighbours.")
    ap.add_argument("--queries", type=int, default=200, help="Queries timed per similarity.")
    ap.add_argument("--data-dir", type=Path, default=None, help="Runs for the page-switch timing.")
    ap.add_argument("--repeats", type=int, default=5, help="Warm repeats (page switch, upload analysis).")
    ap.add_argument("--quick", action="store_true", help="5,000 images, 50 queries, 2 repeats.")
    args = ap.parse_args()
    if args.quick:
        args.images, args.queries, args.repeats = 5_000, 50, 2
    results = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
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
    out_dir = ROOT / "benchmarks" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "dashboard_latency.json").write_text(json.dumps(results, indent=2))
    nn, up = results["nearest_neighbours"], results["upload_analysis"]
    worst = max(p["warm_median_ms"] for p in results["page_switch"]["pages"].values())
    print(f"\nsummary: NN p50 {nn['query_dot_p50_ms']} ms (target < 50) over {nn['images']} images; "
          f"slowest warm page {worst} ms (target < 1000); upload analysis {up['total_ms']} ms (target < 2000), "
          f"decomposition = {up['decompose_over_plain_forward']}x the plain forward")


if __name__ == "__main__":
    main()
