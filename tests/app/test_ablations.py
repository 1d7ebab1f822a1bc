"""AppTest: the Ablations and Compare pages, and the ablation tables in SQL, over tiny runs that `run --ablate`
and `compare` made."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dashboard.settings import ENV_DATA_DIR
from dashboard.user_sql import run_user_sql
from precompute import schema
from precompute.cli import app as cli_app
from precompute.labels import head_name
from tests.app.conftest import all_text, no_exceptions, open_page, texts, widget
from tests.conftest import make_image_folder

TINY = ["--model", "test-tiny", "--random-init", "--quiet"]


def _cli(*args) -> str:
    result = CliRunner().invoke(cli_app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """runs/a and runs/b (two seeds of test-tiny, ablated, compared), runs/plain (not ablated); the probe folder
    carries attributes, so the causal check runs."""
    root = tmp_path_factory.mktemp("ablation_pages")
    images = make_image_folder(root / "images", per_class=8, classes=("cat", "dog", "owl"), bad_files=False)
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.*g"))
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"path": paths, "colors": rng.choice(["red", "blue"], len(paths)).tolist(),
                             "animals": [p.split("/")[0] for p in paths]}), images / schema.ATTRIBUTES_FILE)
    runs = root / "runs"
    for name, seed in (("a", 0), ("b", 1)):
        _cli("run", *TINY, "--seed", seed, "--images", images, "--out", runs / name, "--k", 6, "--ablate")
    _cli("run", *TINY, "--seed", 2, "--images", images, "--out", runs / "plain", "--k", 6)
    _cli("compare", "--run", runs / "a", "--run", runs / "b", "--out", runs / schema.COMPARE_DIR)
    return runs


@pytest.fixture
def page(data_dir, monkeypatch):
    monkeypatch.setenv(ENV_DATA_DIR, str(data_dir))
    return open_page


def test_the_ablations_page_shows_the_stored_results(page, data_dir):
    at = page("ablations", run="a")
    no_exceptions(at)
    model = pq.read_table(data_dir / "a" / schema.MODEL_ABLATIONS_FILE).to_pylist()[0]
    metrics = {m.label: m.value for m in at.metric}
    agreement = model["causal_label_agreement"]
    assert metrics["Causal label agreement"] == ("n/a" if agreement is None else f"{agreement:.2f}")
    assert metrics[f"Drop, {model['k']} most consistent heads"] == f"{model['ccs_top_drop']:.3f}"
    assert metrics[f"Drop, {model['k']} random heads"] == f"{model['random_drop_mean']:.3f}"
    assert "colors, animals" in all_text(at)
    assert len(at.get("vega_lite_chart")) >= 3  # the grid, one head's bars, the pruning curve

    groups = pq.read_table(data_dir / "a" / schema.GROUP_ABLATIONS_FILE).to_pandas()
    table = at.dataframe[-1].value  # each property against random sets of the same size
    own = groups[(groups["kind"] == "property") & (groups["group"] == groups["target"])]
    assert sorted(table["property"]) == sorted(own["group"])
    for r in table.itertuples():
        rand = groups[(groups["kind"] == "random") & (groups["size"] == r.heads) & (groups["target"] == r.property)]
        assert r.random_mean == pytest.approx(rand["accuracy_drop"].mean())


def test_choosing_a_head_shows_its_drops_and_causal_check(page, data_dir):
    at = page("ablations", run="a")
    heads = pq.read_table(data_dir / "a" / schema.HEAD_ABLATIONS_FILE).to_pylist()
    layer, head = heads[-1]["layer"], heads[-1]["head"]
    widget(at, "selectbox", "ablations.head").select((layer, head)).run()
    no_exceptions(at)
    text = all_text(at)
    assert f"Ablating {head_name(layer, head)}" in text
    causal = heads[-1]["causal_attribute"]
    assert (f"hurts **{causal}** most" in text) if causal else ("inconclusive" in text)
    best = pq.read_table(next((data_dir / schema.COMPARE_DIR).glob("*.parquet"))).to_pylist()
    mine = [r for r in best if (r["layer_a"], r["head_a"]) == (layer, head) and r["rank_a"] == 1]
    shown = at.dataframe[0].value
    assert shown["run"].tolist() == ["b"] and shown["cka"].iloc[0] == pytest.approx(mine[0]["cka"])


def test_a_run_without_ablations_names_the_command(page, data_dir):
    at = page("ablations", run="plain")
    no_exceptions(at)
    assert f"clip-interpret ablate --out {data_dir / 'plain'}" in "\n".join(texts(at, "info"))


def test_the_compare_page_shows_the_heat_map_and_best_matches(page, data_dir):
    at = page("compare", run="a")
    no_exceptions(at)
    assert widget(at, "selectbox", "compare.other").value == "b"  # the compared run first
    stored = pq.read_table(next((data_dir / schema.COMPARE_DIR).glob("*.parquet"))).to_pandas()
    best = at.dataframe[0].value
    expected = stored[stored["rank_a"] == 1].sort_values(["layer_a", "head_a"])
    assert best["head"].tolist() == [head_name(l, h) for l, h in zip(expected["layer_a"], expected["head_a"])]
    assert np.allclose(best["cka"], expected["cka"])
    assert best["match"].tolist() == [head_name(l, h) for l, h in zip(expected["layer_b"], expected["head_b"])]
    assert "shared images" in all_text(at)


def test_the_compare_page_from_the_other_side_and_for_a_pair_not_compared(page, data_dir):
    at = page("compare", run="b")
    no_exceptions(at)
    stored = pq.read_table(next((data_dir / schema.COMPARE_DIR).glob("*.parquet"))).to_pandas()
    best = at.dataframe[0].value
    assert len(best) == stored[["layer_b", "head_b"]].drop_duplicates().shape[0]
    widget(at, "selectbox", "compare.other").select("plain").run()
    no_exceptions(at)
    assert "clip-interpret compare --run" in "\n".join(texts(at, "info"))


def test_the_same_property_across_models(page, data_dir):
    at = page("compare", run="a")
    prop = widget(at, "selectbox", "compare.property").value
    table = at.dataframe[-1].value
    expected = []
    for run in ("a", "b", "plain"):
        labels = pq.read_table(data_dir / run / schema.HEAD_LABELS_FILE).to_pylist()
        expected += [(run, head_name(r["layer"], r["head"])) for r in labels if r["property"] == prop]
    assert sorted(zip(table["run"], table["name"])) == sorted(expected) and expected


def test_ablations_and_matches_are_queryable_in_sql(data_dir):
    heads = run_user_sql("SELECT run, count(*) AS n FROM head_ablations GROUP BY run ORDER BY run", data_dir)
    assert heads.to_pylist() == [{"run": "a", "n": 24}, {"run": "b", "n": 24}]  # 12 heads x 2 attributes
    pairs = run_user_sql("SELECT count(*) AS n, max(cka) AS top FROM head_matches WHERE run_a = 'a'", data_dir)
    assert pairs.to_pylist()[0]["n"] == 144 and pairs.to_pylist()[0]["top"] <= 1.0 + 1e-6
    joined = run_user_sql("SELECT s.label_agrees, a.label_agrees_causally FROM head_scores s JOIN "
                          "(SELECT DISTINCT run, layer, head, label_agrees_causally FROM head_ablations) a "
                          "USING (run, layer, head) WHERE run = 'a'", data_dir)
    assert joined.num_rows == 12
    model = run_user_sql('SELECT run, k FROM "a".model_ablations', data_dir)
    assert model.to_pylist() == [{"run": "a", "k": 3}]


def test_the_head_page_shows_the_heads_ablation_effect_and_its_best_match(page, data_dir):
    at = page("head", run="a", layer=1, head=0)
    no_exceptions(at)
    text = all_text(at)
    assert "Ablating L1.H0" in text and "Mean cosine of the ablated to the intact embedding" in text
    assert "Best matches in other runs" in text
    at = page("head", run="plain", layer=1, head=0)
    no_exceptions(at)
    assert "No ablations for this run yet" in all_text(at)
