"""AppTest: getting started, rankings, the head explorer and head search, driven through their widgets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dashboard import data
from dashboard.settings import ENV_DATA_DIR
from precompute import registry, schema, store
from precompute.labels import load_overrides
from precompute.textenc import encode_texts
from tests.app.conftest import all_text, no_exceptions, open_page, widget
from tests.fixtures.runs import make_run


# --------------------------------------------------------------------------- no runs


def test_a_missing_data_folder_shows_how_to_make_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "nowhere"))
    at = open_page()
    no_exceptions(at)
    text = all_text(at)
    assert f"{tmp_path / 'nowhere'}` does not exist yet" in text
    assert "clip-interpret run --model test-tiny --random-init" in text
    assert "clip-interpret dashboard --data-dir" in text


def test_an_empty_data_folder_lists_unreadable_runs(tmp_path, monkeypatch):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / schema.MANIFEST).write_text("{not json")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    at = open_page()
    no_exceptions(at)
    text = all_text(at)
    assert "holds no runs yet" in text
    assert "broken/manifest.json: the manifest is not valid JSON" in text


# --------------------------------------------------------------------------- rankings


def test_rankings_rank_every_score_and_say_entanglement_is_lower_better(app):
    at = app(run="tiny")
    no_exceptions(at)
    assert [t.value for t in at.title] == ["Rankings"]
    charts = at.get("vega_lite_chart")
    assert len(charts) == 3  # the score bars, then one head grid per labelled run (synth/full, tiny)
    spec = json.dumps(json.loads(charts[0].proto.spec), ensure_ascii=False)
    for title in ("Association ↑", "Entanglement ↓ (lower is better)", "Zero-shot accuracy ↑"):
        assert title in spec
    assert "tiny · test-tiny" in json.dumps(json.loads(charts[2].proto.spec), ensure_ascii=False)
    expanders = [e.label for e in at.expander]
    assert "2 runs are not scored yet: synth/decomp, tiny-decomp" in expanders
    assert "2 runs are not labelled yet: synth/decomp, tiny-decomp" in expanders
    assert "clip-interpret score --out" in all_text(at)


def test_choosing_a_head_in_the_rankings_opens_it(app, con):
    at = app(run="tiny")
    labels = data.head_labels(con, "tiny").to_pandas().set_index(["layer", "head"])
    prop = labels.loc[(2, 1), "property"]
    widget(at, "selectbox", "rankings.open").set_value(("tiny", 2, 1, prop)).run()
    at.button(key="rankings.go").click().run()
    no_exceptions(at)
    assert [t.value for t in at.title] == ["Head explorer"]
    assert at.subheader[0].value == f"L2.H1 · {prop}"
    assert (at.query_params["run"], at.query_params["layer"], at.query_params["head"]) == ("tiny", "2", "1")


# --------------------------------------------------------------------------- head explorer


def test_a_head_permalink_shows_its_label_texts_scores_and_top_images(app, con, runs_dir):
    at = app("head", run="tiny", layer=2, head=1)
    no_exceptions(at)
    label = data.head_labels(con, "tiny").to_pandas().query("layer == 2 and head == 1").iloc[0]
    assert at.subheader[0].value == f"L2.H1 · {label['property']}"
    assert f"by the **{label['labeller']}** labeller" in all_text(at)
    assert json.loads(label["provenance"])["labeller"] == "pool"
    picks = data.head_texts(con, "tiny", 2, 1).to_pandas()
    shown = widget(at, "slider", "head.n")
    assert (shown.value, shown.max) == (5, len(picks))  # 5 by default, up to all stored
    scores = at.dataframe[0].value.set_index("score")["value"]
    stored = data.head_scores(con, "tiny").to_pandas().query("layer == 2 and head == 1").iloc[0]
    assert scores["Variance explained, top 5"] == f"{stored['variance_top5']:.4g}"  # named by the glossary
    assert not any("_" in name for name in scores.index)  # no raw column names
    # top images: the largest r . t for the head's top text t
    ids, vectors = data.head_vectors(con, "tiny", 2, 1)
    pool = data.texts(con, "tiny")
    row = pool.column("text_id").to_pylist().index(int(picks.text_id[0]))
    emb = store.arrow_to_vectors(pool.column("embedding"))[row]
    best = ids[np.argmax(vectors @ (emb / np.linalg.norm(emb)))]
    assert at.image[0].captions[0].startswith(f"#{best} · ")
    assert f"the text **“{picks.text[0]}”**" in all_text(at)


@pytest.mark.parametrize("run, layer, head", [("tiny", 1, 2), ("synth/full", 3, 1)])
def test_top_images_by_principal_direction(app, con, runs_dir, run, layer, head):
    """tiny's textspan stage stored the direction (head_summary.parquet); synth/full has none: computed."""
    assert (runs_dir / run / schema.HEAD_SUMMARY_FILE).is_file() == (run == "tiny")
    at = app("head", run=run, layer=layer, head=head, dir="pc")
    no_exceptions(at)
    assert widget(at, "radio", "head.dir").value == "pc"
    ids, vectors = data.head_vectors(con, run, layer, head)
    centred = vectors - vectors.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ v
    proj = proj if np.sum(proj ** 3) >= 0 else -proj
    assert at.image[0].captions[0].startswith(f"#{ids[np.argmax(proj)]} · ")
    assert "first principal direction" in all_text(at)


def test_previous_and_next_walk_every_head_and_update_the_link(app):
    at = app("head", run="tiny", layer=2, head=3)
    at.button(key="head.next").click().run()  # the last head wraps to the first
    assert (widget(at, "selectbox", "head.layer").value, widget(at, "selectbox", "head.head").value) == (0, 0)
    assert (at.query_params["layer"], at.query_params["head"]) == ("0", "0")
    at.button(key="head.prev").click().run()
    assert (at.query_params["layer"], at.query_params["head"]) == ("2", "3")
    assert at.subheader[0].value.startswith("L2.H3")


def test_a_decompose_only_run_names_the_commands_that_add_the_rest(app, runs_dir):
    at = app("head", run="tiny-decomp", layer=1, head=0)
    no_exceptions(at)
    text = all_text(at)
    run_dir = runs_dir / "tiny-decomp"
    assert f"clip-interpret textspan --out {run_dir}" in text
    assert f"clip-interpret label --out {run_dir}" in text
    assert "clip-interpret run --model test-tiny --random-init --seed 0" in text
    assert len(at.image) >= 1  # the top images by principal direction need only the head vectors


def test_correcting_a_label_writes_a_correction_and_shows_it_at_once(tmp_path, monkeypatch):
    make_run(tmp_path, "team", d=8, layers=(2, 3), heads=2)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    at = open_page("head", run="team", layer=3, head=1)
    widget(at, "radio", "head.override.how").set_value("new")
    [t for t in at.text_input if t.label == "New property name"][0].set_value("shapes")
    [t for t in at.text_input if t.label == "Your name"][0].set_value("ana")
    [t for t in at.text_input if t.label == "Why (optional)"][0].set_value("the top texts are all shapes")
    [b for b in at.button if b.label == "Save correction"][0].click().run()
    no_exceptions(at)
    saved = load_overrides(tmp_path / "team" / schema.LABEL_OVERRIDES_FILE)
    assert saved[(3, 1)].property == "shapes" and saved[(3, 1)].author == "ana"
    assert "Saved: L3.H1 → shapes." in [s.value for s in at.success]
    assert at.subheader[0].value == "L3.H1 · shapes"
    warning = " ".join(w.value for w in at.warning)
    assert "**Corrected** from **colors** to **shapes**" in warning
    assert f"clip-interpret label --out {tmp_path / 'team'}" in warning


# --------------------------------------------------------------------------- head search


def test_search_by_property_lists_exactly_its_heads(app):
    at = app("search", run="synth/full", by="property", prop="textures")
    no_exceptions(at)
    table = at.dataframe[0].value
    assert sorted(zip(table["layer"], table["head"])) == [(2, 1), (3, 0)]  # make_run: property by (layer + head) % 4
    assert "**2** heads labelled **textures**." in all_text(at)


def test_search_by_words_and_by_meaning(app, con):
    at = app("search", run="tiny", q="photo")
    no_exceptions(at)
    picks = data.all_head_texts(con, "tiny").to_pandas()
    expected = {(int(l), int(h)) for l, h, t in zip(picks.layer, picks["head"], picks.text)
                if "photo" in re.findall(r"[a-z]+", t.lower())}  # a word of the text, not a substring
    words, meaning = at.dataframe[0].value, at.dataframe[1].value
    assert set(zip(words["layer"], words["head"])) == expected
    # by meaning: the cosines between 'photo' and a head's texts weighted 1/rank, by the run's own model
    spec, _ = registry.spec_from_manifest(json.loads(data.run_info(con, "tiny")["manifest"])["model"], "cpu")
    loaded = registry.load_model(spec)
    pool = data.texts(con, "tiny")
    emb = dict(zip(pool.column("text_id").to_pylist(), store.arrow_to_vectors(pool.column("embedding"))))
    query = encode_texts(loaded, ["photo"])[0]
    sums: dict = {}
    for l, h, r, t in zip(picks.layer, picks["head"], picks["rank"], picks.text_id):
        total, weight = sums.get((int(l), int(h)), (0.0, 0.0))
        sums[(int(l), int(h))] = (total + float(emb[t] @ query) / r, weight + 1.0 / r)
    best = max((total / weight, key) for key, (total, weight) in sums.items())
    assert (meaning["layer"][0], meaning["head"][0]) == best[1]
    assert meaning["similarity"][0] == pytest.approx(best[0], abs=1e-5)


def test_search_matches_percent_and_underscore_literally(app):
    at = app("search", run="tiny", q="100%_")
    no_exceptions(at)
    assert "No stored TEXTSPAN text contains these words." in all_text(at)


def test_search_by_meaning_is_off_with_the_reason_when_weights_are_missing(app):
    at = app("search", run="synth/full", q="text")
    no_exceptions(at)
    assert len(at.dataframe) == 1  # the words still work
    assert "Live analyses are off for run **synth/full**" in all_text(at)


def test_opening_a_search_result(app):
    at = app("search", run="synth/full", by="property", prop="colors")
    at.button(key="search.prop.go").click().run()
    assert [t.value for t in at.title] == ["Head explorer"]
    assert at.subheader[0].value == "L3.H1 · colors"


def test_an_override_saved_here_is_applied_by_the_next_label_run(runs_dir, tmp_path, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from precompute.cli import app as cli

    shutil.copytree(runs_dir / "tiny", tmp_path / "tiny")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    at = open_page("head", run="tiny", layer=0, head=1)
    widget(at, "radio", "head.override.how").set_value("new")
    [t for t in at.text_input if t.label == "New property name"][0].set_value("noise")
    [b for b in at.button if b.label == "Save correction"][0].click().run()
    assert "**Corrected**" in " ".join(w.value for w in at.warning)  # shown at once, scores stale
    result = CliRunner().invoke(cli, ["label", "--out", str(tmp_path / "tiny")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    at = open_page("head", run="tiny", layer=0, head=1)
    no_exceptions(at)
    assert at.subheader[0].value == "L0.H1 · noise"
    assert "by the **manual** labeller" in all_text(at)
    assert not at.warning  # applied by the label stage: nothing stale in the label (score not rerun: see scores)
    assert "This label comes from a correction the label stage applied" in all_text(at)
