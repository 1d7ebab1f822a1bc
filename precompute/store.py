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
import hashlib
import json
import os
import re
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
from precompute.weights import file_sha256, migrate_model_record

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


def file_record(path: Path, rows: int | None = None) -> dict:
    """What the manifest's ``files`` keeps of a table: its size, row count and sha256 (precompute/verify.py)."""
    path = Path(path)
    digest = file_sha256(path)
    if rows is None:
        rows = pq.read_metadata(path).num_rows
    return {"bytes": path.stat().st_size, "rows": rows, "sha256": digest}


def relpath(run_dir: Path, path: Path) -> str:
    """``path`` relative to the run folder, '/' separated: the key of the manifest's ``files``."""
    return Path(path).relative_to(run_dir).as_posix()


def write_table_atomic(path: Path, table: pa.Table, byte_stream_split: list[str] | None = None,
                       row_group_size: int | None = None) -> dict:
    """Write Parquet atomically and return its ``file_record``; float vector columns use BYTE_STREAM_SPLIT,
    which zstd compresses far better.

    Small row groups (``row_group_size``) let readers skip most of a big table when they look up a few rows.
    """
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        pq.write_table(
            table, tmp, use_dictionary=False if byte_stream_split else True,
            use_byte_stream_split=byte_stream_split or False, row_group_size=row_group_size, **PARQUET_OPTIONS,
        )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # durable before it replaces the old file, as write_bytes_atomic is
        record = file_record(Path(tmp), table.num_rows)  # read back from the page cache: what is on disk
        os.replace(tmp, path)
        return record
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vectors_to_arrow(vectors: np.ndarray) -> pa.ListArray:
    """[n, d] float32 -> list<float32> without a Python loop."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """A list or fixed-size-list column of n float vectors -> float32 [n, d], copying at most once."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # [n * d]
    d = dim if dim is not None else (len(values) // n if n else 0)
    if len(values) != n * d:
        raise ValueError(f"{n} vectors do not share one width d={d}: {len(values)} values in all")
    return values.reshape(n, d)  # [n, d]


def parse_manifest(path: Path) -> dict:
    """The manifest at ``path`` in the current form, or a RunDirError saying what is wrong with it (no path).

    Migrated on read, never rewritten here: a manifest written before the weights record has its
    ``model`` turned into the record (``weights.migrate_model_record``); the next stage that finishes
    writes the current form.
    """
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"cannot read the manifest ({e})") from e
    except json.JSONDecodeError as e:
        raise RunDirError(f"the manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise RunDirError(f"the manifest is a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        found = "no schema version" if version is None else f"schema version {version!r}"
        raise RunDirError(f"{found}; this version reads version {schema.SCHEMA_VERSION}, re-run into a new folder")
    if isinstance(manifest.get("model"), dict):
        manifest["model"] = migrate_model_record(manifest["model"])  # the weights as a record (weights.py)
    return manifest


def read_manifest(run_dir: Path) -> dict | None:
    """The run's manifest; None when there is none; a RunDirError naming the file when it cannot be used."""
    path = Path(run_dir) / schema.MANIFEST
    if not path.is_file():
        return None
    try:
        return parse_manifest(path)
    except RunDirError as e:
        raise RunDirError(f"{path}: {e}; move the folder away or pass another --out") from e


def new_manifest(**fields: Any) -> dict:
    return {"schema_version": schema.SCHEMA_VERSION, "run_id": uuid.uuid4().hex, "created": now(),
            "updated": now(), "stages": {}, **fields}


def write_manifest(run_dir: Path, manifest: dict) -> None:
    manifest["updated"] = now()
    write_json_atomic(Path(run_dir) / schema.MANIFEST, manifest)


def probe_attributes_file(manifest: dict) -> Path | None:
    """The probe set's ground truth (``<images root>/attributes.parquet``) when the run's probe folder has one."""
    root = (manifest.get("images") or {}).get("root") if isinstance(manifest, dict) else None
    candidate = Path(root) / schema.ATTRIBUTES_FILE if root else None
    return candidate if candidate is not None and candidate.is_file() else None


def head_dir(run_dir: Path, layer: int, head: int) -> Path:
    """head_vectors/layer=L/head=H/: one head's parts (hive partitioning: layer and head live in the path)."""
    return Path(run_dir) / schema.HEAD_VECTORS_DIR / f"layer={layer}" / f"head={head}"


def head_part_path(run_dir: Path, layer: int, head: int, chunk: int) -> Path:
    return head_dir(run_dir, layer, head) / f"part-{chunk:05d}.parquet"


_PART = re.compile(r"part-\d+\.parquet")
_PARTITION = re.compile(r"layer=(\d+)/head=(\d+)/part-\d+\.parquet$")


def head_files(run_dir: Path, layer: int, head: int) -> list[Path]:
    """One head's finished parts, in chunk order (never a hidden temp file of a write in progress)."""
    folder = head_dir(run_dir, layer, head)
    return sorted(p for p in folder.glob("part-*.parquet") if _PART.fullmatch(p.name)) if folder.is_dir() else []


def all_head_files(run_dir: Path) -> list[Path]:
    """Every finished head part of a run, by layer, head and chunk."""
    found = []
    for path in (Path(run_dir) / schema.HEAD_VECTORS_DIR).glob("layer=*/head=*/part-*.parquet"):
        where = head_partition(path)
        if where is not None:
            found.append((where, path.name, path))
    return [path for _, _, path in sorted(found)]


def head_partition(path: str | os.PathLike) -> tuple[int, int] | None:
    """(layer, head) of a head part from its folders; None for any other path."""
    match = _PARTITION.search(Path(path).as_posix())
    return (int(match[1]), int(match[2])) if match else None


def read_head(run_dir: Path, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids [n], vectors [n, D]) of one head, reading only that head's files."""
    files = head_files(run_dir, layer, head)
    if not files:
        raise RunDirError(f"{run_dir}: no head vectors for layer {layer} head {head}")
    table = pa.concat_tables(pq.read_table(f) for f in files)
    return table.column("image_id").to_numpy(), arrow_to_vectors(table.column("vector"))


def chunk_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of ``size`` images out of ``n``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


class ChunkStore:
    """The per-chunk working area of a resumable stage under RUN_DIR/_work/<stage>/."""

    FILES = "files.json"  # in a chunk's folder: the file_record of each table the chunk wrote into the run

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

    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        parent = self.root.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


# ------------------------------------------------------------------ stages


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_key(*parts: Any) -> str:
    """A short hash of everything a stage's output depends on."""
    return _digest(list(parts))


def plan_key(plan: dict) -> str:
    """The decompose stage's key: a hash of its plan itself (the plan is what its output depends on)."""
    return _digest(plan)


def stages_done(manifest: dict) -> list[str]:
    """The stages the manifest marks done, in pipeline order."""
    stages = manifest.get("stages")
    if not isinstance(stages, dict):
        return []
    return [s for s in schema.STAGES if isinstance(stages.get(s), dict) and stages[s].get("done") is True]


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


def stage_files(run_dir: Path, stage: str) -> dict[str, dict]:
    """The ``file_record`` of each table ``stage`` writes that is in the run folder (head parts excluded)."""
    return {name: file_record(Path(run_dir) / name) for name in schema.STAGE_FILES[stage]
            if name != schema.HEAD_VECTORS_DIR and (Path(run_dir) / name).is_file()}


def reopen_stage(run_dir: Path, manifest: dict, stage: str, damaged: list[str] = ()) -> None:
    """Mark ``stage`` and every later stage not done, delete the ``damaged`` files, write the manifest.

    A repair is a resume: the stage then runs as if it had been killed, and ``run`` redoes the later ones.
    """
    stages = manifest.setdefault("stages", {})
    for s in schema.STAGES[schema.STAGES.index(stage):]:
        if isinstance(stages.get(s), dict):
            stages[s]["done"] = False
    for rel in damaged:
        if rel != schema.MANIFEST and (Path(run_dir) / rel).is_file():
            (Path(run_dir) / rel).unlink()
    write_manifest(run_dir, manifest)


def finish_stage(run_dir: Path, manifest: dict, stage: str, key: str, seconds: float,
                 timing: dict | None = None, files: dict[str, dict] | None = None, **info: Any) -> None:
    """Mark ``stage`` done with ``key`` and write the manifest; later stages computed from another key go stale.

    ``files`` (relative path -> ``file_record``; default ``stage_files``, read back from the folder) replaces the
    stage's entries in the manifest's ``files``. ``timing`` adds to the stage's ``timings`` entry (``seconds`` is
    always there); ``info`` to its record.
    """
    records = manifest.setdefault("files", {})
    for rel in [r for r in records if schema.stage_of(r) == stage]:
        del records[rel]
    records.update(stage_files(run_dir, stage) if files is None else files)
    manifest["files"] = dict(sorted(records.items()))
    stages = manifest.setdefault("stages", {})
    stages[stage] = {"done": True, "key": key, "finished": now(), "recorded": True, **info}
    for later in schema.STAGES[schema.STAGES.index(stage) + 1:]:
        if later in stages and stages[later].get("after") != key:
            stages[later]["done"] = False
    manifest.setdefault("timings", {})[stage] = {"seconds": round(seconds, 2), **(timing or {})}
    write_manifest(run_dir, manifest)
