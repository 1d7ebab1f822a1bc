"""AppTest: the ad hoc SQL page: examples, results, truncation, refusals, CSV download, permalink."""

from __future__ import annotations

from dashboard import data
from tests.app.conftest import all_text, no_exceptions, widget


def test_running_the_default_example_lists_every_run(app):
    at = app("sql")
    at.button(key="sql.run").click().run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert sorted(table["run"]) == ["synth/decomp", "synth/full", "tiny", "tiny-decomp"]
    assert "4 rows" in all_text(at)
    assert [b.label for b in at.download_button] == ["Download CSV", "Download Parquet"]
    assert at.query_params["sql"].startswith("SELECT run, architecture")


def test_a_wide_result_is_shown_without_building_any_download(app, monkeypatch):
    """Downloads are built when clicked, never on a rerun: a wide result costs its query, not a 78 MB CSV."""
    import pandas as pd

    from dashboard import exports

    built = []
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: built.append("pandas csv") or "")
    monkeypatch.setattr(exports, "to_csv", lambda t: built.append("csv") or b"")
    monkeypatch.setattr(exports, "to_parquet", lambda t: built.append("parquet") or b"")
    at = app("sql")
    widget(at, "text_area", "sql.text").set_value("SELECT * FROM head_vectors").run()
    at.button(key="sql.run").click().run()
    no_exceptions(at)
    assert len(at.dataframe[0].value) > 0
    at.run()  # another rerun of the page, as any widget change makes
    assert built == []


def test_an_example_fills_the_editor(app):
    at = app("sql")
    name, sql = data.EXAMPLE_QUERIES[2]
    widget(at, "selectbox", "sql.example").set_value(name).run()
    at.button(key="sql.use").click().run()
    assert widget(at, "text_area", "sql.text").value == sql
    at.button(key="sql.run").click().run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert {"run", "layer", "head", "property", "top_texts"} <= set(table.columns)
    assert len(table) == 3 * 4 + 2 * 2  # every labelled head: tiny (3 x 4) and synth/full (2 x 2)


def test_a_refused_statement_is_an_error_message(app):
    at = app("sql")
    widget(at, "text_area", "sql.text").set_value("DROP VIEW runs").run()
    at.button(key="sql.run").click().run()
    no_exceptions(at)
    assert any("refused" in e.value for e in at.error)
    assert not at.dataframe


def test_a_long_result_is_cut_and_says_so(app):
    at = app("sql")
    widget(at, "text_area", "sql.text").set_value("SELECT * FROM range(25000)").run()
    at.button(key="sql.run").click().run()
    no_exceptions(at)
    assert len(at.dataframe[0].value) == 10_000
    assert any("Only the first 10,000 rows" in w.value for w in at.warning)


def test_a_pasted_link_runs_its_query(app):
    at = app("sql", sql="SELECT count(*) AS n FROM head_labels WHERE run = 'tiny'")
    no_exceptions(at)
    assert widget(at, "text_area", "sql.text").value.startswith("SELECT count(*)")
    assert at.dataframe[0].value["n"][0] == 12
