"""Repair is resume: a finished decompose stage whose files are damaged is reopened as an unfinished one.

``verify.stage_problems`` names the damaged files; ``reopen`` deletes them, writes the plan again and rebuilds the
work folder of every chunk whose head parts are intact from the run's own images and embeddings tables (marked
done), so the stage's resume path (``stage_decompose``) recomputes only the damaged chunks and merges as usual.
The chunk layout lives here because both sides use it. No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from precompute import schema, store

STAGE = "decompose"


def reopen(run_dir: Path, manifest: dict, chunks: store.ChunkStore, plan: dict, key: str, problems) -> None:
    """A finished stage with damaged files becomes an unfinished one: the plan is written again and every chunk
    whose files are intact is rebuilt in the work folder from the run's tables (marked done), so the resume
    path redoes only the damaged chunks, then merges as usual. A damaged images or embeddings table takes every
    chunk with it. ``store.reopen_stage`` marks this stage and the later ones not done."""
    bounds = store.chunk_bounds(len(plan["paths"]), plan["chunk_size"])
    damaged = _damaged_chunks(run_dir, manifest, problems, len(bounds))
    chunks.clear()
    store.write_json_atomic(chunks.plan_path(), {"key": key, "plan": plan})
    store.reopen_stage(run_dir, manifest, STAGE, [p.path for p in problems])
    keep = [c for c in range(len(bounds)) if c not in damaged]
    if not keep:
        return
    images = pq.read_table(run_dir / schema.IMAGES_FILE)
    emb = pq.read_table(run_dir / schema.IMAGE_EMBEDDINGS_FILE)
    index = {p: i for i, p in enumerate(plan["paths"])}
    skipped = manifest.get("images", {}).get("skipped") or []
    records = manifest.get("files") or {}
    for c in keep:
        lo, hi = bounds[c]
        d = chunks.chunk_dir(c)
        rows = _rows_in(images, lo, hi)
        if rows.num_rows:  # a chunk whose every image was skipped has no embeddings file
            store.write_table_atomic(d / schema.IMAGE_EMBEDDINGS_FILE, _rows_in(emb, lo, hi), schema.EMBEDDING_SPLIT)
        store.write_table_atomic(d / schema.IMAGES_FILE, rows)
        store.write_json_atomic(d / "skipped.json", [s for s in skipped if lo <= index.get(s["path"], -1) < hi])
        name = f"/part-{c:05d}.parquet"
        part_records = {rel: rec for rel, rec in records.items() if rel.endswith(name)}
        if part_records:  # else _chunk_files reads them back (a run made before the record)
            store.write_json_atomic(d / chunks.FILES, part_records)
        chunks.mark_done(c)


def _damaged_chunks(run_dir: Path, manifest: dict, problems, n_chunks: int) -> set[int]:
    """The chunks a repair redoes: those of damaged or missing head parts; every chunk when the images or
    embeddings table is damaged (they hold every chunk's rows)."""
    out: set[int] = set()
    for p in problems:
        part = re.search(r"part-(\d+)\.parquet$", p.path)
        if part:
            out.add(int(part[1]))
        elif p.path.startswith(schema.HEAD_VECTORS_DIR + "/"):  # a head short of parts, in a run without the record
            out |= _parts_missing_from(run_dir, p.path, n_chunks)
        else:
            return set(range(n_chunks))
    return out


def _parts_missing_from(run_dir: Path, folder: str, n_chunks: int) -> set[int]:
    """Chunks that some head has a part of and the head at ``folder`` has not."""
    def chunks_in(d: Path) -> set[int]:
        return {int(m[1]) for p in d.glob("part-*.parquet") if (m := re.fullmatch(r"part-(\d+)\.parquet", p.name))}

    mine = chunks_in(Path(run_dir) / folder)
    anyone = set().union(*(chunks_in(d) for d in (Path(run_dir) / schema.HEAD_VECTORS_DIR).glob("layer=*/head=*")))
    return {c for c in anyone - mine if c < n_chunks}


def _rows_in(table: pa.Table, lo: int, hi: int) -> pa.Table:
    """The rows of chunk [lo, hi): image ids are plan positions."""
    ids = table["image_id"]
    return table.filter(pc.and_(pc.greater_equal(ids, lo), pc.less(ids, hi)))
