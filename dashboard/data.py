"""The dashboard's data layer: a DuckDB connection over the runs, and one function per query.

``connect(data_dir)`` finds the runs (``dashboard.rundirs``: folders holding a
``manifest.json`` at most three levels down, named by their relative path) and
creates the views of ``dashboard.views`` in an in-memory DuckDB:

- ``runs`` (one row per run) and ``run_problems`` (runs skipped, tables unreadable);
- one union view per table of ``precompute/schema.py`` (images, image_embeddings,
  head_vectors, texts, head_texts, head_spans, head_summary, head_labels, head_scores,
  model_scores) with a
  leading ``run`` column, present with zero rows when no run has the table;
- one schema per run, ``"<run>".head_vectors`` etc., with that run's views only.

Vectors are ``FLOAT[d]`` in a run's schema, so ``array_cosine_similarity`` and
``array_inner_product`` work; the union views hold ``FLOAT[d]`` when every run has
the same width d and ``FLOAT[]`` lists when widths differ (then query one run's
schema, or use ``list_cosine_similarity``). ``EXAMPLE_QUERIES`` shows both.

The query functions below take the connection and open their own cursor each
(Streamlit runs sessions in threads); values are ``?`` parameters. A query about one
run reads that run's files only, listed in ``_catalog.files``, with
``read_parquet(?)``: a ``run = ?`` filter on a union view cannot prune the other runs
(a parameter is not a constant when the plan is made), so one corrupt or huge run
would slow or break every page. ``head_vectors`` opens only that head's files.
``_catalog.files`` lists every file discovery found, unreadable ones too, so a read of a
damaged file fails with ``DamagedFileError`` naming it (never an empty answer, never a
DuckDB traceback).
Ad hoc SQL from users goes through ``dashboard.user_sql``, never this connection.
"""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dashboard.rundirs import discover_runs
from dashboard.views import VIEW_SCHEMAS, create_views
from precompute import derived, overrides, rundata, schema, store
from precompute.errors import InputError, InterpretError

# What reading a damaged file raises: DuckDB's "No magic bytes found", "too small to be a Parquet file",
# "No files found" (removed since the run was found), and Arrow's and the OS's own errors.
READ_ERRORS = (duckdb.IOException, duckdb.InvalidInputException, pa.ArrowException, OSError)

RUNS_SQL = "SELECT * FROM runs"
RUN_SQL = "SELECT * FROM runs WHERE run = ?"
PROBLEMS_SQL = "SELECT path, problem FROM run_problems ORDER BY path"
TABLE_FILES_SQL = 'SELECT path FROM _catalog.files WHERE run = ? AND "table" = ? ORDER BY path'
HEAD_FILES_SQL = ('SELECT path FROM _catalog.files WHERE run = ? AND "table" = ? AND layer = ? AND head = ? '
                  "ORDER BY path")
# The statements below read one run's files: the first parameter is their list.
HEAD_VECTORS_SQL = "SELECT image_id, vector FROM read_parquet(?, hive_partitioning = false)"
IMAGE_EMBEDDINGS_SQL = "SELECT image_id, embedding FROM read_parquet(?, hive_partitioning = false)"
THUMBNAILS_SQL = ("SELECT image_id, thumbnail FROM read_parquet(?, hive_partitioning = false) "
                  "WHERE list_contains(?, image_id)")
IMAGE_META_SQL = ("SELECT image_id, path, label, width, height FROM read_parquet(?, hive_partitioning = false) "
                  "ORDER BY image_id")
TEXTS_SQL = "SELECT * FROM read_parquet(?, hive_partitioning = false) ORDER BY text_id"
HEAD_TEXTS_SQL = ("SELECT * FROM read_parquet(?, hive_partitioning = false) WHERE layer = ? AND head = ? "
                  "ORDER BY rank")
HEAD_TABLE_SQL = "SELECT * FROM read_parquet(?, hive_partitioning = false) ORDER BY layer, head"
MODEL_SCORES_SQL = "SELECT * FROM model_scores ORDER BY run"
HEAD_SUMMARY_SQL = "SELECT layer, head, n, principal FROM read_parquet(?)"
HEAD_SUMMARY_KEY_SQL = "SELECT value FROM parquet_kv_metadata(?) WHERE key = ?"

EXAMPLE_QUERIES: tuple[tuple[str, str], ...] = (
    ("Runs", "SELECT run, architecture, pretrained, embed_dim, layers, heads, image_count, stages\nFROM runs"),
    ("Models by association score",
     "SELECT run, model, pretrained, association, entanglement, n_labelled\nFROM model_scores\n"
     "ORDER BY association DESC NULLS LAST"),
    ("Each head's label and its top texts",
     "SELECT l.run, l.layer, l.head, l.property, l.association,\n"
     "       string_agg(t.text, ' | ' ORDER BY t.rank) AS top_texts\n"
     "FROM head_labels AS l JOIN head_texts AS t USING (run, layer, head)\n"
     "WHERE t.rank <= 5\nGROUP BY ALL\nORDER BY l.run, l.layer, l.head"),
    ("Nearest images by one head's vector",
     "-- The 5 images closest (cosine) to the first image, by head 0 of each run's last layer.\n"
     "-- list_cosine_similarity works on every view; array_cosine_similarity needs FLOAT[d] arrays,\n"
     "-- which one run's schema always has (FROM \"my-run\".head_vectors) and the union views only\n"
     "-- when every run has the same width d.\n"
     "WITH target AS (\n"
     "    SELECT v.run, v.layer, v.head, v.image_id, v.vector\n"
     "    FROM head_vectors AS v JOIN runs AS r ON v.run = r.run AND v.layer = list_max(r.layers)\n"
     "    WHERE v.head = 0 AND v.image_id = (SELECT min(image_id) FROM images AS i WHERE i.run = v.run)\n)\n"
     "SELECT v.run, v.layer, v.head, t.image_id AS query_image, v.image_id,\n"
     "       list_cosine_similarity(v.vector, t.vector) AS similarity\n"
     "FROM head_vectors AS v JOIN target AS t USING (run, layer, head)\n"
     "QUALIFY row_number() OVER (PARTITION BY v.run ORDER BY similarity DESC) <= 5\n"
     "ORDER BY v.run, similarity DESC"),
    ("Best text for a few images (image and text embeddings)",
     "WITH sample AS (\n"
     "    SELECT * FROM image_embeddings\n"
     "    QUALIFY row_number() OVER (PARTITION BY run ORDER BY image_id) <= 5\n)\n"
     "SELECT s.run, s.image_id, t.text, list_inner_product(s.embedding, t.embedding) AS score\n"
     "FROM sample AS s JOIN texts AS t USING (run)\n"
     "QUALIFY row_number() OVER (PARTITION BY s.run, s.image_id ORDER BY score DESC) = 1\n"
     "ORDER BY s.run, s.image_id"),
    ("Ground truth of the probe images (where the probe set has it)",
     "-- attributes: one row per (image, attribute) from the probe folder's attributes.parquet\n"
     "SELECT run, attribute, value, count(*) AS images\n"
     "FROM attributes\nWHERE attribute <> 'caption'\n"
     "GROUP BY ALL\nORDER BY run, attribute, images DESC"),
    ("Does a head's label match what its top images share? (ground truth)",
     "-- For each labelled head, the attribute value most common among its 20 images of largest\n"
     "-- vector norm, and how many of the 20 share it. Swap norm for a projection to ask sharper questions.\n"
     "WITH top AS (\n"
     "    SELECT run, layer, head, image_id FROM head_vectors\n"
     "    QUALIFY row_number() OVER (PARTITION BY run, layer, head ORDER BY list_inner_product(vector, vector) DESC) <= 20\n"
     "), shared AS (\n"
     "    SELECT t.run, t.layer, t.head, a.attribute, a.value, count(*) AS of_20\n"
     "    FROM top AS t JOIN attributes AS a USING (run, image_id)\n"
     "    WHERE a.attribute <> 'caption'\n    GROUP BY ALL\n)\n"
     "SELECT s.run, s.layer, s.head, l.property AS label, s.attribute, s.value, s.of_20\n"
     "FROM shared AS s JOIN head_labels AS l USING (run, layer, head)\n"
     "QUALIFY row_number() OVER (PARTITION BY s.run, s.layer, s.head ORDER BY s.of_20 DESC) = 1\n"
     "ORDER BY s.run, s.layer, s.head"),
)


def connect(data_dir: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the views of the module docstring over the runs under ``data_dir``."""
    con = duckdb.connect()
    create_views(con, discover_runs(data_dir))
    return con


# --------------------------------------------------------------------------- queries


class DamagedFileError(InterpretError):
    """A run's file that cannot be read: truncated, corrupt, or removed since the run was found."""

    def __init__(self, run: str, run_dir: str, path: str, reason: str):
        self.run, self.run_dir, self.path, self.reason = run, run_dir, path, reason
        self.file = os.path.relpath(path, run_dir) if path.startswith(run_dir) else path
        super().__init__(f"run {run!r}: the file {self.file} cannot be read ({reason})")


def _bad_file(files: list[str], message: str) -> str:
    """The file of ``files`` an error is about: the one it names, else the first whose footer fails."""
    named = [f for f in files if f in message]
    if named:
        return max(named, key=len)
    for f in files:
        try:
            pq.read_metadata(f)
        except (OSError, pa.ArrowException):
            return f
    return files[0] if len(files) == 1 else f"{os.path.dirname(files[0])} ({len(files)} files)"


def _read(con: duckdb.DuckDBPyConnection, run: str, files: list[str], sql: str, params: list | tuple = (),
          *, files_first: bool = True) -> pa.Table:
    """``sql`` over one run's ``files`` (its first parameter unless ``files_first`` is False: then ``params`` hold
    them); a damaged file raises DamagedFileError naming it."""
    try:
        return _fetch(con, sql, [files, *params] if files_first else params)
    except READ_ERRORS as e:
        bad = _bad_file(files, str(e))
        reason = str(e).splitlines()[0].removeprefix("Invalid Input Error: ").removeprefix("IO Error: ")
        reason = reason.replace(bad, os.path.basename(bad))
        raise DamagedFileError(run, run_info(con, run)["path"], bad, reason) from None


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: list | tuple = ()) -> pa.Table:
    """Run one query on its own cursor and return Arrow."""
    cur = con.cursor()
    try:
        return cur.sql(sql, params=list(params)).to_arrow_table()
    finally:
        cur.close()


def runs(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The ``runs`` view, ordered by run name."""
    return _fetch(con, RUNS_SQL)


def run_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """What was skipped or unreadable, one 'path: problem' line each."""
    return [f"{r['path']}: {r['problem']}" for r in _fetch(con, PROBLEMS_SQL).to_pylist()]


def run_info(con: duckdb.DuckDBPyConnection, run: str) -> dict:
    """The ``runs`` row of ``run``; InputError naming the runs there are when it is unknown."""
    rows = _fetch(con, RUN_SQL, [run]).to_pylist()
    if not rows:
        names = _fetch(con, RUNS_SQL).column("run").to_pylist()
        raise InputError(f"no run named {run!r}; runs: {', '.join(names) or 'none yet (run the precompute first)'}")
    return rows[0]


def run_files(con: duckdb.DuckDBPyConnection, run: str, table: str) -> list[str]:
    """The Parquet files of one run's table ([] when the run lacks it); InputError for an unknown run."""
    files = _fetch(con, TABLE_FILES_SQL, [run, table]).column("path").to_pylist()
    if not files:
        run_info(con, run)  # raises for a run that does not exist
    return files


def _run_table(con: duckdb.DuckDBPyConnection, run: str, table: str, sql: str, params: list | tuple = (),
               columns: list[str] | None = None) -> pa.Table:
    """``sql`` over one run's files of ``table``; an empty table of the schema's columns when it has none."""
    files = run_files(con, run, table)
    if not files:
        empty = VIEW_SCHEMAS[table].empty_table()
        return empty.select(columns) if columns else empty
    return _read(con, run, files, sql, params)


def _stages(con: duckdb.DuckDBPyConnection, run: str) -> str:
    return ", ".join(run_info(con, run)["stages"]) or "none"


def _ids_and_vectors(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(image_id int64 [n], column as float32 [n, d]), sorted by image id (parts may come in any order)."""
    ids = table.column("image_id").to_numpy().astype(np.int64, copy=False)
    vectors = store.arrow_to_vectors(table.column(column))  # [n, d]
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], vectors[order]
    return ids, vectors


def head_vectors(con: duckdb.DuckDBPyConnection, run: str, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids int64 [n], vectors float32 [n, d]) of one head, sorted by image id; reads only its files."""
    params = [run, schema.HEAD_VECTORS_DIR, int(layer), int(head)]
    files = _fetch(con, HEAD_FILES_SQL, params).column("path").to_pylist()
    if not files:
        info = run_info(con, run)
        layers = ", ".join(map(str, info["layers"] or [])) or "none listed"
        heads = f"0..{info['heads'] - 1}" if info["heads"] else "unknown"
        raise InputError(f"run {run!r} has no head vectors for layer {layer} head {head}; its manifest lists "
                         f"layers {layers}, heads {heads} (stages done: {_stages(con, run)})")
    return _ids_and_vectors(_read(con, run, files, HEAD_VECTORS_SQL), "vector")


def image_embeddings(con: duckdb.DuckDBPyConnection, run: str) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids int64 [n], normalised image embeddings float32 [n, d]) of a run, sorted by image id."""
    files = run_files(con, run, "image_embeddings")
    if not files:
        raise InputError(f"run {run!r} has no image embeddings yet (stages done: {_stages(con, run)})")
    return _ids_and_vectors(_read(con, run, files, IMAGE_EMBEDDINGS_SQL), "embedding")


def thumbnails(con: duckdb.DuckDBPyConnection, run: str, image_ids) -> list[bytes | None]:
    """JPEG thumbnails in the order of ``image_ids``; None for an id the run does not have."""
    wanted = [int(i) for i in image_ids]
    found = _run_table(con, run, "images", THUMBNAILS_SQL, [wanted], ["image_id", "thumbnail"]).to_pydict()
    by_id = dict(zip(found["image_id"], found["thumbnail"]))
    return [by_id.get(i) for i in wanted]


def head_summaries(con: duckdb.DuckDBPyConnection, run: str) -> dict[tuple[int, int], dict]:
    """(layer, head) -> {"n", "principal" [D]} from the run's HEAD_SUMMARY file (``precompute.derived``).

    {} when the run has no such file, it cannot be read, or it was computed from an earlier decomposition:
    the caller then computes the direction from the vectors.
    """
    info = run_info(con, run)
    path = os.path.join(info["path"], schema.HEAD_SUMMARY_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        tag = _fetch(con, HEAD_SUMMARY_KEY_SQL, [path, schema.HEAD_SUMMARY_KEY]).column("value").to_pylist()
        if [t.decode() for t in tag] != [derived.decompose_key(json.loads(info["manifest"]))]:
            return {}
        table = _fetch(con, HEAD_SUMMARY_SQL, [path])
    except duckdb.Error:
        return {}
    principal = store.arrow_to_vectors(table.column("principal"))  # [heads, D]
    return {(int(l), int(h)): {"n": int(n), "principal": principal[i]}
            for i, (l, h, n) in enumerate(zip(*(table.column(c).to_pylist() for c in ("layer", "head", "n"))))}


def image_meta(con: duckdb.DuckDBPyConnection, run: str) -> pa.Table:
    """image_id, path, label, width, height of every image of a run (no thumbnails)."""
    return _run_table(con, run, "images", IMAGE_META_SQL, columns=["image_id", "path", "label", "width", "height"])


def image_attributes(con: duckdb.DuckDBPyConnection, run: str):
    """image_id and the probe set's ground-truth attributes (shape, color, ...) of every image of the run, a frame
    (``rundata.attributes_frame``, what the CLI and notebooks read too); None when the probe set has none."""
    info = run_info(con, run)
    manifest = json.loads(info["manifest"])
    try:
        return rundata.attributes_frame(manifest, image_meta(con, run).to_pandas())
    except (OSError, pa.ArrowException) as e:
        path = str(store.probe_attributes_file(manifest))
        raise DamagedFileError(run, info["path"], path, str(e).splitlines()[0]) from None


def texts(con: duckdb.DuckDBPyConnection, run: str) -> pa.Table:
    """The run's text pool: text_id, text, property, embedding (list<float>; ``store.arrow_to_vectors``: [m, d])."""
    return _run_table(con, run, "texts", TEXTS_SQL)


def head_texts(con: duckdb.DuckDBPyConnection, run: str, layer: int, head: int) -> pa.Table:
    """One head's TEXTSPAN picks in rank order."""
    return _run_table(con, run, "head_texts", HEAD_TEXTS_SQL, [int(layer), int(head)])


def head_labels(con: duckdb.DuckDBPyConnection, run: str) -> pa.Table:
    """Every labelled head of a run, by layer and head, with the run's label corrections applied
    (``precompute.overrides.apply_to_labels``: adds stored_property, label_source, stale)."""
    return _corrected(con, run, _run_table(con, run, "head_labels", HEAD_TABLE_SQL))


def _corrected(con: duckdb.DuckDBPyConnection, run: str, labels: pa.Table) -> pa.Table:
    """``labels`` with the corrections of the run's label_overrides.csv applied, as every page reads them."""
    return overrides.apply_to_labels(labels, os.path.join(run_info(con, run)["path"], schema.LABEL_OVERRIDES_FILE))


def head_scores(con: duckdb.DuckDBPyConnection, run: str) -> pa.Table:
    """Per-head scores of a run, by layer and head."""
    return _run_table(con, run, "head_scores", HEAD_TABLE_SQL)


def model_scores(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """One row of model scores per scored run, ``run`` being the run's name (folder)."""
    return _fetch(con, MODEL_SCORES_SQL)


# --------------------------------------------------------------------------- head search (dashboard pages)

ALL_HEAD_TEXTS_SQL = ("SELECT layer, head, rank, text_id, text, property, variance_explained "
                      "FROM read_parquet(?, hive_partitioning = false) ORDER BY layer, head, rank")
def all_head_texts(con: duckdb.DuckDBPyConnection, run: str) -> pa.Table:
    """Every head's TEXTSPAN picks (no embeddings), by layer, head and rank."""
    return _run_table(con, run, "head_texts", ALL_HEAD_TEXTS_SQL,
                      columns=["layer", "head", "rank", "text_id", "text", "property", "variance_explained"])


def search_head_texts(con: duckdb.DuckDBPyConnection, run: str, text: str) -> pa.Table:
    """TEXTSPAN picks whose text contains every word of ``text``, as stems (``headsearch.match_words``: "stripes"
    finds "striped", "red" never matches "checkered"), by layer, head and rank."""
    from precompute.headsearch import match_words

    picks = all_head_texts(con, run)
    return picks.filter(pa.array(match_words(picks.column("text").to_pylist(), text)))


HEAD_OVERVIEW_SQL = """
WITH labels AS (SELECT * FROM read_parquet($1, hive_partitioning = false)),
picks AS (
    SELECT layer, head, string_agg(text, ' | ' ORDER BY rank) AS texts
    FROM read_parquet($2, hive_partitioning = false) WHERE rank <= $3 GROUP BY layer, head
)
SELECT l.layer, l.head, l.property, l.association, l.ccs5, l.labeller, p.texts
FROM labels AS l LEFT JOIN picks AS p USING (layer, head)
ORDER BY l.layer, l.head
"""
HEAD_OVERVIEW_NO_TEXTS_SQL = ("SELECT layer, head, property, association, ccs5, labeller, CAST(NULL AS VARCHAR) AS texts "
                              "FROM read_parquet(?, hive_partitioning = false) ORDER BY layer, head")


def head_overview(con: duckdb.DuckDBPyConnection, run: str, top: int = 3) -> pa.Table:
    """Each labelled head: layer, head, property, association, ccs5, labeller, its top texts joined by ' | ', and
    the corrections' columns (``head_labels``)."""
    labels = run_files(con, run, "head_labels")
    if not labels:
        return _corrected(con, run, pa.table({"layer": pa.array([], pa.int32()), "head": pa.array([], pa.int32()),
                         "property": pa.array([], pa.string()), "association": pa.array([], pa.float32()),
                         "ccs5": pa.array([], pa.int32()), "labeller": pa.array([], pa.string()),
                         "texts": pa.array([], pa.string())}))
    picks = run_files(con, run, "head_texts")
    if not picks:
        return _corrected(con, run, _read(con, run, labels, HEAD_OVERVIEW_NO_TEXTS_SQL))
    return _corrected(con, run, _read(con, run, labels + picks, HEAD_OVERVIEW_SQL, [labels, picks, int(top)],
                                      files_first=False))
