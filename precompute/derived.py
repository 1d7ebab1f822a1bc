"""Per-head summaries the dashboard shows at every visit, computed once per run instead of per server.

``head_summary.parquet`` holds one row per analysed head: the mean of r[l,h] over the
run's images and the first principal direction of the centred vectors (the top
eigenvector of their covariance), with its variance and the total variance. The
dashboard's head explorer ranks images along that direction; without this file it
computes the direction from the head's [n, D] vectors, about 1 s per head at
n = 50,000, D = 512 (one [D, n] x [n, D] product).

The statistics are the Gram statistics the textspan stage accumulates anyway
(``textspan.accumulate_gram``), so writing the summary costs one [D, D] eigh per head.
The stored direction has no chosen sign: the sign that makes the projections' third
moment positive needs a pass over the vectors, which the dashboard makes when it has
the head loaded (``dashboard.live.orient``).

The table's name and schema live in ``schema.py`` (HEAD_SUMMARY) with every other table;
the dashboard reads the file when it exists and falls back to computing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from precompute import schema, store
from precompute.textspan import GramStats


def summary_row(layer: int, head: int, stats: GramStats) -> dict:
    """One row of HEAD_SUMMARY from a head's Gram statistics: covariance = centred Gram / n, then eigh."""
    cov = stats.centred_gram() / stats.n  # [D, D] float64
    values, vecs = np.linalg.eigh(cov)  # eigenvalues ascending
    return {"layer": int(layer), "head": int(head), "n": int(stats.n), "mean": stats.mean.astype(np.float32),
            "principal": vecs[:, -1].astype(np.float32), "principal_variance": float(values[-1]),
            "total_variance": float(np.trace(cov))}


def summary_table(rows: Iterable[dict]) -> pa.Table:
    rows = sorted(rows, key=lambda r: (r["layer"], r["head"]))
    columns = {f.name: [r[f.name] for r in rows] for f in schema.HEAD_SUMMARY}
    for name in ("mean", "principal"):
        columns[name] = store.vectors_to_arrow(np.stack(columns[name]).astype(np.float32)) if rows \
            else pa.array([], schema.VECTOR)  # [heads, D]
    return pa.table(columns, schema=schema.HEAD_SUMMARY)


def decompose_key(manifest: dict) -> str:
    return str(((manifest.get("stages") or {}).get("decompose") or {}).get("key", ""))


def write_head_summary(run_dir: Path, rows: Iterable[dict], manifest: dict) -> Path:
    """Write ``head_summary.parquet`` in ``run_dir`` atomically, tagged with the decompose stage's key.

    A reader compares the tag (schema metadata ``decompose_key``) with the manifest's, so a summary
    left over from an earlier decomposition is never taken for the current one.
    """
    path = Path(run_dir) / schema.HEAD_SUMMARY_FILE
    table = summary_table(rows)
    store.write_table_atomic(path, table.replace_schema_metadata({schema.HEAD_SUMMARY_KEY: decompose_key(manifest)}))
    return path


def compute_head_summary(run_dir: Path, manifest: dict) -> Path:
    """Read each analysed head part by part and write the summary (for runs whose textspan stage did not)."""
    from precompute.stage_textspan import head_stats, heads_of

    rows = [summary_row(layer, head, head_stats(Path(run_dir), layer, head)) for layer, head in heads_of(manifest)]
    return write_head_summary(run_dir, rows, manifest)
