"""The analysis API: the three similarities, neighbours over a run folder (rundata.open_run), heads for a text,
and head search by words (stems) and by meaning (weighted by pick order, far-from-pool warning)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from precompute import analysis, headsearch, schema
from precompute.errors import InputError
from precompute.rundata import open_run
from tests.fixtures.runs import make_run, vectors, write

# --------------------------------------------------------------------------- similarities


def test_the_three_similarities_order_a_hand_made_example_as_their_definitions_say():
    # a constant part (10, 0) plus deviations; row 2 is a "hub": a large vector along the constant part
    v = np.array([[10, 1], [10, -1], [20, 0], [1, 0.5], [10, 5]], np.float32)
    mu = np.array([10, 0], np.float32)
    q = np.array([10, 1], np.float32)  # deviation (0, 1), like rows 0 and 4

    def order(sim):
        return np.argsort(-analysis.neighbour_scores(q, v, sim, mean=mu), kind="stable").tolist()

    assert order("dot") == [2, 4, 0, 1, 3]  # the hub first: 200 > 105 > 101 > 99 > 10.5
    assert order("cosine") == [0, 2, 1, 3, 4]  # direction only, constant part included
    assert order("centred") == [0, 4, 3, 2, 1]  # same deviation first (cos 1, 1), the opposite one last (-1)
    centred = analysis.neighbour_scores(q, v, "centred", mean=mu)
    # |v| / |v - mu| = 10: the float32 norms make |v - mu| exact to ~1e-5 (neighbour_scores)
    assert centred[[0, 1, 2, 4]] == pytest.approx([1.0, -1.0, 0.0, 1.0], abs=2e-5)
    # a text query is not centred: cos(v - mu, t)
    t = np.array([0.6, 0.8], np.float32)
    expected = (v - mu) @ t / (np.linalg.norm(v - mu, axis=1) * np.linalg.norm(t))
    assert analysis.neighbour_scores(t, v, "centred", mean=mu, text=True) == pytest.approx(expected, abs=2e-5)


def test_every_similarity_has_a_one_line_explanation_and_bad_names_are_refused():
    assert list(analysis.SIMILARITIES) == ["centred", "cosine", "dot"] and analysis.DEFAULT_SIMILARITY == "centred"
    assert all(text and "\n" not in text for text in analysis.SIMILARITIES.values())
    with pytest.raises(InputError, match="unknown similarity 'euclid'; choose one of centred, cosine, dot"):
        analysis.neighbour_scores(np.ones(2), np.ones((3, 2), np.float32), "euclid")


def test_centred_scores_on_float16_rows_with_a_large_constant_part_match_float64():
    rng = np.random.default_rng(0)
    constant = rng.standard_normal(64) * 3  # |mu| ~ 24, deviations ~ 8: the cancellation |v|^2 - 2 v.mu + |mu|^2
    rows = (constant + rng.standard_normal((20_000, 64))).astype(np.float16)  # [n, D]
    exact = rows.astype(np.float64)
    mu = exact.mean(0)
    q = exact[7]
    want = (exact - mu) @ (q - mu) / (np.linalg.norm(exact - mu, axis=1) * np.linalg.norm(q - mu))
    mu32 = mu.astype(np.float32)
    got = analysis.neighbour_scores(q, rows, "centred", norms=analysis.row_norms(rows), mean=mu32)  # one f32 pass
    assert got.dtype == np.float32 and np.abs(got - want).max() < 2e-4
    centred = analysis.centred_norms(rows, mu32)
    assert centred == pytest.approx(np.linalg.norm(exact - mu, axis=1), rel=1e-5)
    fast = analysis.neighbour_scores(q, rows, "centred", mean=mu32, centred=centred)  # the half kernel
    ratio = np.linalg.norm(exact, axis=1) / np.linalg.norm(exact - mu, axis=1)  # ~3 here
    assert np.all(np.abs(fast - want) <= 1e-3 * ratio)
    want_cos = exact @ q / (np.linalg.norm(exact, axis=1) * np.linalg.norm(q))
    assert np.abs(analysis.neighbour_scores(q, rows, "cosine") - want_cos).max() < 1e-3
    assert np.allclose(analysis.products(rows, np.stack([q, mu])), exact @ np.stack([q, mu]).T, rtol=1e-5, atol=1e-3)
    m = analysis.head_vectors(np.arange(len(rows)), rows)
    assert m.centred == pytest.approx(np.linalg.norm(exact - exact.mean(0), axis=1), rel=1e-4)


def test_neighbours_leave_out_the_query_and_return_image_ids():
    m = analysis.head_vectors(np.array([5, 7, 9]), np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32))
    ids, scores = analysis.neighbours(m, m.vectors[0], 2, "cosine", exclude=0)
    assert ids.tolist() == [7, 9] and scores[0] > scores[1]
    assert m.row_of(9) == 2 and m.row_of(8) is None


# --------------------------------------------------------------------------- a run with a hub, read from its folder


def hub_run(tmp_path, n_per_cluster=30, d=16):
    """A run whose head (3, 1) writes a large constant plus one of three cluster directions; four hub images
    write the constant at twice the size. Returns (run folder, cluster of each image)."""
    data = make_run(tmp_path, "hubs", d=d, layers=(2, 3), heads=2, n_images=3 * n_per_cluster + 4)
    rng = np.random.default_rng(5)
    constant = np.zeros(d, np.float32)
    constant[0] = 10.0
    clusters = np.array([i % 3 for i in range(3 * n_per_cluster)] + [-1] * 4)
    vec = np.tile(constant, (len(clusters), 1)) + 0.05 * rng.standard_normal((len(clusters), d)).astype(np.float32)
    for i, c in enumerate(clusters):
        if c >= 0:
            vec[i, 1 + c] += 1.0
        else:
            vec[i] += constant  # a hub: 20 along the constant part
    folder = data.path / schema.HEAD_VECTORS_DIR / "layer=3" / "head=1"
    for f in folder.glob("*.parquet"):
        f.unlink()
    write(folder / "part-00000.parquet", {"image_id": data.image_ids, "vector": vectors(vec)},
          schema.HEAD_VECTORS_FILE)
    return data, clusters


def test_dot_returns_the_hubs_for_every_query_and_centred_neighbours_follow_the_query(tmp_path):
    """The issue's finding: with the dot product three different queries got the same top 5."""
    data, clusters = hub_run(tmp_path)
    m = open_run(data.path).head(3, 1)
    queries = [0, 1, 2]  # one image of each cluster
    tops = {}
    for sim in analysis.SIMILARITIES:
        tops[sim] = [set(analysis.neighbours(m, m.vectors[q], 5, sim, exclude=q)[0].tolist()) for q in queries]
    hubs = set(data.image_ids[clusters < 0].tolist())
    assert all(top >= hubs for top in tops["dot"])  # the four hubs in every dot top 5
    assert tops["dot"][0] & tops["dot"][1] & tops["dot"][2]  # the same images for all three queries
    cluster_of = dict(zip(data.image_ids.tolist(), clusters))
    for q, top in zip(queries, tops["centred"]):
        assert {cluster_of[i] for i in top} == {clusters[q]}  # every neighbour from the query's own cluster
    assert not (tops["centred"][0] & tops["centred"][1]) and not (tops["centred"][1] & tops["centred"][2])


def test_open_run_reads_heads_means_properties_and_refuses_bad_input(tmp_path):
    data = make_run(tmp_path, "r", d=8, layers=(2, 3), heads=2, n_images=6)
    run = open_run(data.path)
    m = run.head(2, 1)
    assert m.ids.tolist() == data.image_ids.tolist()
    assert np.allclose(m.vectors, data.head_vectors[(2, 1)])
    assert np.allclose(m.mean, data.head_vectors[(2, 1)].mean(0), atol=1e-6)
    assert m.norms == pytest.approx(np.linalg.norm(data.head_vectors[(2, 1)], axis=1), rel=1e-6)
    heads = run.heads_with("textures")  # make_run: property by (layer + head) % 4
    assert heads == [(2, 1), (3, 0)]
    p = run.property_vectors("textures")
    assert np.allclose(p.vectors, (data.head_vectors[(2, 1)] + data.head_vectors[(3, 0)]) / 2, atol=1e-6)
    assert run.attributes is None  # the synthetic probe folder has no attributes.parquet
    with pytest.raises(InputError, match=r"no L4.H0: its analysed layers are 2, 3, heads 0..1"):
        run.head(4, 0)
    with pytest.raises(InputError, match="no head of run 'r' is labelled 'stripes'; properties: colors"):
        run.heads_with("stripes")
    with pytest.raises(InputError, match="no vector for image 5; its image ids run 100..105"):
        run.image_row(m, 5)
    with pytest.raises(InputError, match="is not a run folder"):
        open_run(tmp_path / "nowhere")


def test_heads_for_text_ranks_heads_by_projection_centred_or_map_total():
    heads = np.zeros((2, 2, 3), np.float32)  # [l, h, D]
    heads[0, 0] = [1, 0, 0]
    heads[0, 1] = [3, 0, 0]
    heads[1, 0] = [2, 0, 0]
    heads[1, 1] = [0, 1, 0]
    means = np.zeros_like(heads)
    means[0, 1] = [2.9, 0, 0]  # head (4, 1) writes 3 along the text, but always does
    text = np.array([1, 0, 0], np.float32)
    by_proj = analysis.heads_for_text(heads, [4, 5], text)
    assert list(zip(by_proj["layer"], by_proj["head"]))[:3] == [(4, 1), (5, 0), (4, 0)]
    by_centred = analysis.heads_for_text(heads, [4, 5], text, means)
    assert list(zip(by_centred["layer"], by_centred["head"]))[:3] == [(5, 0), (4, 0), (4, 1)]
    assert by_centred["rank"].tolist() == [1, 2, 3, 4]
    tokens = np.zeros((2, 2, 3, 3), np.float32)  # [l, h, t, D]: class token + 2 patches
    tokens[..., 0, :] = heads  # all in the class token except for head (5, 1)
    tokens[1, 1, 1] = [5, 0, 0]
    by_map = analysis.heads_for_text(heads, [4, 5], text, tokens=tokens, by="map_total")
    assert (by_map["layer"][0], by_map["head"][0]) == (5, 1) and by_map["map_total"][0] == pytest.approx(5)
    with pytest.raises(InputError, match="cannot rank heads by 'map_total'; available: projection"):
        analysis.heads_for_text(heads, [4, 5], text, by="map_total")


# --------------------------------------------------------------------------- head search


@pytest.mark.parametrize("word, stem", [("stripes", "strip"), ("striped", "strip"), ("striping", "strip"),
                                        ("dotted", "dot"), ("dots", "dot"), ("crosses", "cross"), ("red", "red"),
                                        ("colours", "color"), ("colored", "color"), ("checkered", "checker"),
                                        ("ring", "ring"), ("circles", "circl"), ("boxes", "box")])
def test_stem(word, stem):
    assert headsearch.stem(word) == stem


def test_word_search_is_token_and_stem_aware():
    texts = ["a checkered background", "a red object", "a striped backdrop", "Red, striped shapes", "redness"]
    assert headsearch.match_words(texts, "red").tolist() == [False, True, False, True, False]
    assert headsearch.match_words(texts, "stripes").tolist() == [False, False, True, True, False]
    assert headsearch.match_words(texts, "striped red").tolist() == [False, False, False, True, False]
    assert headsearch.match_words(texts, "a").tolist() == [True, True, True, False, False]  # only stop words
    assert not headsearch.match_words(texts, "%_").any()


def test_word_search_groups_per_head_with_its_label():
    picks = pd.DataFrame({"layer": [1, 1, 2, 2], "head": [0, 0, 3, 3], "rank": [4, 2, 1, 2],
                          "text": ["red things", "a red object", "a checkered floor", "stripes"]})
    labels = pd.DataFrame({"layer": [1, 2], "head": [0, 3], "property": ["color", "pattern"]})
    out = headsearch.by_words(picks, "red", labels)
    assert out.columns.tolist()[:3] == ["layer", "head", "label"]
    assert out[["layer", "head", "label", "best_rank", "matches", "texts"]].values.tolist() == \
        [[1, 0, "color", 2, 2, "a red object | red things"]]
    assert headsearch.by_words(picks, "dog", labels).empty


def test_meaning_search_weights_texts_by_pick_order():
    """A head whose 15th text is the query does not beat one whose first text is close to it."""
    emb = np.eye(4, dtype=np.float32)  # text ids 0..3
    query = np.array([1.0, 0, 0, 0], np.float32)
    near = np.array([0.8, 0.6, 0, 0], np.float32)  # cos 0.8 with the query
    emb = np.vstack([emb, near])  # text id 4
    picks = pd.DataFrame({
        "layer": [0] * 15 + [1] * 3, "head": [0] * 18,
        "rank": list(range(1, 16)) + [1, 2, 3],
        "text_id": [2] * 14 + [0] + [4, 3, 3],
        "text": ["other"] * 14 + ["exact"] + ["near", "other", "other"],
    })
    out = headsearch.by_meaning(query, picks, np.arange(5), emb)
    assert list(zip(out["layer"], out["head"])) == [(1, 0), (0, 0)]
    w = 1 / np.arange(1, 4)
    assert out["similarity"][0] == pytest.approx(0.8 * w[0] / w.sum())
    assert out["similarity"][1] == pytest.approx((1 / 15) / (1 / np.arange(1, 16)).sum())
    assert out["best_text"].tolist() == ["near", "exact"] and out["rank"].tolist() == [1, 15]


def test_far_from_pool_tells_a_generic_query_from_a_known_one():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((50, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    texts = [f"t{i}" for i in range(50)]
    known = pool[3] + 0.1 * rng.standard_normal(16).astype(np.float32)
    generic = pool.mean(0)  # close to everything a little, to nothing in particular
    near = headsearch.far_from_pool(known / np.linalg.norm(known), texts, pool)
    far = headsearch.far_from_pool(generic / np.linalg.norm(generic), texts, pool)
    assert not near.far and near.best_text == "t3" and near.z > headsearch.FAR_Z
    assert far.far and far.z < headsearch.FAR_Z
    assert "is far from every text this run's pool knows" in far.message("colour")


def test_a_label_correction_is_seen_by_the_api_at_once(tmp_path):
    """label_overrides.csv is applied when the run is read, as the dashboard applies it (no label rerun)."""
    from precompute import overrides

    data = make_run(tmp_path, "r", d=8, layers=(2, 3), heads=2, n_images=6)
    assert open_run(data.path).heads_with("textures") == [(2, 1), (3, 0)]
    overrides.append_correction(data.path / schema.LABEL_OVERRIDES_FILE, 3, 0, "shapes", author="ana")
    run = open_run(data.path)
    assert run.heads_with("textures") == [(2, 1)]
    assert (3, 0) in run.heads_with("shapes")
    row = run.labels[(run.labels["layer"] == 3) & (run.labels["head"] == 0)].iloc[0]
    assert row["property"] == "shapes" and row["stored_property"] == "textures" and bool(row["stale"])


@pytest.fixture(scope="module")
def toy_world_run(tmp_path_factory):
    """toy-s (shipped weights) on 300 generated toy-world images with their attributes: a real toy run."""
    from typer.testing import CliRunner

    from precompute.cli import app

    root = tmp_path_factory.mktemp("toyworld")
    for args in (["toyworld", "images", "--n", "300", "--seed", "1", "--out", str(root / "probe")],
                 ["run", "--model", "toy-s", "--images", str(root / "probe"), "--out", str(root / "toy-s"), "--quiet"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    return open_run(root / "toy-s")


@pytest.mark.slow
def test_on_a_toy_run_centred_neighbours_follow_the_query_and_its_attributes(toy_world_run):
    """The issue's finding on a real toy model: dot neighbours repeat across queries, centred ones do not, and
    share the query's value of the head's labelled attribute more often."""
    run = toy_world_run
    attrs = run.attributes.set_index("image_id")
    heads = [(int(l), int(h), p) for l, h, p in zip(run.labels["layer"], run.labels["head"], run.labels["property"])
             if p in attrs.columns]
    assert len(heads) >= 8
    queries = np.random.default_rng(0).choice(len(run.images), 40, replace=False)
    precision = {s: [] for s in analysis.SIMILARITIES}
    jaccard = {s: [] for s in analysis.SIMILARITIES}
    for layer, head, prop in heads:
        m = run.head(layer, head)
        values = attrs.loc[m.ids, prop].to_numpy()
        for sim in analysis.SIMILARITIES:
            tops = []
            for q in queries:
                ids, _ = analysis.neighbours(m, m.vectors[q], 8, sim, exclude=int(q))
                tops.append(set(ids.tolist()))
                precision[sim].append(np.mean(values[np.searchsorted(m.ids, ids)] == values[q]))
            jaccard[sim] += [len(a & b) / len(a | b) for a, b in zip(tops[::2], tops[1::2])]
    mean = {s: (float(np.mean(precision[s])), float(np.mean(jaccard[s]))) for s in analysis.SIMILARITIES}
    assert mean["centred"][0] > mean["dot"][0] + 0.05, mean
    assert mean["centred"][1] < 0.5 * mean["dot"][1], mean
    m = run.head(*heads[0][:2])
    three = [set(analysis.neighbours(m, m.vectors[q], 5, exclude=int(q))[0].tolist()) for q in queries[:3]]
    assert three[0] != three[1] and three[1] != three[2] and three[0] != three[2]
