"""Are the analyses right? Ground truth of the toy world against the analysis API, centred / cosine / dot.

    .venv/bin/python benchmarks/analysis_quality.py [--runs runs] [--models toy-s,toy-m,toy-l] [--queries 200]
    .venv/bin/python benchmarks/analysis_quality.py --speed   # cost of each similarity, 50,000 x 512 float16

Over the toy runs of `clip-interpret run` (their probe images carry attributes.parquet), for every head whose
label is an attribute of the toy world (not ``mixed``), through ``precompute.rundata`` and
``precompute.analysis`` / ``headsearch`` (the functions the dashboard and `clip-interpret analyse` call):

- image P@k: of a query image's k image neighbours by the head (analysis 4), the share with the query's value
  of the head's labelled attribute; mean over the same seeded random queries for every head, then over heads;
  split by whether the label agrees with ground truth (head_scores.label_agrees: the attribute whose values
  best separate the head's vectors). ``chance`` is what random neighbours would get: sum over values of p^2;
- Jaccard: mean Jaccard index of the top-k sets of pairs of different queries (1: every query gets the same
  neighbours; lower is more query-specific);
- text P@k: of the k text neighbours (analysis 5) of an attribute text ("a red shape", "a circle", ...) by a
  head labelled with that attribute, the share of images with that value; mean over the attribute's values;
- search P: of the heads search by property returns for an attribute, the share whose ground truth is that
  attribute (one number per model: labels, not similarities, decide it).
Prints one markdown table (the README's "Are the analyses right?").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.runtime import passive_openmp  # noqa: E402

passive_openmp()

from precompute import analysis, headsearch  # noqa: E402
from precompute.labels import MIXED  # noqa: E402
from precompute.rundata import open_run  # noqa: E402

TEXTS = {  # one text per attribute value, in the toyworld pool's words
    "color": "a {} shape", "shape": "a {}", "position": "an object at the {}", "size": "a {} object",
    "count": "{} objects", "pattern": "a {} background", "background": "a {} background",
}


def attribute_text(attribute: str, value: str) -> str:
    return "one object" if (attribute, value) == ("count", "one") else TEXTS[attribute].format(value)


def head_quality(m, values: np.ndarray, queries: np.ndarray, k: int, sim: str) -> tuple[float, float]:
    """(image P@k, mean Jaccard of the top-k sets of consecutive query pairs) of one head."""
    tops, hits = [], []
    for row in queries:
        ids, _ = analysis.neighbours(m, m.vectors[row], k, sim, exclude=int(row))
        rows = np.searchsorted(m.ids, ids)
        hits.append(np.mean(values[rows] == values[row]))
        tops.append(set(ids.tolist()))
    jaccard = [len(a & b) / len(a | b) for a, b in zip(tops[::2], tops[1::2])]  # disjoint pairs of queries
    return float(np.mean(hits)), float(np.mean(jaccard))


def text_quality(run, m, attribute: str, values: np.ndarray, k: int, sim: str, emb: dict) -> float:
    """Mean over the attribute's values of the share of images with that value among a text's k neighbours."""
    out = []
    for value in sorted(set(values)):
        ids, _ = analysis.neighbours(m, emb[(attribute, value)], k, sim, text=True)
        out.append(np.mean(values[np.searchsorted(m.ids, ids)] == value))
    return float(np.mean(out))


def model_rows(run_dir: Path, n_queries: int, k: int, seed: int) -> dict:
    run = open_run(run_dir)
    if run.attributes is None:
        raise SystemExit(f"{run_dir}: the probe set has no attributes.parquet; this benchmark needs the toy world")
    attrs = run.attributes.set_index("image_id")
    scores = run.scores.set_index(["layer", "head"])
    labelled = [(int(l), int(h), p) for l, h, p in zip(run.labels["layer"], run.labels["head"], run.labels["property"])
                if p != MIXED and p in attrs.columns]
    wanted = sorted({(a, v) for _, _, a in labelled for v in attrs[a].unique()})
    vecs = run.embed([attribute_text(a, v) for a, v in wanted])
    emb = dict(zip(wanted, vecs))
    queries = np.random.default_rng(seed).choice(len(run.images), size=min(n_queries, len(run.images)), replace=False)
    per = {sim: {"all": [], "agree": [], "disagree": [], "jaccard": [], "text": []} for sim in analysis.SIMILARITIES}
    chance = []
    for layer, head, attribute in labelled:
        m = run.head(layer, head)
        values = attrs.loc[m.ids, attribute].to_numpy()  # [n], in the head's row order
        p = np.unique(values, return_counts=True)[1] / len(values)
        chance.append(float(np.sum(p ** 2)))
        agrees = bool(scores.loc[(layer, head), "label_agrees"])
        for sim in analysis.SIMILARITIES:
            precision, jaccard = head_quality(m, values, queries, k, sim)
            per[sim]["all"].append(precision)
            per[sim]["agree" if agrees else "disagree"].append(precision)
            per[sim]["jaccard"].append(jaccard)
            per[sim]["text"].append(text_quality(run, m, attribute, values, k, sim, emb))
    overview = run.labels.merge(run.scores[["layer", "head", "best_attribute"]], on=["layer", "head"])
    found = [headsearch.by_property(overview, a) for a in sorted({a for _, _, a in labelled})]
    search = [float(np.mean(f["best_attribute"] == f["property"])) for f in found if len(f)]
    n_agree = len(per["dot"]["agree"])
    return {"name": run.name, "heads": len(labelled), "agree": n_agree, "per": per, "chance": float(np.mean(chance)),
            "search": float(np.mean(search)) if search else float("nan")}


def speed(n: int = 50_000, d: int = 512, repeats: int = 20) -> None:
    """ms per query of each similarity on an [n, d] float16 matrix (as the dashboard caches it), side by side,
    and the growth of peak RSS while scoring (an [n, d] float32 temporary would be n * d * 4 bytes)."""
    import resource
    import time

    rng = np.random.default_rng(0)
    constant = rng.standard_normal(d) * 2
    rows = np.empty((n, d), np.float16)  # [n, d] with a constant part, made in blocks (keeps the peak RSS low)
    for i in range(0, n, 4096):
        rows[i:i + 4096] = constant + rng.standard_normal((min(4096, n - i), d))
    m = analysis.head_vectors(np.arange(n), rows)  # with its centred norms, computed once
    slow = analysis.HeadVectors(m.ids, m.vectors, m.norms, m.mean, None)  # as a matrix without them
    analysis.neighbours(m, rows[0], 8, "dot", exclude=0)  # torch's first call; the others' temporaries come after
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = {}
    cases = [("dot", m), ("cosine", m), ("centred", m), ("centred, norms not cached", slow)]
    for name, matrix in cases:  # dot first: the others' peaks are measured above its
        sim = name.split(",")[0]
        analysis.neighbours(matrix, rows[0], 8, sim, exclude=0)
        start = time.perf_counter()
        for i in range(repeats):
            analysis.neighbours(matrix, rows[i], 8, sim, exclude=i)
        times[name] = (time.perf_counter() - start) / repeats * 1000
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(f"{n:,} x {d} float16 ({rows.nbytes / 2**20:.0f} MiB), top 8 of {repeats} queries each:")
    for name, ms in times.items():
        print(f"  {name:26} {ms:6.1f} ms per query  ({ms / times['dot']:.2f}x dot)")
    print(f"  peak RSS grew {grown / 2**20:.1f} MiB while scoring (an [n, d] float32 copy: "
          f"{n * d * 4 / 2**20:.0f} MiB)")


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="folder holding the toy runs")
    parser.add_argument("--models", default="toy-s,toy-m,toy-l", help="run folders under --runs, comma-separated")
    parser.add_argument("--queries", type=int, default=200, help="seeded random query images per head")
    parser.add_argument("-k", type=int, default=8, help="neighbours per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", action="store_true", help="time the similarities on 50,000 x 512 float16 instead")
    args = parser.parse_args()
    if args.speed:
        return speed()
    sims = list(analysis.SIMILARITIES)
    k = args.k
    print(f"{args.queries} seeded queries (seed {args.seed}), k = {k}; columns: {' / '.join(sims)}\n")
    print("| model | labelled heads (label agrees) | measure | " + " | ".join(sims) + " |")
    print("|---|---|---|" + "---|" * len(sims))
    for name in args.models.split(","):
        r = model_rows(Path(args.runs) / name, args.queries, k, args.seed)
        per = r["per"]
        lines = [
            (f"image P@{k}, all labelled heads (chance {r['chance']:.3f})", "all"),
            (f"image P@{k}, label agrees ({r['agree']} heads)", "agree"),
            (f"image P@{k}, label disagrees ({r['heads'] - r['agree']} heads)", "disagree"),
            (f"Jaccard of top-{k} sets of different queries (lower: query-specific)", "jaccard"),
            (f"text P@{k} for attribute texts (\"a red shape\")", "text"),
        ]
        for i, (label, key) in enumerate(lines):
            first = f"| {r['name']} | {r['heads']} ({r['agree']}) |" if i == 0 else "| | |"
            print(f"{first} {label} | " + " | ".join(fmt(per[s][key]) for s in sims) + " |")
        print(f"| | | search by property: share of returned heads whose ground truth is the property | "
              + " | ".join(f"{r['search']:.3f}" for _ in sims) + " |")


if __name__ == "__main__":
    main()
