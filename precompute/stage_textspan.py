"""The textspan stage: embed a text pool once per run, then name every analysed head with TEXTSPAN.

Writes ``texts.parquet`` (the pool's embeddings by this model),
``head_texts.parquet`` (each head's K picks with cumulative variance explained)
and ``head_spans.parquet`` (each head's mean and the basis of its picks, which
the score stage needs to rebuild the head from its texts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from precompute import derived, schema, store, verify
from precompute.errors import RunDirError
from precompute.pools import Pool, load_pool, source_record
from precompute.registry import LoadedModel
from precompute.textenc import encode_texts
from precompute.textspan import (DEFAULT_K, DEFAULT_RANK, GRAM_CHUNK, TextspanResult, accumulate_gram,
                                 textspan_from_stats)

STAGE = "textspan"
# Part of the stage key: bump it when the stage's output changes for the same inputs, so that `run` and
# `textspan` recompute older runs. 2: the matrix_rank noise floor for the TEXTSPAN rank. 3: head_spans.parquet.
ALGORITHM = 3


@dataclass(frozen=True)
class TextspanOptions:
    pool: str  # a shipped pool name or a file
    k: int = DEFAULT_K
    rank: int = DEFAULT_RANK
    progress: bool = True


def textspan_key(manifest: dict, pool: Pool, opts: TextspanOptions) -> str:
    return store.stage_key(manifest["stages"]["decompose"]["key"], pool.sha256, opts.k, opts.rank, ALGORITHM)


def heads_of(manifest: dict) -> list[tuple[int, int]]:
    return [(layer, h) for layer in manifest["layers"] for h in range(manifest["heads"])]


def head_stats(run_dir: Path, layer: int, head: int):
    """Gram statistics of one head, accumulated over blocks of about GRAM_CHUNK images read part by part."""
    files = store.head_files(run_dir, layer, head)
    if not files:
        raise RunDirError(f"{run_dir}: no head vectors for layer {layer} head {head}; rerun decompose")
    return accumulate_gram(_blocks(files))


def _blocks(files: list[Path]):
    """[b, D] blocks of >= GRAM_CHUNK rows from 512-row parts: one product per part ran 3x slower in float64."""
    pending: list[np.ndarray] = []
    rows = 0
    for f in files:
        pending.append(store.arrow_to_vectors(pq.read_table(f, columns=["vector"]).column("vector")))
        rows += len(pending[-1])
        if rows >= GRAM_CHUNK:
            yield np.concatenate(pending)
            pending, rows = [], 0
    if pending:
        yield np.concatenate(pending)


# One head's (HEAD_SUMMARY row, TextspanResult) for every head, in the order given: ``map_heads(run_dir, heads,
# text_emb, opts)``. ``local_heads`` computes them here; the Ray engine as one task per head (docs/design.md 9.1).
MapHeads = Callable[[Path, list[tuple[int, int]], np.ndarray, TextspanOptions], list[tuple[dict, TextspanResult]]]


def textspan_head(run_dir: Path, layer: int, head: int, text_emb: np.ndarray, k: int,
                  rank: int) -> tuple[dict, TextspanResult]:
    """One head from its own files: its summary row (mean, principal direction) and TEXTSPAN, from one Gram."""
    stats = head_stats(run_dir, layer, head)
    return derived.summary_row(layer, head, stats), textspan_from_stats(stats, text_emb, k=k, rank=rank)


def local_heads(run_dir: Path, heads: list[tuple[int, int]], text_emb: np.ndarray,
                opts: TextspanOptions) -> list[tuple[dict, TextspanResult]]:
    """``MapHeads`` in this process, head after head."""
    return [textspan_head(run_dir, layer, head, text_emb, opts.k, opts.rank)
            for layer, head in tqdm(heads, desc="textspan", unit="head", disable=not opts.progress,
                                    dynamic_ncols=True)]


def run_textspan(loaded: LoadedModel, run_dir: Path, opts: TextspanOptions, force: bool = False,
                 map_heads: MapHeads | None = None) -> bool:
    """Compute and write the stage; False when it was already current.

    ``map_heads`` computes the heads (None: ``local_heads``, here); the tables are written here either way."""
    run_dir = Path(run_dir)
    manifest = verify.require(run_dir, "decompose", f"clip-interpret decompose --out {run_dir} ...")
    pool = load_pool(opts.pool)
    key = textspan_key(manifest, pool, opts)
    if not force and store.stage_current(manifest, STAGE, key) and verify.intact(run_dir, manifest, STAGE):
        return False
    t0 = time.perf_counter()
    text_emb = _texts(loaded, run_dir, pool, opts)
    rows: dict[str, list] = {name: [] for name in schema.HEAD_TEXTS.names}
    spans: dict[str, list] = {name: [] for name in schema.HEAD_SPANS.names}
    heads = heads_of(manifest)
    summaries = []  # each head's mean and principal direction, from the same statistics (precompute/derived.py)
    for (layer, head), (summary, result) in zip(heads, (map_heads or local_heads)(run_dir, heads, text_emb, opts),
                                                strict=True):
        summaries.append(summary)
        _append_picks(rows, layer, head, result, pool)
        _append_span(spans, layer, head, result)
    store.write_table_atomic(run_dir / schema.HEAD_SPANS_FILE, pa.Table.from_pydict(spans, schema=schema.HEAD_SPANS))
    store.write_table_atomic(run_dir / schema.HEAD_TEXTS_FILE, pa.Table.from_pydict(rows, schema=schema.HEAD_TEXTS))
    derived.write_head_summary(run_dir, summaries, manifest)
    store.finish_stage(run_dir, manifest, STAGE, key, time.perf_counter() - t0,
                       after=manifest["stages"]["decompose"]["key"], pool=pool.name, pool_source=source_record(pool),
                       pool_sha256=pool.sha256, texts=len(pool), k=opts.k, rank=opts.rank)
    return True


def _append_picks(rows: dict, layer: int, head: int, result: TextspanResult, pool: Pool) -> None:
    for rank, (j, ve) in enumerate(zip(result.picks.tolist(), result.variance_explained.tolist()), start=1):
        rows["layer"].append(layer)
        rows["head"].append(head)
        rows["rank"].append(rank)
        rows["text_id"].append(j)
        rows["text"].append(pool.texts[j])
        rows["property"].append(pool.properties[j])
        rows["variance_explained"].append(ve)


def _append_span(spans: dict, layer: int, head: int, result: TextspanResult) -> None:
    for name, value in (("layer", layer), ("head", head), ("images", result.n), ("span_rank", result.rank),
                        ("total_variance", result.total_variance), ("mean", result.mean.tolist()),
                        ("basis", result.basis.tolist())):
        spans[name].append(value)


def _texts(loaded: LoadedModel, run_dir: Path, pool: Pool, opts: TextspanOptions) -> np.ndarray:
    """The pool's normalised text embeddings: reused from texts.parquet when it holds this pool, else computed."""
    path = run_dir / schema.TEXTS_FILE
    if path.is_file():
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if meta.get(b"pool_sha256") == pool.sha256.encode() and table.num_rows == len(pool):
            return store.arrow_to_vectors(table.column("embedding"))
    emb = encode_texts(loaded, pool.texts)  # [m, D]
    write_texts(run_dir, pool, emb)
    return emb


def write_texts(run_dir: Path, pool: Pool, embeddings: np.ndarray) -> None:
    """texts.parquet: the pool with its embeddings [m, D], tagged with the pool's sha256 so the stage reuses it."""
    table = pa.Table.from_arrays(
        [pa.array(np.arange(len(pool)), pa.int32()), pa.array(pool.texts, pa.string()),
         pa.array(pool.properties, pa.string()), store.vectors_to_arrow(embeddings)],
        schema=schema.TEXTS.with_metadata({"pool": pool.name, "pool_sha256": pool.sha256}),
    )
    store.write_table_atomic(Path(run_dir) / schema.TEXTS_FILE, table, schema.EMBEDDING_SPLIT)


def read_picks(run_dir: Path) -> dict[tuple[int, int], list[dict]]:
    """head_texts.parquet grouped by head, rows in rank order."""
    table = pq.read_table(Path(run_dir) / schema.HEAD_TEXTS_FILE).sort_by([("layer", "ascending"),
                                                                           ("head", "ascending"),
                                                                           ("rank", "ascending")])
    out: dict[tuple[int, int], list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault((row["layer"], row["head"]), []).append(row)
    return out


def read_spans(run_dir: Path) -> dict[tuple[int, int], TextspanResult]:
    """Each head's TEXTSPAN result as the stage computed it (variance explained as stored, in float32)."""
    run_dir = Path(run_dir)
    path = run_dir / schema.HEAD_SPANS_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {schema.HEAD_SPANS_FILE} (its textspan stage is from an older "
                          f"version); rerun `clip-interpret textspan --out {run_dir}`")
    picks = read_picks(run_dir)
    out = {}
    for row in pq.read_table(path).to_pylist():
        rows = picks.get((row["layer"], row["head"]), [])
        d = len(row["mean"])
        out[(row["layer"], row["head"])] = TextspanResult(
            picks=np.array([r["text_id"] for r in rows], dtype=np.int64),
            variance_explained=np.array([r["variance_explained"] for r in rows], dtype=np.float64),
            mean=np.array(row["mean"], dtype=np.float64),
            basis=np.array(row["basis"], dtype=np.float64).reshape(-1, d),  # [k, D]
            total_variance=row["total_variance"], rank=row["span_rank"], n=row["images"])
    return out
