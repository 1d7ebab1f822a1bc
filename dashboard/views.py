"""The DuckDB views over the runs found by ``dashboard.rundirs``: SQL generation and creation.

``create_views(con, discover_runs(data_dir))`` makes, in any DuckDB connection:

Main schema
    runs           one row per run: run, run_id, architecture, pretrained (the weights,
                   ``WeightsSource.describe()``), embed_dim, layers INTEGER[], heads,
                   image_count, stages VARCHAR[], path, manifest (JSON, the current form)
    run_problems   path, problem: runs skipped and tables that could not be read
    images, image_embeddings, head_vectors, texts, head_texts, head_spans,
    head_summary, head_labels, head_scores, model_scores
                   one UNION ALL over every run that has the table: a leading ``run``
                   VARCHAR, then the columns of ``precompute/schema.py`` (in model_scores
                   the run name replaces the ``run`` column the file carries).
                   ``head_vectors`` is (run, image_id, layer, head, vector), layer and
                   head read from the hive folders. A table no run has is still a view,
                   with the same columns and no rows.
    head_labels    the label stage's labels with the run's label corrections applied (as
                   every page shows them), plus stored_property, label_source, stale
    label_overrides
                   run, layer, head, property, author, note, time, line: every correction
                   of the run's label_overrides.csv, in file order (the latest per head wins)
    attributes     run, image_id, attribute, value: the ground truth of the run's probe
                   set (its folder's ``attributes.parquet``, as the toy world writes), one
                   row per image and attribute, values as text; empty for a probe set
                   without one.

Per-run schemas
    ``"<run>".images``, ``"<run>".head_vectors``, ... : the same views for one run
    (no ``run`` column, except model_scores's, set to the run name), every one
    present even when the run lacks the table. A run whose name DuckDB would confuse
    with a catalog or schema (``main``, ``memory``, ``temp``, another run's name up to
    case) gets no schema, only a problem line; it is still in the union views.

Vectors
    In a per-run schema every vector is ``FLOAT[d]`` with that run's width d, so
    ``array_cosine_similarity`` and ``array_inner_product`` work. The union views hold
    ``FLOAT[d]`` too when every run with vectors has the same d; when runs differ (512
    vs 768 vs a toy 64) they hold ``FLOAT[]`` lists: query one run's schema, or use
    ``list_cosine_similarity`` / ``list_inner_product``.

Files
    Views read explicit lists of the Parquet files discovery found (never a glob, so
    files still being written are never picked up), with every column cast to its
    schema type. ``_catalog.files`` (run, "table", layer, head, path) lists them too,
    so a query for one run, or one head, can read exactly its own files; it lists
    the files of a table whose footer DuckDB could not bind as well (that table's
    views are empty and a problem line says why).

View definitions cannot take parameters, so file paths and run names (folder names,
never text a user typed) are quoted into them with ``literal`` and ``ident``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dashboard.rundirs import ATTRIBUTES_VIEW, CORRECTIONS_VIEW, VECTOR_COLUMNS, Discovery, Run, get
from precompute import overrides, schema, store, weights
from precompute.errors import InterpretError

# The probe set's ground truth, long: one row per (image, attribute); the file's columns vary by probe set.
ATTRIBUTES = pa.schema([("image_id", pa.int64()), ("attribute", pa.string()), ("value", pa.string())])
ATTRIBUTE_SKIP = ("path", "image_id")  # columns of attributes.parquet that are keys, not attributes

# The labels as every page shows them: the label stage's, with the run's corrections applied at read time
# (precompute.overrides.apply_to_labels adds these three columns); and the corrections' history itself.
HEAD_LABELS_VIEW = schema.HEAD_LABELS_FILE.removesuffix(".parquet")
CORRECTED_LABELS = pa.schema(list(schema.HEAD_LABELS) + [
    pa.field("stored_property", pa.string()), pa.field("label_source", pa.string()), pa.field("stale", pa.bool_())])
CORRECTIONS = pa.schema([("layer", pa.int32()), ("head", pa.int32()), ("property", pa.string()),
                         ("author", pa.string()), ("note", pa.string()), ("time", pa.string()), ("line", pa.int64())])

# View name -> Arrow schema, in the order views are created and listed.
VIEW_SCHEMAS: dict[str, pa.Schema] = {
    **{name.removesuffix(".parquet"): s for name, s in schema.RUN_TABLES.items()},
    HEAD_LABELS_VIEW: CORRECTED_LABELS,
    schema.HEAD_VECTORS_DIR: schema.HEAD_VECTORS,
    ATTRIBUTES_VIEW: ATTRIBUTES,
    CORRECTIONS_VIEW: CORRECTIONS,
}

_DUCK_TYPES = {
    pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.binary(): "BLOB", pa.bool_(): "BOOLEAN",
    pa.list_(pa.float64()): "DOUBLE[]", pa.list_(pa.list_(pa.float64())): "DOUBLE[][]",  # head_spans: mean, basis
}

CATALOG_DDL = """
CREATE SCHEMA _catalog;
CREATE TABLE _catalog.runs (
    run VARCHAR, run_id VARCHAR, architecture VARCHAR, pretrained VARCHAR, embed_dim INTEGER,
    layers INTEGER[], heads INTEGER, image_count BIGINT, stages VARCHAR[], path VARCHAR, manifest VARCHAR
);
CREATE TABLE _catalog.problems (path VARCHAR, problem VARCHAR);
CREATE TABLE _catalog.files (run VARCHAR, "table" VARCHAR, layer INTEGER, head INTEGER, path VARCHAR);
CREATE VIEW runs AS SELECT * FROM _catalog.runs ORDER BY run;
CREATE VIEW run_problems AS SELECT * FROM _catalog.problems;
"""
INSERT_RUN_SQL = "INSERT INTO _catalog.runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_PROBLEM_SQL = "INSERT INTO _catalog.problems VALUES (?, ?)"
INSERT_FILE_SQL = "INSERT INTO _catalog.files VALUES (?, ?, ?, ?, ?)"
TAKEN_NAMES_SQL = "SELECT database_name FROM duckdb_databases() UNION SELECT schema_name FROM duckdb_schemas()"
HIVE_OPTIONS = "hive_partitioning = true, hive_types = {'layer': INTEGER, 'head': INTEGER}"


def ident(name: str) -> str:
    """A quoted SQL identifier; run names are folder names, and views cannot take parameters."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal, for file paths and run names inside view definitions."""
    return "'" + text.replace("'", "''") + "'"


def duck_type(arrow_type: pa.DataType, dim: int | None) -> str:
    if arrow_type == schema.VECTOR:
        return f"FLOAT[{dim}]" if dim else "FLOAT[]"
    if arrow_type not in _DUCK_TYPES:
        raise TypeError(f"no DuckDB type for Arrow {arrow_type}; known: {sorted(map(str, _DUCK_TYPES))}")
    return _DUCK_TYPES[arrow_type]


def vector_columns(table_schema: pa.Schema) -> list[str]:
    return [f.name for f in table_schema if f.type == schema.VECTOR]


def run_view_sql(run: Run, view: str) -> str:
    """SELECT of one run's table with every column cast to its schema type (``run`` = the run name)."""
    table_schema = VIEW_SCHEMAS[view]
    if view not in run.tables:
        return empty_view_sql(table_schema, run.dim)
    if view == ATTRIBUTES_VIEW:
        return attributes_view_sql(run)
    columns = ", ".join(
        f"{literal(run.name)} AS run" if f.name == "run"
        else f"CAST({ident(f.name)} AS {duck_type(f.type, run.dim)}) AS {ident(f.name)}"
        for f in table_schema
    )
    files = "[" + ", ".join(literal(p) for p in run.tables[view]) + "]"
    options = HIVE_OPTIONS if view == schema.HEAD_VECTORS_DIR else "hive_partitioning = false"
    return f"SELECT {columns} FROM read_parquet({files}, {options})"


def attributes_view_sql(run: Run) -> str:
    """The probe set's attributes.parquet as (image_id, attribute, value), joined to the run's images on path.

    Every column but the keys becomes an attribute (the toy world's: shape, color, ..., caption); values as text.
    """
    path = run.tables[ATTRIBUTES_VIEW][0]
    names = [n for n in pq.read_schema(path).names if n not in ATTRIBUTE_SKIP]
    if not names:
        return empty_view_sql(ATTRIBUTES, run.dim)
    cols = ", ".join(f"CAST({ident(n)} AS VARCHAR) AS {ident(n)}" for n in names)
    images = "[" + ", ".join(literal(p) for p in run.tables["images"]) + "]"
    unpivot = (f"UNPIVOT (SELECT CAST(path AS VARCHAR) AS path, {cols} FROM read_parquet([{literal(path)}])) "
               f"ON {', '.join(ident(n) for n in names)} INTO NAME attribute VALUE value")
    return (f"SELECT CAST(i.image_id AS BIGINT) AS image_id, CAST(a.attribute AS VARCHAR) AS attribute, "
            f"CAST(a.value AS VARCHAR) AS value FROM ({unpivot}) AS a "
            f"JOIN read_parquet({images}, hive_partitioning = false) AS i ON i.path = a.path")


def empty_view_sql(table_schema: pa.Schema, dim: int | None, with_run: bool = False) -> str:
    columns = [f"CAST(NULL AS {duck_type(f.type, dim)}) AS {ident(f.name)}" for f in table_schema if f.name != "run"]
    if with_run or "run" in table_schema.names:
        columns.insert(0, "CAST(NULL AS VARCHAR) AS run")
    return f"SELECT {', '.join(columns)} LIMIT 0"


def union_view_sql(view: str, selects: dict[str, str], dim: int | None) -> str:
    """UNION ALL of one table's per-run SELECTs (run name -> SELECT) with a leading ``run``.

    Vectors stay FLOAT[dim] when every run shares ``dim``, else become FLOAT[] (``dim`` None).
    """
    table_schema = VIEW_SCHEMAS[view]
    if not selects:
        return empty_view_sql(table_schema, dim, with_run=True)
    star = "*" + (" EXCLUDE (run)" if "run" in table_schema.names else "")
    if dim is None and vector_columns(table_schema):
        star += " REPLACE (" + ", ".join(f"CAST({ident(c)} AS FLOAT[]) AS {ident(c)}"
                                         for c in vector_columns(table_schema)) + ")"
    return " UNION ALL ".join(f"SELECT {literal(name)} AS run, {star} FROM ({select})"
                              for name, select in selects.items())


def shared_dim(runs: tuple[Run, ...]) -> int | None:
    """The vector width every run with vectors shares, or None when they differ (or none is known)."""
    dims = {r.dim for r in runs if any(t in r.tables for t in VECTOR_COLUMNS)}
    return dims.pop() if len(dims) == 1 else None


def create_views(con: duckdb.DuckDBPyConnection, found: Discovery) -> None:
    """Create the catalog, the per-run schemas and the union views of the module docstring."""
    con.execute(CATALOG_DDL)
    problems = list(found.problems)
    selects: dict[str, dict[str, str]] = {view: {} for view in VIEW_SCHEMAS}  # view -> run -> SELECT
    for run in found.runs:
        readable = readable_selects(con, run, problems)
        for view, select in readable.items():
            selects[view][run.name] = select
        _create_run_schema(con, run, readable, problems)
    dim = shared_dim(found.runs)
    for view, by_run in selects.items():
        con.execute(f"CREATE VIEW {ident(view)} AS {union_view_sql(view, by_run, dim)}")
    if found.runs:
        con.executemany(INSERT_RUN_SQL, [run_row(r) for r in found.runs])
    if problems:
        con.executemany(INSERT_PROBLEM_SQL, problems)
    # every file found, readable or not: a query for an unreadable one then fails naming it, where an
    # unlisted file would read as an empty table ("has no images", "no scores")
    files = [file_row(run, view, path) for run in found.runs for view, paths in run.tables.items() for path in paths]
    if files:
        con.executemany(INSERT_FILE_SQL, files)
    con.execute(f"CREATE VIEW {ident(schema.HEAD_MATCHES_VIEW)} AS {matches_view_sql(con, found)}")


def matches_view_sql(con: duckdb.DuckDBPyConnection, found: Discovery) -> str:
    """``head_matches``: every pair of runs `clip-interpret compare` matched (HEAD_MATCHES), across the data
    folder rather than per run; empty, with the same columns, when there is none."""
    columns = ", ".join(f"CAST({ident(f.name)} AS {duck_type(f.type, None)}) AS {ident(f.name)}"
                        for f in schema.HEAD_MATCHES)
    if found.matches:
        select = (f"SELECT {columns} FROM read_parquet([{', '.join(literal(p) for p in found.matches)}], "
                  "hive_partitioning = false)")
        try:
            con.execute(f"DESCRIBE {select}").fetchall()
            return select
        except duckdb.Error as e:
            con.execute(INSERT_PROBLEM_SQL, (os.path.join(found.data_dir, schema.COMPARE_DIR),
                                             f"cannot read head_matches: {str(e).splitlines()[0]}"))
    return "SELECT " + ", ".join(f"CAST(NULL AS {duck_type(f.type, None)}) AS {ident(f.name)}"
                                 for f in schema.HEAD_MATCHES) + " LIMIT 0"


def file_row(run: Run, view: str, path: str) -> tuple:
    """(run, table, layer, head, path); layer and head from the hive folders of head vector files."""
    where = store.head_partition(path) if view == schema.HEAD_VECTORS_DIR else None
    layer, head = where or (None, None)
    return run.name, view, layer, head, path


def computed_select(con: duckdb.DuckDBPyConnection, run: Run, view: str) -> str:
    """A SELECT over an Arrow table computed here and registered in ``con``: the run's labels with its
    corrections applied (``overrides.apply_to_labels``, the function every page reads labels through), or the
    corrections' history. It is copied into an in-memory table of ``_catalog``, which the locked-down SQL sandbox
    reads too (no file access needed)."""
    corrections = os.path.join(run.path, schema.LABEL_OVERRIDES_FILE)
    if view == HEAD_LABELS_VIEW:
        stored = pq.read_table(run.tables[view][0]).cast(schema.HEAD_LABELS)
        table = overrides.apply_to_labels(stored, corrections).cast(CORRECTED_LABELS)
    else:
        rows = [vars(c) for c in overrides.read_history(corrections)]
        table = pa.Table.from_pylist(rows, schema=CORRECTIONS) if rows else CORRECTIONS.empty_table()
    name = f"_{view}_{abs(hash(run.path)):x}"
    con.register("_incoming", table)  # a registration is per connection: copy it into a table every cursor sees
    con.execute(f"CREATE OR REPLACE TABLE _catalog.{ident(name)} AS SELECT * FROM _incoming")
    con.unregister("_incoming")
    return f"SELECT * FROM _catalog.{ident(name)}"


def readable_selects(con: duckdb.DuckDBPyConnection, run: Run, problems: list) -> dict[str, str]:
    """view -> SELECT for each table the run has whose files DuckDB can bind; the others become problems."""
    selects = {}
    for view in run.tables:
        if view in (HEAD_LABELS_VIEW, CORRECTIONS_VIEW):
            try:
                selects[view] = computed_select(con, run, view)
            except (OSError, pa.ArrowException, InterpretError) as e:
                problems.append((os.path.join(run.path, view), f"cannot read {view}: {str(e).splitlines()[0]}"))
            continue
        select = run_view_sql(run, view)
        try:
            con.execute(f"DESCRIBE {select}").fetchall()  # binds: reads the first file's footer, no data
        except duckdb.Error as e:
            problems.append((os.path.join(run.path, view), f"cannot read {view}: {str(e).splitlines()[0]}"))
            continue
        selects[view] = select
    return selects


def _create_run_schema(con: duckdb.DuckDBPyConnection, run: Run, selects: dict[str, str], problems: list) -> None:
    """Schema ``"run"`` with every view, empty for the tables it lacks; a name DuckDB would confuse is a problem."""
    taken = {name.lower() for (name,) in con.sql(TAKEN_NAMES_SQL).fetchall()}
    if run.name.lower() in taken:
        problems.append((run.path, f"no per-run schema {ident(run.name)}: DuckDB names are case-insensitive and "
                                   "that name is taken by a DuckDB catalog or schema or another run; the run is "
                                   "still in the union views"))
        return
    con.execute(f"CREATE SCHEMA {ident(run.name)}")
    for view, table_schema in VIEW_SCHEMAS.items():
        select = selects.get(view) or empty_view_sql(table_schema, run.dim)
        con.execute(f"CREATE VIEW {ident(run.name)}.{ident(view)} AS {select}")


def run_row(run: Run) -> tuple:
    m = run.manifest
    layers = get(m, "layers", kind=list)
    return (
        run.name, get(m, "run_id", kind=str), get(m, "model", "architecture", kind=str),
        weights.describe_record(get(m, "model", "weights", kind=Mapping)), run.dim,
        [v for v in layers if isinstance(v, int)] if layers is not None else None,
        get(m, "heads", kind=int), get(m, "images", "count", kind=int), store.stages_done(m), run.path,
        json.dumps(m, default=str),
    )
