"""Ad hoc read-only SQL for the SQL page, run in a locked-down DuckDB of its own.

``run_user_sql(sql, data_dir)`` returns an Arrow table or raises ``QueryError``
with a message for the user. Safety on a shared server comes in three layers:

1. The statement check. ``extract_statements`` must find exactly one statement,
   and DuckDB must classify it as SELECT: that covers SELECT, WITH ... SELECT,
   FROM-first queries, VALUES, DESCRIBE, SHOW and SUMMARIZE. Everything else is
   refused before it runs (COPY, ATTACH/DETACH, INSTALL/LOAD, SET/RESET/USE,
   PRAGMA, CALL, CREATE/ALTER/DROP, INSERT/UPDATE/DELETE, EXPORT/IMPORT,
   transactions, and EXPLAIN too, because EXPLAIN ANALYZE runs what it explains).
2. The sandbox database: a separate in-memory DuckDB per data directory, never
   the app's connection, holding the views of ``dashboard.views``. Once they are
   built: ``allowed_paths`` = exactly the Parquet files the views read (no
   directories, so no listing, no manifests, no other file), then
   ``enable_external_access = false`` (no other file, no http(s), no ATTACH of a
   file, no COPY, no Python replacement scans, no extension install or load),
   then ``lock_configuration = true`` so no SET can undo any of it. Set at
   start: no extension autoload/autoinstall, no community or unsigned extensions,
   extension repositories forbidden, no persistent secrets, no temp directory
   (no spilling to disk), ``SANDBOX_MEMORY_LIMIT``, ``SANDBOX_THREADS``.
3. Limits: a watchdog interrupts the query after ``timeout_s``; the result is
   streamed in batches and the stream is closed after ``row_limit`` rows, so
   DuckDB stops producing rows instead of materialising them all. The user's
   text is run exactly as written: it is never pasted into other SQL (no
   ``SELECT * FROM (<text>) LIMIT n`` wrapping, which a comment could break).

The sandbox is cached per data directory and rebuilt when the runs found on disk
change (a manifest rewritten, a run or a Parquet file added or removed): a
``memcache.VersionedCache``, not ``st.cache_resource``, because this module serves
Python callers and tests without Streamlit.

A result's schema metadata says whether the row limit cut it:
``{b"truncated": b"true" | b"false", b"row_limit": b"<n>"}``; see ``is_truncated``.
"""

from __future__ import annotations

import os
import threading

import duckdb
import pyarrow as pa

from dashboard.memcache import VersionedCache
from dashboard.rundirs import Discovery, discover_runs
from dashboard.views import VIEW_SCHEMAS, create_views, literal
from precompute.errors import InputError, QueryError

SANDBOX_MEMORY_LIMIT = "2GB"
SANDBOX_THREADS = 1
SANDBOX_CONFIG = {
    "threads": SANDBOX_THREADS,
    "memory_limit": SANDBOX_MEMORY_LIMIT,
    "temp_directory": "",
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_extension_repositories": "forbidden",
    "allow_persistent_secrets": False,
    "python_enable_replacements": False,
}
FETCH_BATCH_ROWS = 2048
LOCKDOWN_SQL = ("SET enable_external_access = false", "SET lock_configuration = true")

ALLOWED = "one read-only query: SELECT, WITH ... SELECT, FROM ..., VALUES, DESCRIBE, SHOW or SUMMARIZE"
VIEWS_HINT = (
    "Views: runs, run_problems, " + ", ".join(VIEW_SCHEMAS)
    + '; one schema per run with the same views, e.g. "<run>".head_vectors (SELECT run FROM runs lists them).'
)
_STATEMENT_NAMES = {"LOAD": "INSTALL/LOAD", "SET": "SET/RESET/USE", "CALL": "CALL/CHECKPOINT",
                    "MULTI": "PIVOT (a multi-statement query)", "TRANSACTION": "BEGIN/COMMIT/ROLLBACK"}

_SANDBOXES = VersionedCache()  # data_dir -> the sandbox over the runs found there (the version)


def run_user_sql(sql: str, data_dir: str | os.PathLike, *, row_limit: int = 10_000,
                 timeout_s: float = 10.0) -> pa.Table:
    """Run one read-only query over the runs under ``data_dir``; QueryError says why not.

    At most ``row_limit`` rows come back; the schema metadata says whether more were cut.
    """
    if row_limit < 1 or timeout_s <= 0:
        raise ValueError(f"row_limit must be >= 1 and timeout_s > 0, got {row_limit} and {timeout_s}")
    cur = sandbox(data_dir).cursor()  # one cursor per query: sessions run in threads
    try:
        check_statement(cur, sql)
        return _execute(cur, sql, row_limit, timeout_s)
    finally:
        cur.close()


def is_truncated(table: pa.Table) -> bool:
    """Whether ``run_user_sql`` cut this result at its row limit."""
    return (table.schema.metadata or {}).get(b"truncated") == b"true"


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise QueryError unless ``sql`` is exactly one statement that DuckDB classifies as SELECT."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"{duck_message(e)}\n{VIEWS_HINT}") from None
    if not statements:
        raise QueryError(f"the query is empty; write {ALLOWED}")
    if len(statements) > 1:
        kinds = ", ".join(_statement_name(s.type) for s in statements)
        raise QueryError(f"refused {len(statements)} statements ({kinds}): run {ALLOWED}, without ';' between")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"refused {_statement_name(kind)}: this page runs {ALLOWED}")


def _statement_name(kind: duckdb.StatementType) -> str:
    return _STATEMENT_NAMES.get(kind.name, kind.name)


def duck_message(error: Exception) -> str:
    """DuckDB's own message, without the Python side."""
    return str(error).strip()


def sandbox(data_dir: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """The locked-down connection for ``data_dir``, rebuilt when its runs changed on disk."""
    try:
        found = discover_runs(data_dir)
    except InputError as e:
        raise QueryError(str(e)) from None
    return _SANDBOXES.get(found.data_dir, found, lambda: open_sandbox(found))


def open_sandbox(found: Discovery) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB with the views over ``found``, then locked (module docstring, layer 2)."""
    con = duckdb.connect(config=SANDBOX_CONFIG)
    create_views(con, found)
    con.execute("SET allowed_paths = [" + ", ".join(literal(f) for f in found.files()) + "]")
    for statement in LOCKDOWN_SQL:
        con.execute(statement)
    return con


def _watchdog(cur: duckdb.DuckDBPyConnection, timeout_s: float, done: threading.Event,
              timed_out: threading.Event) -> None:
    """Interrupt ``cur`` after ``timeout_s``, and again every 0.1 s until the query has stopped."""
    if done.wait(timeout_s):
        return
    timed_out.set()
    while True:
        cur.interrupt()
        if done.wait(0.1):
            return


def _first_rows(relation: duckdb.DuckDBPyRelation | None, n: int) -> pa.Table:
    """Stream the query's result and stop after ``n`` rows; the rest is never produced."""
    if relation is None:  # a statement without a result; SELECTs always have one
        return pa.table({})
    reader = relation.to_arrow_reader(min(n, FETCH_BATCH_ROWS))
    schema, batches, rows = reader.schema, [], 0
    try:
        while rows < n:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            batches.append(batch)
            rows += batch.num_rows
    finally:
        reader.close()
    return pa.Table.from_batches(batches, schema=schema).slice(0, n)


def _execute(cur: duckdb.DuckDBPyConnection, sql: str, row_limit: int, timeout_s: float) -> pa.Table:
    """Run the checked query on ``cur`` under the watchdog; at most ``row_limit`` rows, marked if cut."""
    done, timed_out = threading.Event(), threading.Event()
    watchdog = threading.Thread(target=_watchdog, args=(cur, timeout_s, done, timed_out), daemon=True)
    watchdog.start()
    try:
        table = _first_rows(cur.sql(sql), row_limit + 1)
    except (duckdb.Error, pa.ArrowException) as e:
        if timed_out.is_set():
            raise QueryError(f"query took longer than {timeout_s:g} s and was stopped; "
                             "narrow it with WHERE or LIMIT, or aggregate before joining") from None
        raise QueryError(_explain_error(e)) from None
    finally:
        done.set()
        watchdog.join()
    truncated = table.num_rows > row_limit
    metadata = {**(table.schema.metadata or {}), b"truncated": str(truncated).lower().encode(),
                b"row_limit": str(row_limit).encode()}
    return table.slice(0, row_limit).replace_schema_metadata(metadata)


def _explain_error(error: Exception) -> str:
    message = duck_message(error)
    if isinstance(error, duckdb.PermissionException) or "configuration has been locked" in message:
        return (f"refused: {message}\nThis page reads only the views; files, network, extensions "
                f"and settings are off.\n{VIEWS_HINT}")
    if isinstance(error, duckdb.OutOfMemoryException):
        return f"the query needed more than the {SANDBOX_MEMORY_LIMIT} memory limit: {message}"
    return f"{message}\n{VIEWS_HINT}"
