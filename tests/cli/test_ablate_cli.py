"""`clip-interpret ablate`, `run --ablate` and `compare` on tiny random runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from precompute import schema, verify
from precompute.cli import app
from precompute.labels import MIXED
from tests.conftest import make_image_folder

runner = CliRunner()
TINY = ["--model", "test-tiny", "--random-init", "--quiet"]
HEADS = 12  # test-tiny: the last 3 layers x 4 heads


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny run with `run --ablate` over class folders (the label target)."""
    root = tmp_path_factory.mktemp("ablate")
    images = make_image_folder(root / "images", per_class=6, classes=("cat", "dog", "owl"), bad_files=False)
    out = root / "runs" / "tiny"
    result = invoke("run", *TINY, "--images", images, "--out", out, "--k", 6, "--ablate")
    assert result.exit_code == 0, result.output
    return images, out, result.output


def _copy(made, tmp_path):
    _, out, _ = made
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(out, run)
    manifest = json.loads((run / schema.MANIFEST).read_text())
    return run, manifest


def test_run_ablate_writes_the_three_tables_recorded_and_verified(made):
    _, out, output = made
    assert "ablate     done in" in output
    for name, table_schema in schema.ABLATION_TABLES.items():
        assert pq.read_table(out / name).schema.remove_metadata().equals(table_schema), name
    heads = pq.read_table(out / schema.HEAD_ABLATIONS_FILE).to_pandas()
    assert len(heads) == HEADS and set(heads["target"]) == {"label"} and set(heads["method"]) == {"direct"}
    assert heads["images"].eq(18).all() and heads["accuracy_intact"].nunique() == 1
    assert np.allclose(heads["accuracy_drop"], heads["accuracy_intact"] - heads["accuracy"], atol=1e-6)
    assert heads["cosine"].between(-1, 1 + 1e-6).all() and (heads["cosine"] < 1).any()
    assert heads["label_agrees_causally"].isna().all()  # class labels are no attribute: no causal check
    manifest = json.loads((out / schema.MANIFEST).read_text())
    info = manifest["stages"]["ablate"]
    assert info["done"] and info["after"] == manifest["stages"]["score"]["key"] and info["targets"] == ["label"]
    assert set(schema.ABLATION_TABLES) <= set(manifest["files"])
    assert verify.check_run(out, full=True).ok
    again = invoke("run", *TINY, "--images", made[0], "--out", out, "--k", 6, "--ablate")
    assert again.output.count("current, skipped") == 5


def test_groups_are_properties_ccs_ends_and_seeded_random_sets(made):
    _, out, _ = made
    groups = pq.read_table(out / schema.GROUP_ABLATIONS_FILE).to_pandas()
    labels = pq.read_table(out / schema.HEAD_LABELS_FILE).to_pandas()
    props = labels[labels["property"] != MIXED]["property"].value_counts().to_dict()
    prop_rows = groups[groups["kind"] == "property"].set_index("group")["size"].to_dict()
    assert prop_rows == props
    sizes = [2, 3, 4, 6]  # round(12 x 0.125, 0.25, 0.375, 0.5)
    for kind in ("ccs_top", "ccs_bottom"):
        assert sorted(groups[groups["kind"] == kind]["size"]) == sizes
    rand = groups[groups["kind"] == "random"]
    assert set(sizes) | set(props.values()) == set(rand["size"])
    assert rand.groupby("size")["repeat"].nunique().eq(16).all()
    top, bottom = (groups[(groups["kind"] == k) & (groups["size"] == 3)]["heads"].iloc[0].split(",")
                   for k in ("ccs_top", "ccs_bottom"))
    ccs = {f"L{r.layer}.H{r.head}": (r.ccs5 if r.ccs5 == r.ccs5 and r.ccs5 is not None else -1)
           for r in labels.itertuples()}
    assert min(ccs[h] for h in top) >= max(ccs[h] for h in bottom) and not set(top) & set(bottom)


def test_random_sets_are_reproducible_and_follow_the_seed(made, tmp_path):
    run, _ = _copy(made, tmp_path)
    before = pq.read_table(run / schema.GROUP_ABLATIONS_FILE)
    assert invoke("ablate", "--out", run, "--force", "--quiet").exit_code == 0
    assert pq.read_table(run / schema.GROUP_ABLATIONS_FILE).equals(before)
    assert invoke("ablate", "--out", run, "--seed", 1, "--quiet").exit_code == 0
    after = pq.read_table(run / schema.GROUP_ABLATIONS_FILE).to_pandas()
    rand = before.to_pandas()
    assert not after[after["kind"] == "random"]["heads"].equals(rand[rand["kind"] == "random"]["heads"])


def test_attributes_give_one_target_each_and_the_causal_check(made, tmp_path):
    images, _, _ = made
    run, manifest = _copy(made, tmp_path)
    paths = pq.read_table(run / schema.IMAGES_FILE, columns=["path"]).column("path").to_pylist()
    rng = np.random.default_rng(0)
    attrs = tmp_path / "attrs.parquet"
    pq.write_table(pa.table({"path": paths, "shade": rng.choice(["dark", "light"], len(paths)).tolist(),
                             "animal": [p.split("/")[0] for p in paths]}), attrs)
    result = invoke("ablate", "--out", run, "--attributes", attrs, "--min-drop", 0, "--quiet")
    assert result.exit_code == 0, result.output
    assert "causal label agreement" in result.output
    rows = pq.read_table(run / schema.HEAD_ABLATIONS_FILE).to_pylist()
    assert {r["target"] for r in rows} == {"shade", "animal"} and len(rows) == 2 * HEADS
    by_head = {}
    for r in rows:
        by_head.setdefault((r["layer"], r["head"]), []).append(r)
    causal_seen = 0
    for head_rows in by_head.values():
        drops = {r["target"]: r["accuracy_drop"] for r in head_rows}
        best = max(drops, key=drops.get)  # the first on ties, as the stage takes it
        causal = head_rows[0]["causal_attribute"]
        assert causal == (best if drops[best] > 0 else None)
        causal_seen += causal is not None
        label = head_rows[0]["property"]
        expected = None if causal is None or label == MIXED else label == causal
        assert head_rows[0]["label_agrees_causally"] == expected
    model = pq.read_table(run / schema.MODEL_ABLATIONS_FILE).to_pylist()[0]
    assert model["targets"] == "shade,animal" and model["k"] == 3 and model["n_heads"] == HEADS
    checked = [h[0]["label_agrees_causally"] for h in by_head.values() if h[0]["label_agrees_causally"] is not None]
    assert model["n_checked"] == len(checked)
    assert model["causal_label_agreement"] == (pytest.approx(np.mean(checked)) if checked else None)


def test_rescoring_makes_the_ablations_stale(made, tmp_path):
    run, _ = _copy(made, tmp_path)
    assert invoke("score", "--out", run, "--force", "--quiet").exit_code == 0  # the same key: still current
    assert json.loads((run / schema.MANIFEST).read_text())["stages"]["ablate"]["done"]
    assert invoke("score", "--out", run, "--template", "a {}", "--quiet").exit_code == 0  # another key
    stages = json.loads((run / schema.MANIFEST).read_text())["stages"]
    assert stages["score"]["done"] and not stages["ablate"]["done"]
    assert "ablate done" in invoke("ablate", "--out", run, "--quiet").output


def test_forward_ablation_rows_and_the_recorded_comparison(made, tmp_path):
    run, _ = _copy(made, tmp_path)
    result = invoke("ablate", "--out", run, "--forward", "--forward-images", 10, "--quiet")
    assert result.exit_code == 0, result.output
    assert "forward vs direct on 10 images" in result.output
    heads = pq.read_table(run / schema.HEAD_ABLATIONS_FILE).to_pandas()
    forward = heads[heads["method"] == "forward"]
    assert len(forward) == HEADS and forward["images"].eq(10).all()
    info = json.loads((run / schema.MANIFEST).read_text())["stages"]["ablate"]["forward"]
    assert info["images"] == 10 and info["heads"] == HEADS and info["mean_abs_drop_difference"] >= 0


@pytest.mark.parametrize("args, message", [
    (["--fraction", "1.5"], "--fraction values must be in (0, 1]"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--template", "no braces"], "needs '{}'"),
    (["--attributes", "/nowhere/attrs.parquet"], "attributes file not found"),
])
def test_bad_options_are_one_line_errors(made, args, message):
    result = invoke("ablate", "--out", made[1], *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_folder_that_is_not_a_scored_run_is_refused(tmp_path):
    result = invoke("ablate", "--out", tmp_path)
    assert result.exit_code == 2 and "is not a run folder" in result.output and "Traceback" not in result.output


def test_compare_writes_head_matches_where_the_dashboard_reads_them(made, tmp_path):
    _, out, _ = made
    data = tmp_path / "data"
    shutil.copytree(out, data / "tiny")
    result = invoke("compare", "--run", data / "tiny", "--run", data / "tiny", "--out", data / schema.COMPARE_DIR)
    assert result.exit_code == 0, result.output
    assert f"{HEADS * HEADS} head pairs over 18 shared images" in result.output
    assert "best-match CKA: mean 1.000" in result.output
    (path,) = (data / schema.COMPARE_DIR).glob("head_matches-*.parquet")
    rows = pq.read_table(path).to_pylist()
    assert {(r["run_a"], r["run_b"]) for r in rows} == {("tiny", "tiny")}  # named as the dashboard names runs
    assert all(r["rank_a"] == 1 for r in rows if (r["layer_a"], r["head_a"]) == (r["layer_b"], r["head_b"]))
    one = invoke("compare", "--run", out)
    assert one.exit_code == 2 and "exactly two --run folders" in one.output


def test_the_headline_size_is_ablated_whatever_the_fractions(made, tmp_path):
    run, _ = _copy(made, tmp_path)
    result = invoke("ablate", "--out", run, "--fraction", "0.5", "--repeats", 2, "--quiet")
    assert result.exit_code == 0, result.output
    groups = pq.read_table(run / schema.GROUP_ABLATIONS_FILE).to_pandas()
    assert sorted(groups[groups["kind"] == "ccs_top"]["size"].unique()) == [3, 6]  # 25% (the headline) and 50%
    model = pq.read_table(run / schema.MODEL_ABLATIONS_FILE).to_pylist()[0]
    assert model["k"] == 3 and model["repeats"] == 2
