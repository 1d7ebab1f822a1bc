"""Finding runs on disk: which folders are runs, what their manifests say, which files to read.

A run is a folder holding ``manifest.json`` at most ``MAX_DEPTH`` levels under the
data directory. Hidden folders and folders named ``_*`` are never searched, and
neither are a run's own subfolders. The run's name is its folder path relative to
the data directory, '/' separated. Only finished files are listed: hidden files
and ``*.tmp`` files (``store.py`` writes ``.<name>.<random>.tmp`` then renames) and
anything under ``_work/`` or ``_chunks/`` are work in progress. A manifest that
cannot be read, is not a JSON object, or has another schema version skips its run
and becomes a problem line; nothing here raises for a bad run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from precompute import schema, store
from precompute.errors import InputError, RunDirError

MAX_DEPTH = 3
CORRECTIONS_VIEW = "label_overrides"  # the run's label_overrides.csv: the history of label corrections
ATTRIBUTES_VIEW = "attributes"  # the probe set's attributes.parquet, read long: (image_id, attribute, value)
# view name -> its first vector column, for the tables that have one (the run's width d is read from it)
VECTOR_COLUMNS = {
    name.removesuffix(".parquet"): next(f.name for f in table if f.type == schema.VECTOR)
    for name, table in {**schema.TABLES, schema.HEAD_VECTORS_DIR: schema.HEAD_VECTORS}.items()
    if any(f.type == schema.VECTOR for f in table)
}


@dataclass(frozen=True)
class Run:
    """One run folder as found on disk: what the views read."""

    name: str
    path: str  # absolute
    manifest: Mapping
    dim: int | None  # vector width d; None when no vector table tells it
    tables: Mapping[str, tuple[str, ...]]  # view name -> absolute Parquet files
    stamp: tuple[int, int]  # manifest (mtime_ns, size): a rewritten manifest is a changed run
    corrections: tuple[int, int] | None = None  # label_overrides.csv (mtime_ns, size): a new correction changes
    # what the label views show, so it changes the Discovery (the SQL sandbox is rebuilt), not the run's stamp
    # (the head matrices cached under it stay valid)


@dataclass(frozen=True)
class Discovery:
    """Every run under a data directory, and what could not be read."""

    data_dir: str
    runs: tuple[Run, ...]
    problems: tuple[tuple[str, str], ...] = field(default=())  # (path, message)
    skipped: Mapping[str, str] = field(default_factory=dict)  # name of a folder with an unusable manifest -> why
    matches: tuple[str, ...] = ()  # head_matches files of `clip-interpret compare` under <data_dir>/_compare

    def files(self) -> list[str]:
        """Every file a view reads (Parquet, and the label corrections' CSV)."""
        return [f for run in self.runs for files in run.tables.values() for f in files] + list(self.matches)


def discover_runs(data_dir: str | os.PathLike) -> Discovery:
    """Find the runs under ``data_dir``; unreadable manifests become problems, not errors."""
    root = os.path.abspath(data_dir)
    if not os.path.isdir(root):
        raise InputError(f"data folder {root} does not exist; pass the folder the precompute wrote runs into")
    runs, problems, skipped = [], [], {}
    for folder in _run_dirs(root, MAX_DEPTH):
        run, run_problems = _load_run(root, folder)
        problems += run_problems
        if run is not None:
            runs.append(run)
        else:
            skipped[_run_name(root, folder)] = run_problems[0][1]
    compared = os.path.join(root, schema.COMPARE_DIR)
    matches = tuple(sorted(e.path for e in os.scandir(compared) if e.name.startswith("head_matches-")
                           and e.name.endswith(".parquet") and e.is_file())) if os.path.isdir(compared) else ()
    return Discovery(root, tuple(runs), tuple(problems), skipped, matches)


def _skipped(name: str) -> bool:
    return name.startswith((".", "_"))


def _run_dirs(folder: str, depth: int) -> Iterator[str]:
    """Folders holding a manifest, depth-first in name order; a run's subfolders are not searched."""
    if os.path.isfile(os.path.join(folder, schema.MANIFEST)):
        yield folder
        return
    if depth == 0:
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not _skipped(entry.name):
            yield from _run_dirs(entry.path, depth - 1)


def _run_name(root: str, folder: str) -> str:
    rel = os.path.relpath(folder, root)
    return os.path.basename(root) if rel == "." else rel.replace(os.sep, "/")


def _load_run(root: str, folder: str) -> tuple[Run | None, list[tuple[str, str]]]:
    manifest_path = os.path.join(folder, schema.MANIFEST)
    try:
        manifest = store.parse_manifest(manifest_path)
        st = os.stat(manifest_path)
    except RunDirError as e:
        return None, [(manifest_path, f"{e}; run skipped")]
    except OSError as e:  # removed since it was read
        return None, [(manifest_path, f"cannot read the manifest ({e}); run skipped")]
    tables = _table_files(folder)
    attributes = store.probe_attributes_file(manifest)  # ground truth of the probe set, outside the run folder
    if attributes is not None and "images" in tables:
        tables[ATTRIBUTES_VIEW] = (str(attributes),)
    dim, problems = _run_dim(manifest_path, manifest, tables)
    run = Run(_run_name(root, folder), folder, manifest, dim, tables, (st.st_mtime_ns, st.st_size),
              _file_stamp(tables.get(CORRECTIONS_VIEW)))
    return run, problems


def _file_stamp(files: tuple[str, ...] | None) -> tuple[int, int] | None:
    try:
        st = os.stat(files[0]) if files else None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size) if st else None


def _table_files(folder: str) -> dict[str, tuple[str, ...]]:
    tables = {}
    for file_name in schema.RUN_TABLES:  # the opt-in ablate stage's tables too
        path = os.path.join(folder, file_name)
        if os.path.isfile(path):
            tables[file_name.removesuffix(".parquet")] = (path,)
    corrections = os.path.join(folder, schema.LABEL_OVERRIDES_FILE)
    if os.path.isfile(corrections):  # read through precompute.overrides, not as Parquet; listed so a change shows
        tables[CORRECTIONS_VIEW] = (corrections,)
    heads = tuple(str(p) for p in store.all_head_files(folder))
    if heads:
        tables[schema.HEAD_VECTORS_DIR] = heads
    return tables


def get(manifest: Mapping, *keys: str, kind: type = object):
    """manifest[k1][k2]... when present and of ``kind``, else None."""
    value = manifest
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) else None


def _first_vector_width(files: tuple[str, ...], column: str) -> int | None:
    """d from the Parquet footer alone: leaf values / rows of the first row group (vectors are never null)."""
    try:
        meta = pq.ParquetFile(files[0]).metadata
        leaf = next(i for i in range(meta.num_columns)
                    if meta.schema.column(i).path.split(".")[0] == column)
        group = meta.row_group(0) if meta.num_row_groups else None
    except (OSError, StopIteration, pa.ArrowException):
        return None
    if group is None or group.num_rows == 0 or group.column(leaf).num_values % group.num_rows:
        return None
    return group.column(leaf).num_values // group.num_rows


def _run_dim(manifest_path: str, manifest: Mapping, tables: Mapping) -> tuple[int | None, list]:
    """The run's vector width: the data's when a vector file is readable, else the manifest's embed_dim."""
    declared = get(manifest, "model", "embed_dim", kind=int)
    found = next((_first_vector_width(tables[t], c) for t, c in VECTOR_COLUMNS.items() if t in tables), None)
    if declared is not None and found is not None and declared != found:
        return found, [(manifest_path, f"manifest says embed_dim {declared} but the vectors have {found}; "
                                       f"using {found}")]
    return found or declared, []
