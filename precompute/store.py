"""Run directories: atomic Parquet writes, the manifest, chunked resumable work.

A write is a temp file in the same folder, then ``os.replace``: a reader sees the
old file or the new one, never half of one. Files get the permissions the process
umask allows (0644 under the usual 022; directories 0755), so teammates and
service accounts can read a run; the temp files of a write that was killed are
swept when the next stage starts on the run (``sweep_temp``). Long work is split into chunks of
images; a chunk's files are written first and its ``DONE`` marker last, so a run
killed at any moment restarts by redoing only unfinished chunks, overwriting
their partial files under the same names: exactly one row per (image, layer, head).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precompute import schema
from precompute.errors import RunDirError

WORK_DIR = "_work"
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3)


TEMP_SUFFIX = ".tmp"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_umask() -> int:
    """The process umask (read once at import, while single-threaded: os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 whatever the umask; a run is meant to be shared
    return fd, tmp


def sweep_temp(run_dir: Path) -> int:
    """Remove temp files that killed atomic writes left anywhere in ``run_dir``; return how many.

    Called when a stage starts: one run folder has one writer at a time, so any temp file there is an orphan.
    """
    removed = 0
    for tmp in Path(run_dir).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_table_atomic(path: Path, table: pa.Table, byte_stream_split: list[str] | None = None,
                       row_group_size: int | None = None) -> None:
    """Write Parquet atomically; float vector columns use BYTE_STREAM_SPLIT, which zstd compresses far better.

    Small row groups (``row_group_size``) let readers skip most of a big table when they look up a few rows.
    """
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        pq.write_table(
            table, tmp, use_dictionary=False if byte_stream_split else True,
            use_byte_stream_split=byte_stream_split or False, row_group_size=row_group_size, **PARQUET_OPTIONS,
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vectors_to_arrow(vectors: np.ndarray) -> pa.ListArray:
    """[n, d] float32 -> list<float32> without a Python loop."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def arrow_to_vectors(column: pa.ChunkedArray | pa.ListArray) -> np.ndarray:
    """list<float32> column -> [n, d] float32 (one copy at most)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n, -1).astype(np.float32, copy=False)  # [n, d]


def read_manifest(run_dir: Path) -> dict | None:
    path = Path(run_dir) / schema.MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); move the folder away or pass another --out") from e
    version = manifest.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise RunDirError(
            f"{run_dir} was written with schema version {version}, this version reads {schema.SCHEMA_VERSION}; "
            "re-run into a new --out folder"
        )
    return manifest


def new_manifest(**fields: Any) -> dict:
    return {"schema_version": schema.SCHEMA_VERSION, "run_id": uuid.uuid4().hex, "created": now(),
            "updated": now(), "stages": {}, **fields}


def write_manifest(run_dir: Path, manifest: dict) -> None:
    manifest["updated"] = now()
    write_json_atomic(Path(run_dir) / schema.MANIFEST, manifest)


def head_part_path(run_dir: Path, layer: int, head: int, chunk: int) -> Path:
    return Path(run_dir) / schema.HEAD_VECTORS_DIR / f"layer={layer}" / f"head={head}" / f"part-{chunk:05d}.parquet"


def head_files(run_dir: Path, layer: int, head: int) -> list[Path]:
    return sorted((Path(run_dir) / schema.HEAD_VECTORS_DIR / f"layer={layer}" / f"head={head}").glob("part-*.parquet"))


def read_head(run_dir: Path, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids [n], vectors [n, D]) of one head, reading only that head's files."""
    files = head_files(run_dir, layer, head)
    if not files:
        raise RunDirError(f"{run_dir}: no head vectors for layer {layer} head {head}")
    table = pa.concat_tables(pq.read_table(f) for f in files)
    return table.column("image_id").to_numpy(), arrow_to_vectors(table.column("vector"))


class ChunkStore:
    """The per-chunk working area of a resumable stage under RUN_DIR/_work/<stage>/."""

    def __init__(self, run_dir: Path, stage: str):
        self.root = Path(run_dir) / WORK_DIR / stage

    def chunk_dir(self, chunk: int) -> Path:
        return self.root / f"chunk-{chunk:05d}"

    def is_done(self, chunk: int) -> bool:
        return (self.chunk_dir(chunk) / "DONE").is_file()

    def mark_done(self, chunk: int) -> None:
        write_bytes_atomic(self.chunk_dir(chunk) / "DONE", now().encode())

    def reset(self, chunk: int) -> None:
        shutil.rmtree(self.chunk_dir(chunk), ignore_errors=True)

    def done_chunks(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.name.split("-")[1]) for p in self.root.glob("chunk-*") if (p / "DONE").is_file())

    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        parent = self.root.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


# ------------------------------------------------------------------ stages


def stage_key(*parts: Any) -> str:
    """A short hash of everything a stage's output depends on."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_current(manifest: dict, stage: str, key: str) -> bool:
    info = manifest.get("stages", {}).get(stage, {})
    return bool(info.get("done")) and info.get("key") == key


def require_stage(run_dir: Path, stage: str, command: str) -> dict:
    """The run's manifest, or a RunDirError naming the command that makes ``stage``; sweeps orphaned temp files."""
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise RunDirError(f"{run_dir} is not a run folder (no {schema.MANIFEST}); make one with `clip-interpret run`")
    if not manifest.get("stages", {}).get(stage, {}).get("done"):
        raise RunDirError(f"{run_dir} has no finished {stage} stage yet; run `{command}` first")
    sweep_temp(run_dir)
    return manifest


def finish_stage(run_dir: Path, manifest: dict, stage: str, key: str, seconds: float, **info: Any) -> None:
    """Mark ``stage`` done with ``key``; later stages that depended on an older version are marked stale."""
    order = ["decompose", "textspan", "label", "score"]
    stages = manifest.setdefault("stages", {})
    stages[stage] = {"done": True, "key": key, "finished": now(), **info}
    for later in order[order.index(stage) + 1:] if stage in order else []:
        if later in stages and stages[later].get("after") != key:
            stages[later]["done"] = False
    manifest.setdefault("timings", {})[stage] = {"seconds": round(seconds, 2)}
    write_manifest(run_dir, manifest)
