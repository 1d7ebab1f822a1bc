"""dashboard.data and dashboard.rundirs over small synthetic runs written from precompute/schema.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from dashboard import data
from dashboard.rundirs import discover_runs
from precompute import schema, store
from precompute.errors import InputError
from tests.fixtures.runs import make_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """'team/full' with every stage (3 parts per head), 'decomp' with only the decompose stage."""
    root = tmp_path_factory.mktemp("runs")
    full = make_run(root, "team/full", parts=3, seed=1)
    decomp = make_run(root, "decomp", stages=("decompose",), seed=2)
    return root, full, decomp, data.connect(root)


def describe(con, view: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.sql(f"DESCRIBE {view}").fetchall()]


def count(con, sql: str, params=None) -> int:
    return con.sql(sql, params=params).fetchall()[0][0]


# --------------------------------------------------------------------------- discovery


def test_runs_are_found_by_relative_path_up_to_three_levels(tmp_path):
    for name in ("a", "x/b", "x/y/c", "x/y/z/too-deep", ".hidden/d", "_scratch/e", "a/nested-inside-run"):
        make_run(tmp_path, name, stages=(), n_images=2)
    assert [r.name for r in discover_runs(tmp_path).runs] == ["a", "x/b", "x/y/c"]


def test_a_bad_manifest_skips_its_run_and_is_reported(tmp_path):
    make_run(tmp_path, "good", stages=(), n_images=2)
    for name, text in [("broken", "{not json"), ("list", "[1, 2]"), ("future", '{"schema_version": 99}'),
                       ("unversioned", '{"stages": {}}')]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
    con = data.connect(tmp_path)
    assert data.runs(con).column("run").to_pylist() == ["good"]
    problems = "\n".join(data.run_problems(con))
    assert "broken/manifest.json: the manifest is not valid JSON" in problems
    assert "list/manifest.json: the manifest is a JSON list, not an object" in problems
    assert "unversioned/manifest.json: no schema version; this version reads version 1" in problems
    assert "future/manifest.json: schema version 99; this version reads version 1" in problems


def test_missing_data_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does-not-exist does not exist"):
        data.connect(tmp_path / "does-not-exist")


def test_files_in_progress_are_never_read(tmp_path):
    run = make_run(tmp_path, "r", seed=3)
    garbage = b"not parquet at all"
    head_dir = run.path / "head_vectors" / "layer=2" / "head=0"
    for path in [run.path / ".images.parquet.k2j3.tmp", head_dir / ".part-00001.parquet.x9.tmp",
                 head_dir / "part-00002.parquet.tmp", run.path / "_work" / "decompose" / "chunk-00000" / "a.parquet",
                 run.path / "head_vectors" / "_chunks" / "part-00000.parquet",
                 run.path / "head_vectors" / "layer=2" / "_chunks" / "part-00000.parquet"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(garbage)
    con = data.connect(tmp_path)
    assert data.run_problems(con) == []
    assert count(con, "SELECT count(*) FROM head_vectors") == 2 * 2 * 6
    ids, vectors = data.head_vectors(con, "r", 2, 0)
    np.testing.assert_array_equal(vectors, run.head_vectors[(2, 0)])


def test_manifest_with_missing_keys_is_tolerated_and_width_comes_from_the_data(tmp_path):
    make_run(tmp_path, "bare", d=5, stages=("decompose",))
    (tmp_path / "bare" / "manifest.json").write_text('{"schema_version": 1, "stages": "oops"}')
    con = data.connect(tmp_path)
    row = data.runs(con).to_pylist()[0]
    assert row["run"] == "bare" and row["embed_dim"] == 5
    assert row["architecture"] is None and row["layers"] is None and row["stages"] == []
    assert describe(con, '"bare".head_vectors')[-1] == ("vector", "FLOAT[5]")


def test_manifest_width_that_disagrees_with_the_vectors_is_reported(tmp_path):
    run = make_run(tmp_path, "r", d=6, stages=("decompose",))
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["model"]["embed_dim"] = 512
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    con = data.connect(tmp_path)
    assert any("embed_dim 512 but the vectors have 6" in p for p in data.run_problems(con))
    assert data.image_embeddings(con, "r")[1].shape == (6, 6)


def test_stages_done_are_the_stages_marked_done_in_pipeline_order():
    manifest = {"stages": {"score": {"done": True}, "decompose": {"done": True}, "textspan": {"done": False},
                           "label": {"status": "completed"}, "other": {"done": True}}}
    assert store.stages_done(manifest) == ["decompose", "score"]


def test_run_names_with_quotes_are_safe_in_views(tmp_path):
    name = "it's \"quoted\""
    run = make_run(tmp_path, name, stages=("decompose",))
    con = data.connect(tmp_path)
    assert count(con, "SELECT count(*) FROM images WHERE run = ?", [name]) == 6
    np.testing.assert_array_equal(data.image_embeddings(con, name)[1], run.embeddings)


def test_run_names_duckdb_reserves_stay_in_the_union_views(tmp_path):
    for name in ("main", "memory", "Toy", "toy"):
        make_run(tmp_path, name, stages=("decompose",))
    con = data.connect(tmp_path)
    runs = con.sql("SELECT run, count(*) FROM images GROUP BY run ORDER BY run").fetchall()
    assert runs == [("Toy", 6), ("main", 6), ("memory", 6), ("toy", 6)]
    problems = "\n".join(data.run_problems(con))
    assert problems.count("no per-run schema") == 3  # main, memory, and the second of Toy/toy
    assert data.head_vectors(con, "main", 2, 0)[1].shape == (6, 8)
    assert count(con, 'SELECT count(*) FROM "Toy".images') == 6


# --------------------------------------------------------------------------- views


def test_runs_view_has_one_row_per_run(two_runs):
    _, full, _, con = two_runs
    rows = {r["run"]: r for r in data.runs(con).to_pylist()}
    assert sorted(rows) == ["decomp", "team/full"]
    r = rows["team/full"]
    assert (r["run_id"], r["architecture"], r["embed_dim"], r["layers"], r["heads"], r["image_count"]) == (
        "id-team-full", "toy-8", 8, [2, 3], 2, 6)
    assert r["stages"] == ["decompose", "textspan", "label", "score"] and r["path"] == str(full.path)
    assert rows["decomp"]["stages"] == ["decompose"]


def test_union_views_have_schema_columns_after_run(two_runs):
    con = two_runs[3]
    for view, table_schema in data.VIEW_SCHEMAS.items():
        names = [n for n, _ in describe(con, view)]
        assert names == ["run"] + [n for n in table_schema.names if n != "run"], view
    assert describe(con, "head_vectors") == [("run", "VARCHAR"), ("image_id", "BIGINT"), ("layer", "INTEGER"),
                                             ("head", "INTEGER"), ("vector", "FLOAT[8]")]
    assert ("embedding", "FLOAT[8]") in describe(con, "texts")


def test_a_run_without_a_table_has_an_empty_view_of_the_right_shape(two_runs):
    con = two_runs[3]
    assert count(con, "SELECT count(*) FROM head_labels WHERE run = 'decomp'") == 0
    assert count(con, 'SELECT count(*) FROM "decomp".head_labels') == 0
    assert [n for n, _ in describe(con, '"decomp".texts')] == schema.TEXTS.names
    assert ("embedding", "FLOAT[8]") in describe(con, '"decomp".texts')


def test_tables_no_run_has_are_empty_views_with_typed_columns(tmp_path):
    make_run(tmp_path, "only", stages=("decompose",))
    con = data.connect(tmp_path)
    assert count(con, "SELECT count(*) FROM head_scores") == 0
    assert describe(con, "model_scores")[:3] == [("run", "VARCHAR"), ("model", "VARCHAR"), ("pretrained", "VARCHAR")]
    assert ("entangled", "BOOLEAN") in describe(con, "head_scores")
    assert ("embedding", "FLOAT[8]") in describe(con, "texts")


def test_empty_data_folder_still_has_every_view(tmp_path):
    con = data.connect(tmp_path)
    for view in [*data.VIEW_SCHEMAS, "runs", "run_problems"]:
        assert count(con, f"SELECT count(*) FROM {view}") == 0


def test_runs_of_different_widths_keep_float_d_per_run_and_lists_in_the_union(tmp_path):
    make_run(tmp_path, "small", d=4, stages=("decompose", "textspan"))
    make_run(tmp_path, "wide", d=12, stages=("decompose",))
    con = data.connect(tmp_path)
    assert describe(con, '"small".head_vectors')[-1] == ("vector", "FLOAT[4]")
    assert describe(con, '"wide".image_embeddings')[-1] == ("embedding", "FLOAT[12]")
    assert describe(con, "head_vectors")[-1] == ("vector", "FLOAT[]")
    assert describe(con, "texts")[-1] == ("embedding", "FLOAT[]")
    widths = con.sql("SELECT run, max(len(embedding)) FROM image_embeddings GROUP BY run ORDER BY run").fetchall()
    assert widths == [("small", 4), ("wide", 12)]
    ids, vectors = data.head_vectors(con, "wide", 3, 1)
    assert vectors.shape == (6, 12)


def test_array_functions_work_on_float_d_vectors(two_runs):
    _, full, _, con = two_runs
    got = con.sql('SELECT image_id, array_inner_product(vector, vector) FROM "team/full".head_vectors '
                  "WHERE layer = 3 AND head = 1 ORDER BY image_id").fetchall()
    expected = (full.head_vectors[(3, 1)] ** 2).sum(axis=1)
    np.testing.assert_allclose([v for _, v in got], expected, rtol=1e-5)


def test_model_scores_run_column_is_the_run_folder(two_runs):
    con = two_runs[3]
    assert data.model_scores(con).column("run").to_pylist() == ["team/full"]
    assert con.sql('SELECT run FROM "team/full".model_scores').fetchall() == [("team/full",)]


# --------------------------------------------------------------------------- queries


def test_head_vectors_match_what_was_written(two_runs):
    _, full, _, con = two_runs
    ids, vectors = data.head_vectors(con, "team/full", 3, 0)
    assert ids.dtype == np.int64 and vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ids, full.image_ids)
    np.testing.assert_array_equal(vectors, full.head_vectors[(3, 0)])


def test_reading_one_head_reads_only_that_heads_files(tmp_path):
    run = make_run(tmp_path, "r", parts=2)
    other = run.path / "head_vectors" / "layer=3" / "head=1" / "part-00001.parquet"
    other.write_bytes(b"corrupt")
    con = data.connect(tmp_path)
    with pytest.raises(data.DamagedFileError, match=r"run 'r': the file head_vectors/layer=3/head=1/part-00001.parquet "
                       r"cannot be read \(File 'part-00001.parquet' too small to be a Parquet file\)"):
        data.head_vectors(con, "r", 3, 1)  # the corruption is real, and named ...
    ids, vectors = data.head_vectors(con, "r", 2, 1)  # ... and never touched when reading another head
    np.testing.assert_array_equal(vectors, run.head_vectors[(2, 1)])
    # the views prune hive partitions too when layer and head are constants
    assert count(con, 'SELECT count(*) FROM "r".head_vectors WHERE layer = 2 AND head = 1') == 6
    assert count(con, "SELECT count(*) FROM head_vectors WHERE run = 'r' AND layer = 3 AND head = 0") == 6


def test_unknown_run_or_head_names_the_choices(two_runs):
    con = two_runs[3]
    with pytest.raises(InputError, match="no run named 'nope'; runs: decomp, team/full"):
        data.head_vectors(con, "nope", 2, 0)
    with pytest.raises(InputError, match="no head vectors for layer 7 head 0; its manifest lists layers 2, 3, heads 0..1"):
        data.head_vectors(con, "team/full", 7, 0)
    for query in (data.image_embeddings, data.texts, data.head_labels, data.image_meta):
        with pytest.raises(InputError, match="no run named 'nope'"):
            query(con, "nope")


def test_a_run_before_decompose_says_it_has_no_vectors_yet(tmp_path):
    make_run(tmp_path, "fresh", stages=())
    con = data.connect(tmp_path)
    with pytest.raises(InputError, match="run 'fresh' has no image embeddings yet \\(stages done: none\\)"):
        data.image_embeddings(con, "fresh")
    with pytest.raises(InputError, match="no head vectors for layer 2 head 0"):
        data.head_vectors(con, "fresh", 2, 0)
    assert data.thumbnails(con, "fresh", [1, 2]) == [None, None]
    assert data.texts(con, "fresh").schema.names == schema.TEXTS.names


def test_image_embeddings_and_texts(two_runs):
    _, full, _, con = two_runs
    ids, emb = data.image_embeddings(con, "team/full")
    np.testing.assert_array_equal(emb, full.embeddings)
    texts = data.texts(con, "team/full")
    assert texts.column("text_id").to_pylist() == list(range(10))
    np.testing.assert_array_equal(store.arrow_to_vectors(texts.column("embedding")), full.text_embeddings)


def test_thumbnails_follow_the_order_asked_with_none_for_unknown_ids(two_runs):
    con = two_runs[3]
    thumbs = data.thumbnails(con, "team/full", [103, 999, 100])
    assert thumbs[1] is None
    assert thumbs[0].startswith(b"\xff\xd8") and thumbs[0] != thumbs[2]
    assert thumbs == [data.thumbnails(con, "team/full", [i])[0] for i in (103, 999, 100)]


def test_head_texts_labels_and_scores(two_runs):
    con = two_runs[3]
    picks = data.head_texts(con, "team/full", 3, 1)
    assert picks.column("rank").to_pylist() == [1, 2, 3] and "run" not in picks.column_names
    labels = data.head_labels(con, "team/full")
    assert list(zip(labels.column("layer").to_pylist(), labels.column("head").to_pylist())) == [
        (2, 0), (2, 1), (3, 0), (3, 1)]
    assert data.head_scores(con, "team/full").num_rows == 4
    assert data.head_labels(con, "decomp").num_rows == 0


def test_image_meta_has_no_thumbnails(two_runs):
    meta = data.image_meta(two_runs[3], "decomp")
    assert meta.column_names == ["image_id", "path", "label", "width", "height"] and meta.num_rows == 6


# --------------------------------------------------------------------------- numpy helpers


def test_arrow_to_vectors_handles_lists_fixed_size_lists_and_chunks():
    values = np.arange(12, dtype=np.float32).reshape(4, 3)  # [n, d]
    lists = pa.array(values.tolist(), pa.list_(pa.float32()))
    fixed = pa.array(values.tolist(), pa.list_(pa.float32(), 3))
    chunked = pa.chunked_array([lists.slice(0, 1), lists.slice(1)])
    for column in (lists, fixed, chunked, lists.slice(1)):
        expected = values[1:] if len(column) == 3 else values
        np.testing.assert_array_equal(store.arrow_to_vectors(column), expected)
    ragged = pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))
    with pytest.raises(ValueError, match="do not share one width"):
        store.arrow_to_vectors(ragged, dim=2)


def test_a_query_about_one_run_never_reads_another_runs_files(tmp_path):
    good = make_run(tmp_path, "good", seed=1)
    bad = make_run(tmp_path, "bad", seed=2)
    con = data.connect(tmp_path)
    for path in bad.path.rglob("*.parquet"):  # every file of the other run breaks after connecting
        path.write_bytes(b"corrupt")
    with pytest.raises(data.DamagedFileError, match="the file image_embeddings.parquet cannot be read"):
        data.image_embeddings(con, "bad")
    np.testing.assert_array_equal(data.head_vectors(con, "good", 2, 0)[1], good.head_vectors[(2, 0)])
    np.testing.assert_array_equal(data.image_embeddings(con, "good")[1], good.embeddings)
    assert len(data.thumbnails(con, "good", [100])[0]) > 0 and data.image_meta(con, "good").num_rows == 6
    assert data.texts(con, "good").num_rows == 10 and data.head_texts(con, "good", 2, 0).num_rows == 3
    assert data.head_labels(con, "good").num_rows == 4 and data.head_scores(con, "good").num_rows == 4


def test_a_table_unreadable_when_the_runs_are_found_is_an_error_naming_it_not_an_empty_table(tmp_path):
    make_run(tmp_path, "r")
    for name in ("texts.parquet", "images.parquet", "head_scores.parquet", "head_labels.parquet"):
        raw = (tmp_path / "r" / name).read_bytes()
        (tmp_path / "r" / name).write_bytes(raw[: len(raw) // 2])  # truncated before connecting
    con = data.connect(tmp_path)
    assert any("cannot read texts" in p for p in data.run_problems(con))  # its views are empty ...
    for query, name in ((data.texts, "texts"), (data.image_meta, "images"), (data.head_scores, "head_scores"),
                        (data.head_labels, "head_labels"), (data.head_overview, "head_labels")):
        with pytest.raises(data.DamagedFileError, match=rf"run 'r': the file {name}.parquet cannot be read "
                                                         r"\(No magic bytes found at end of file"):
            query(con, "r")  # ... but a page's read names the file, where it used to get no rows
    with pytest.raises(data.DamagedFileError, match="the file images.parquet cannot be read"):
        data.thumbnails(con, "r", [100])


def test_a_part_removed_after_the_runs_were_found_is_named(tmp_path):
    make_run(tmp_path, "r", parts=3)
    con = data.connect(tmp_path)
    gone = tmp_path / "r" / "head_vectors" / "layer=2" / "head=0" / "part-00001.parquet"
    gone.unlink()
    with pytest.raises(data.DamagedFileError, match="the file head_vectors/layer=2/head=0/part-00001.parquet "
                                                    "cannot be read"):
        data.head_vectors(con, "r", 2, 0)


def test_skipped_runs_are_known_by_name(tmp_path):
    make_run(tmp_path, "good")
    (tmp_path / "team" / "bad").mkdir(parents=True)
    (tmp_path / "team" / "bad" / "manifest.json").write_text("[]")
    found = discover_runs(tmp_path)
    assert [r.name for r in found.runs] == ["good"]
    assert found.skipped == {"team/bad": "the manifest is a JSON list, not an object; run skipped"}


def test_exports_write_csv_and_parquet_and_refuse_a_csv_too_big_to_format():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dashboard import exports
    from precompute.store import vectors_to_arrow

    small = pa.table({"image_id": [1, 2], "label": ["cat", None], "vector": vectors_to_arrow(np.eye(2, 3, dtype=np.float32))})
    csv = exports.to_csv(small).decode()
    assert csv.splitlines()[0] == "image_id,label,vector" and len(csv.splitlines()) == 3
    assert "[1.0, 0.0, 0.0]" in csv
    assert pq.read_table(io.BytesIO(exports.to_parquet(small))).equals(small)
    assert exports.csv_allowed(small)
    wide = pa.table({"vector": vectors_to_arrow(np.zeros((10_000, 768), np.float32))})  # 30 MB of floats
    assert not exports.csv_allowed(wide)  # ~90 MB of text: Parquet instead
