"""run_user_sql: good queries work, every way out of the sandbox is refused, and nothing changes after."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashboard.data import EXAMPLE_QUERIES
from dashboard.user_sql import is_truncated, run_user_sql, sandbox
from precompute.errors import QueryError
from tests.fixtures.runs import make_run

ALLOWED = "one read-only query: SELECT"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "toy", seed=1)
    make_run(root, "team/other", seed=2, stages=("decompose",))
    outside = tmp_path_factory.mktemp("outside")
    pq.write_table(pa.table({"secret": [42]}), outside / "secret.parquet")
    (outside / "secret.csv").write_text("secret\n42\n")
    return root, outside


def views_still_answer(root) -> None:
    """The views and the settings are as they were."""
    rows = run_user_sql("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM head_vectors), "
                        "current_setting('enable_external_access'), current_setting('lock_configuration')", root)
    assert list(rows.to_pylist()[0].values()) == [12, 48, False, True]


def refused(sql: str, root, match: str, **kwargs) -> str:
    with pytest.raises(QueryError, match=match) as info:
        run_user_sql(sql, root, **kwargs)
    views_still_answer(root)
    return str(info.value)


# --------------------------------------------------------------------------- good queries


def test_select_returns_arrow(runs_dir):
    table = run_user_sql("SELECT run, count(*) AS n FROM images GROUP BY run ORDER BY run", runs_dir[0])
    assert table.to_pylist() == [{"run": "team/other", "n": 6}, {"run": "toy", "n": 6}]
    assert not is_truncated(table)


def test_cosine_similarity_on_float_d_vectors(runs_dir):
    table = run_user_sql(
        "SELECT v.image_id, array_cosine_similarity(v.vector, q.vector) AS sim "
        'FROM "toy".head_vectors AS v JOIN "toy".head_vectors AS q USING (layer, head) '
        "WHERE layer = 2 AND head = 0 AND q.image_id = 100 ORDER BY sim DESC", runs_dir[0])
    assert table.column("image_id")[0].as_py() == 100
    assert table.column("sim")[0].as_py() == pytest.approx(1.0, abs=1e-6)
    assert table.num_rows == 6


def test_join_of_head_labels_with_head_texts(runs_dir):
    table = run_user_sql(
        "SELECT l.layer, l.head, l.property, count(*) AS n_texts FROM head_labels AS l "
        "JOIN head_texts AS t USING (run, layer, head) GROUP BY ALL ORDER BY ALL", runs_dir[0])
    assert table.num_rows == 4 and set(table.column("n_texts").to_pylist()) == {3}


@pytest.mark.parametrize("sql", ["WITH x AS (SELECT 1 AS a) SELECT a FROM x", "FROM runs", "VALUES (1), (2)",
                                 "DESCRIBE head_vectors", "SHOW TABLES", "SUMMARIZE head_labels",
                                 "SELECT 1;  -- one statement, a trailing semicolon"])
def test_other_read_only_forms_are_allowed(runs_dir, sql):
    assert run_user_sql(sql, runs_dir[0]).num_rows >= 1


@pytest.mark.parametrize("title, sql", EXAMPLE_QUERIES)
def test_example_queries_run(runs_dir, title, sql):
    """Without a probe set's ground truth the attribute examples answer nothing, but none fails."""
    rows = run_user_sql(sql, runs_dir[0]).num_rows
    assert rows >= 1 or "attributes" in sql, title


def test_row_limit_truncates_and_says_so(runs_dir):
    table = run_user_sql("SELECT range AS i FROM range(1000000000000)", runs_dir[0], row_limit=25)
    assert table.num_rows == 25 and is_truncated(table)
    assert table.schema.metadata[b"row_limit"] == b"25"
    exact = run_user_sql("SELECT range AS i FROM range(25)", runs_dir[0], row_limit=25)
    assert exact.num_rows == 25 and not is_truncated(exact)


def test_a_run_inside_is_readable_through_its_file_too(runs_dir):
    root = runs_dir[0]
    table = run_user_sql(f"SELECT count(*) AS n FROM read_parquet('{root}/toy/images.parquet')", root)
    assert table.column("n").to_pylist() == [6]


# --------------------------------------------------------------------------- no files, no network


@pytest.mark.parametrize("call", [
    "read_csv('/etc/passwd')", "read_text('/etc/passwd')", "read_blob('/etc/hostname')", "glob('/*')",
    "read_json('/etc/hosts')", "read_csv('https://example.com/data.csv')",
    "read_parquet('http://127.0.0.1:9/x.parquet')",
])
def test_reading_outside_files_or_urls_is_refused(runs_dir, call):
    message = refused(f"SELECT * FROM {call}", runs_dir[0], "refused: Permission Error")
    assert "file system operations are disabled" in message and "Views: runs" in message


def test_another_parquet_or_csv_on_the_machine_is_refused(runs_dir):
    root, outside = runs_dir
    refused(f"SELECT * FROM read_parquet('{outside}/secret.parquet')", root, "refused: Permission Error")
    refused(f"SELECT * FROM '{outside}/secret.csv'", root, "refused: Permission Error")


def test_files_inside_the_data_folder_that_no_view_reads_are_refused(runs_dir):
    root = runs_dir[0]
    refused(f"SELECT * FROM read_text('{root}/toy/manifest.json')", root, "refused: Permission Error")
    refused(f"SELECT * FROM glob('{root}/*')", root, "refused: Permission Error")
    refused(f"SELECT * FROM read_parquet('{root}/toy/head_vectors/*/*/*.parquet')", root, "refused: Permission Error")


# --------------------------------------------------------------------------- statements other than SELECT


@pytest.mark.parametrize("sql, kind", [
    ("COPY images TO '{tmp}/leak.csv'", "COPY"),
    ("COPY (SELECT 1) TO '{tmp}/leak.parquet' (FORMAT parquet)", "COPY"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH"),
    ("DETACH other", "DETACH"),
    ("INSTALL httpfs", "INSTALL/LOAD"),
    ("LOAD httpfs", "INSTALL/LOAD"),
    ("SET enable_external_access = true", "SET/RESET/USE"),
    ("RESET lock_configuration", "SET/RESET/USE"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL pragma_version()", "CALL/CHECKPOINT"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("CREATE OR REPLACE VIEW images AS SELECT 1 AS x", "CREATE"),
    ("INSERT INTO _catalog.runs (run) VALUES ('fake')", "INSERT"),
    ("UPDATE _catalog.runs SET run = 'x'", "UPDATE"),
    ("DELETE FROM _catalog.runs", "DELETE"),
    ("DROP VIEW images", "DROP"),
    ("ALTER VIEW images RENAME TO gone", "ALTER"),
    ("EXPORT DATABASE '{tmp}/dump'", "EXPORT"),
    ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN"),
    ("BEGIN TRANSACTION", "BEGIN/COMMIT/ROLLBACK"),
])
def test_statements_other_than_select_are_refused(runs_dir, sql, kind):
    root, outside = runs_dir
    message = refused(sql.format(tmp=outside), root, f"refused {kind}: this page runs {ALLOWED}")
    assert "DESCRIBE, SHOW or SUMMARIZE" in message
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv", "secret.parquet"]  # nothing written


def test_multiple_statements_are_refused_before_any_runs(runs_dir):
    refused("SELECT 1; DROP VIEW images", runs_dir[0], r"refused 2 statements \(SELECT, DROP\)")
    refused("SELECT 1; SELECT 2", runs_dir[0], "refused 2 statements")


def test_settings_are_locked_even_from_inside_a_select(runs_dir):
    refused("SELECT * FROM enable_logging()", runs_dir[0], "configuration has been locked")


def test_empty_query_is_refused(runs_dir):
    refused("  -- nothing but a comment", runs_dir[0], "the query is empty")


# --------------------------------------------------------------------------- failures and limits


def test_syntax_error_gives_duckdbs_message_and_the_views(runs_dir):
    message = refused("SELEC 1", runs_dir[0], 'syntax error at or near "SELEC"')
    assert "Traceback" not in message and "head_vectors" in message


def test_unknown_table_and_column_give_duckdbs_message_and_the_views(runs_dir):
    refused("SELECT * FROM no_such_view", runs_dir[0], "Table with name no_such_view does not exist")
    refused("SELECT no_such_column FROM images", runs_dir[0], "no_such_column")


def test_runaway_query_is_stopped_at_the_time_limit(runs_dir):
    refused("SELECT sum(a.range * b.range) FROM range(1000000000) a, range(1000000000) b", runs_dir[0],
            "query took longer than 0.2 s", timeout_s=0.2)


def test_sandbox_is_reused_until_the_runs_change(tmp_path):
    make_run(tmp_path, "a", stages=("decompose",))
    first = sandbox(tmp_path)
    assert sandbox(tmp_path) is first
    make_run(tmp_path, "b", stages=("decompose",), seed=5)
    assert sandbox(tmp_path) is not first
    runs = run_user_sql("SELECT run FROM runs", tmp_path).column("run").to_pylist()
    assert runs == ["a", "b"]


def test_missing_data_folder_is_a_query_error(tmp_path):
    with pytest.raises(QueryError, match="does not exist"):
        run_user_sql("SELECT 1", tmp_path / "nowhere")


def test_vectors_come_back_as_arrow_lists(runs_dir):
    table = run_user_sql('SELECT vector FROM "toy".head_vectors LIMIT 2', runs_dir[0])
    assert np.asarray(table.column("vector")[0].as_py()).shape == (8,)


def test_queries_from_many_threads_share_one_sandbox(runs_dir):
    from concurrent.futures import ThreadPoolExecutor

    queries = [("SELECT count(*) AS n FROM head_vectors WHERE run = 'toy'", 24),
               ("SELECT count(*) AS n FROM images", 12),
               ("SELECT count(*) AS n FROM head_texts", 12)] * 4
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: run_user_sql(q[0], runs_dir[0]).column("n")[0].as_py(), queries))
    assert got == [n for _, n in queries]


def test_the_runner_is_where_the_readme_documents_it():
    import importlib
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    module, name = re.search(r"`(dashboard\.[\w.]+)\.(run_user_sql)\(", readme).groups()
    assert getattr(importlib.import_module(module), name) is run_user_sql


# --------------------------------------------------------------------------- runs of different widths, ground truth


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """Two runs of different widths (8 and 12, as the toy models are), one with a probe set's attributes.parquet."""
    import json

    from precompute import schema

    root = tmp_path_factory.mktemp("mixed")
    make_run(root, "narrow", d=8, seed=1)
    make_run(root, "wide", d=12, seed=2)
    probe = tmp_path_factory.mktemp("probe")
    paths = [f"cls{i % 2}/img{i}.png" for i in range(6)]  # make_run's image paths
    pq.write_table(pa.table({"path": paths, "color": ["red", "blue"] * 3, "size": ["small"] * 6,
                             "caption": [f"caption {i}" for i in range(6)]}), probe / schema.ATTRIBUTES_FILE)
    manifest_path = root / "wide" / schema.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("images", {})["root"] = str(probe)
    manifest_path.write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize("title, sql", EXAMPLE_QUERIES)
def test_example_queries_run_on_runs_of_different_widths(mixed_dir, title, sql):
    assert run_user_sql(sql, mixed_dir).num_rows >= 1, title


def test_the_attributes_view_holds_the_probe_sets_ground_truth_by_image_id(mixed_dir):
    rows = run_user_sql("SELECT run, image_id, attribute, value FROM attributes ORDER BY ALL", mixed_dir).to_pylist()
    assert {r["run"] for r in rows} == {"wide"}  # the narrow run's probe folder has no attributes.parquet
    colors = {r["image_id"]: r["value"] for r in rows if r["attribute"] == "color"}
    assert colors == {100 + i: ["red", "blue"][i % 2] for i in range(6)}  # joined on path to make_run's ids
    assert {r["attribute"] for r in rows} == {"color", "size", "caption"}
    per_run = run_user_sql('SELECT count(*) AS n FROM "wide".attributes', mixed_dir).to_pylist()
    assert per_run == [{"n": 18}]
    assert run_user_sql('SELECT count(*) AS n FROM "narrow".attributes', mixed_dir).to_pylist() == [{"n": 0}]


def test_sql_head_labels_show_a_correction_at_once_and_its_history(tmp_path):
    from precompute import overrides, schema

    make_run(tmp_path, "toy", seed=1)
    before = run_user_sql("SELECT layer, head, property FROM head_labels ORDER BY ALL", tmp_path).to_pylist()
    target = before[0]
    overrides.append_correction(tmp_path / "toy" / schema.LABEL_OVERRIDES_FILE, target["layer"], target["head"],
                                "pattern", author="ana", note="stripes")
    rows = run_user_sql("SELECT layer, head, property, stored_property, label_source, stale, association "
                        "FROM head_labels ORDER BY layer, head", tmp_path).to_pylist()
    assert rows[0]["property"] == "pattern" and rows[0]["stored_property"] == target["property"]
    assert rows[0]["label_source"] == "override" and rows[0]["stale"] == (target["property"] != "pattern")
    assert [r["property"] for r in rows[1:]] == [r["property"] for r in before[1:]]
    history = run_user_sql("SELECT run, layer, head, property, author, note FROM label_overrides", tmp_path)
    assert history.to_pylist() == [{"run": "toy", "layer": target["layer"], "head": target["head"],
                                     "property": "pattern", "author": "ana", "note": "stripes"}]
