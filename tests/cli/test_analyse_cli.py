"""`clip-interpret analyse ...`: each command's table or JSON equals the analysis API's answer on the same run;
bad input is one line on stderr. Commands that need the text encoder run on a real run of the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from precompute import analysis, headsearch
from precompute.cli import app
from precompute.rundata import open_run
from tests.conftest import make_image_folder
from tests.fixtures.runs import make_run
from tests.unit.test_analysis_api import hub_run


def invoke(*args, ok: bool = True):
    result = CliRunner().invoke(app, ["analyse", *map(str, args)])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def as_json(*args) -> dict:
    return json.loads(invoke(*args, "--json").stdout)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("analyse"), "synth", d=8, layers=(2, 3), heads=2, n_images=12, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`clip-interpret run` of the tiny random model on a generated image folder: the text encoder works."""
    root = tmp_path_factory.mktemp("analyse-tiny")
    images = make_image_folder(root / "images", per_class=6)
    result = CliRunner().invoke(app, ["run", "--model", "test-tiny", "--random-init", "--quiet", "--images",
                                      str(images), "--out", str(root / "tiny"), "--k", "8"])
    assert result.exit_code == 0, result.output
    return root / "tiny"


@pytest.mark.parametrize("sim", list(analysis.SIMILARITIES))
def test_neighbours_json_is_the_api_answer(synth, sim):
    out = as_json("neighbours", "--run", synth.path, "--layer", 3, "--head", 1, "--image-id", 104, "-k", 4,
                  "--similarity", sim)
    m = open_run(synth.path).head(3, 1)
    row = m.row_of(104)
    ids, scores = analysis.neighbours(m, m.vectors[row], 4, sim, exclude=row)
    assert [r["image_id"] for r in out["rows"]] == ids.tolist() and 104 not in ids
    assert [r["score"] for r in out["rows"]] == pytest.approx(scores.tolist(), abs=1e-6)
    assert out["similarity"] == sim and out["rows"][0]["path"].endswith(".png")


def test_neighbours_default_is_centred_and_prints_a_table(tmp_path):
    data, clusters = hub_run(tmp_path)
    text = invoke("neighbours", "--run", data.path, "--layer", 3, "--head", 1, "--image-id", int(data.image_ids[0]),
                  "-k", 5).stdout
    assert text.splitlines()[0] == f"5 nearest images to image {data.image_ids[0]} by L3.H1 (centred)"
    assert text.splitlines()[1].split()[:5] == ["rank", "image_id", "path", "label", "score"]
    shown = [int(line.split()[1]) for line in text.splitlines()[2:7]]
    same_cluster = set(data.image_ids[clusters == clusters[0]].tolist())
    assert set(shown) <= same_cluster  # not the hubs: they come first with --similarity dot
    dot = as_json("neighbours", "--run", data.path, "--layer", 3, "--head", 1, "--image-id", int(data.image_ids[0]),
                  "-k", 5, "--similarity", "dot")
    assert set(data.image_ids[clusters < 0].tolist()) <= {r["image_id"] for r in dot["rows"]}


def test_property_neighbours_and_search_by_property_and_words(synth):
    out = as_json("property-neighbours", "--run", synth.path, "--property", "textures", "--image-id", 101, "-k", 3)
    m = open_run(synth.path).property_vectors("textures")
    row = m.row_of(101)
    assert [r["image_id"] for r in out["rows"]] == analysis.neighbours(m, m.vectors[row], 3, exclude=row)[0].tolist()
    found = as_json("search", "--run", synth.path, "--property", "textures")
    assert sorted((r["layer"], r["head"]) for r in found["rows"]) == [(2, 1), (3, 0)]
    words = as_json("search", "--run", synth.path, "--words", "texts 1")  # make_run's texts: 'text N'
    expected = headsearch.by_words(open_run(synth.path).picks, "text 1")
    assert [(r["layer"], r["head"], r["label"]) for r in words["rows"]] == \
        list(zip(expected["layer"], expected["head"], open_run(synth.path).labels.set_index(["layer", "head"])
                 .loc[list(zip(expected["layer"], expected["head"])), "property"]))


@pytest.mark.parametrize("args, message", [
    (["neighbours", "--layer", 3, "--head", 1, "--image-id", 104, "--similarity", "euclid"],
     "unknown similarity 'euclid'; choose one of centred, cosine, dot"),
    (["neighbours", "--layer", 9, "--head", 0, "--image-id", 104], "has no L9.H0: its analysed layers are 2, 3"),
    (["neighbours", "--layer", 3, "--head", 1], "give exactly one of --image-id (a dataset image) and --image FILE"),
    (["neighbours", "--layer", 3, "--head", 1, "--image-id", 7], "no vector for image 7; its image ids run 100..111"),
    (["property-neighbours", "--property", "stripes", "--image-id", 101], "no head of run 'synth' is labelled"),
    (["search", "--words", "a", "--property", "colors"], "give exactly one of --words, --meaning and --property"),
    (["text-neighbours", "--layer", 3, "--head", 1, "--text", "red"], "its model cannot be loaded here"),
])
def test_bad_input_is_one_line(synth, args, message):
    result = invoke(*args[:1], "--run", synth.path, *args[1:], ok=False)
    assert result.exit_code != 0
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_image_file_is_named(synth, tmp_path):
    result = invoke("neighbours", "--run", synth.path, "--layer", 3, "--head", 1, "--image", tmp_path / "no.png",
                    ok=False)
    assert result.exit_code != 0 and result.stderr.strip() == f"error: {tmp_path / 'no.png'}: no such image file"


def test_a_folder_that_is_not_a_run(tmp_path):
    result = invoke("search", "--run", tmp_path, "--words", "red", ok=False)
    assert result.exit_code != 0 and "is not a run folder" in result.stderr


# --------------------------------------------------------------------------- commands with the text encoder


def test_text_neighbours_heads_for_text_and_search_by_meaning(tiny):
    run = open_run(tiny)
    t = run.embed(["a red circle"])[0]
    out = as_json("text-neighbours", "--run", tiny, "--layer", 2, "--head", 0, "--text", "a red circle", "-k", 4)
    assert [r["image_id"] for r in out["rows"]] == analysis.neighbours(run.head(2, 0), t, 4, text=True)[0].tolist()

    heads = as_json("heads-for-text", "--run", tiny, "--text", "a red circle", "--image-id", 3, "-k", 3,
                    "--by", "projection")
    terms = run.decompose(run.image_file(3))
    m = run.head(2, 1)
    assert np.allclose(terms.head_vector(2, 1), m.vectors[m.row_of(3)], atol=1e-5)  # the file, decomposed again
    projections = {(l, h): float(run.head(l, h).vectors[run.head(l, h).row_of(3)] @ t)
                   for l in run.layers for h in range(run.n_heads)}
    best = sorted(projections, key=projections.get, reverse=True)[:3]
    assert [(r["layer"], r["head"]) for r in heads["rows"]] == best
    assert {"label", "centred", "map_total"} <= set(heads["rows"][0])

    frame, emb = run.texts
    ranked = headsearch.by_meaning(t, run.picks, frame["text_id"].to_numpy(), emb)
    meaning = as_json("search", "--run", tiny, "--meaning", "a red circle", "-k", 5)
    assert [(r["layer"], r["head"]) for r in meaning["rows"]] == list(zip(ranked["layer"], ranked["head"]))[:5]
    assert isinstance(meaning["far_from_pool"], bool) and meaning["closest_pool_text"]


def test_topic_map_and_contrastive_sum_the_same_heads(tiny):
    run = open_run(tiny)
    one = as_json("topic-map", "--run", tiny, "--text", "a dog", "--image-id", 2, "--layer", 1, "--head", 3)
    terms = run.decompose(run.image_file(2))
    t = run.embed(["a dog", "a cat"])
    grid = analysis.head_maps(terms, t[0])[list(terms.layers).index(1), 3]  # [g, g]
    shown = np.array([[r[f"c{j}"] for j in range(grid.shape[1])] for r in one["rows"]])
    assert np.allclose(shown, grid, atol=1e-7) and one["heads"] == 1
    both = as_json("contrastive", "--run", tiny, "--text", "a dog", "--text-b", "a cat", "--image-id", 2,
                   "--layer", 2)
    maps = [analysis.head_maps(terms, e) for e in t]
    chosen = [(2, h) for h in range(run.n_heads)]
    diff = analysis.contrastive_map(*maps, list(terms.layers), chosen)[2]
    assert both["heads"] == run.n_heads and both["total"] == pytest.approx(float(diff.sum()), abs=1e-6)
    table = invoke("topic-map", "--run", tiny, "--text", "a dog", "--image-id", 2).stdout
    assert table.startswith(f"map of “a dog” summed over {len(run.layers) * run.n_heads} heads: total ")
