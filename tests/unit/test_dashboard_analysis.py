"""The dashboard's pure parts: analysis math (analysis.py), overlays, head search, hints, settings, new queries."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboard import data, hints, live, overlay, settings
from precompute import analysis, headsearch
from precompute.decompose import Decomposer
from precompute.errors import InputError
from precompute.registry import ModelSpec, WeightsSource, load_model
from tests.fixtures.runs import make_run


# --------------------------------------------------------------------------- overlays


def test_diverging_colours_are_white_at_zero_and_clip_beyond_the_scale():
    rgb = overlay.to_uint8(overlay.diverging(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]), 1.0))
    assert rgb[2].tolist() == [247, 247, 247]  # 0 is the white middle of RdBu
    assert rgb[0].tolist() == rgb[1].tolist() == [5, 48, 97]  # -scale and beyond: darkest blue
    assert rgb[3].tolist() == rgb[4].tolist() == [103, 0, 31]  # +scale and beyond: darkest red


def test_to_uint8_never_wraps_around():
    out = overlay.to_uint8(np.array([-0.5, 0.0, 0.999, 1.0, 1.7]))
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 255, 255, 255]


def test_symmetric_scale_is_the_largest_magnitude_over_all_maps():
    assert overlay.symmetric_scale(np.array([[0.1, -0.3]]), np.array([[0.2]])) == pytest.approx(0.3)
    assert overlay.symmetric_scale(np.zeros((2, 2))) > 0  # no division by zero for a blank map


def test_overlay_puts_positive_red_and_negative_blue_where_the_map_says():
    view = Image.new("RGB", (32, 32), (128, 128, 128))
    grid = np.array([[1.0, 0.0], [0.0, -1.0]], dtype=np.float32)  # [g, g]: + top-left, - bottom-right
    out = np.asarray(overlay.overlay(view, grid, 1.0), dtype=np.int32)
    assert out.shape == (224, 224, 3)  # small models are shown at least 224 px
    top_left, bottom_right = out[5, 5], out[-5, -5]
    assert top_left[0] > top_left[2] + 30  # red (dark red at 0.6 over grey)
    assert bottom_right[2] > bottom_right[0] + 30  # blue


def test_render_png_is_an_in_memory_png_with_its_colour_bar():
    view = Image.new("RGB", (32, 32), "white")
    png = overlay.render_png([("a", view, np.ones((4, 4))), ("b", view, -np.ones((4, 4)))], 1.0, "scale")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    assert img.width == 2 * 224 + 8 and img.height > 2 * 224 + overlay.BAR_HEIGHT


# --------------------------------------------------------------------------- nearest neighbours


def test_similarities_dot_and_cosine():
    vectors = np.array([[1, 0], [2, 0], [0, 3], [-1, 1]], dtype=np.float32)
    q = np.array([1.0, 1.0], dtype=np.float32)
    assert analysis.similarities(q, vectors).tolist() == [1, 2, 3, 0]
    cos = analysis.similarities(q, vectors, analysis.row_norms(vectors), cosine=True)
    assert cos == pytest.approx([2 ** -0.5, 2 ** -0.5, 2 ** -0.5, 0.0], abs=1e-6)
    with pytest.raises(InputError, match="width 3"):
        analysis.similarities(np.ones(3), vectors)


def test_top_k_is_ordered_leaves_out_the_query_and_caps_k():
    scores = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    rows, best = analysis.top_k(scores, 2)
    assert rows.tolist() == [1, 3] and best.tolist() == pytest.approx([0.9, 0.7])
    assert analysis.top_k(scores, 10, exclude=1)[0].tolist() == [3, 2, 0]
    assert scores[1] == pytest.approx(0.9)  # the caller's scores are not modified
    with pytest.raises(InputError):
        analysis.top_k(scores, 0)


def test_principal_direction_matches_the_svd_and_points_along_the_long_tail():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)).astype(np.float32) * np.array([5, 1, 1, 1, 1, 1], np.float32)
    x[:10, 0] += 40  # a long positive tail along axis 0
    v = analysis.principal_direction(x)
    svd = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    assert abs(float(v @ svd)) == pytest.approx(1.0, abs=1e-4)
    assert v[0] > 0.9
    rows, _ = analysis.top_along(x, v, 10, centred=True)
    assert set(rows.tolist()) == set(range(10))


def test_mean_vector_and_heads_with_property():
    labels = pd.DataFrame({"layer": [1, 1, 2], "head": [0, 1, 0], "property": ["colors", "shapes", "colors"]})
    assert analysis.heads_with_property(labels, "colors") == [(1, 0), (2, 0)]
    assert analysis.mean_vector([np.array([1.0, 3.0]), np.array([3.0, 5.0])]).tolist() == [2.0, 4.0]
    with pytest.raises(InputError, match="no heads"):
        analysis.mean_vector([])


def test_neighbours_frame_joins_image_metadata_by_id():
    meta = pd.DataFrame({"image_id": [7, 3, 5], "path": ["a.png", "b.png", "c.png"], "label": ["x", "y", "z"]})
    frame = analysis.neighbours_frame(np.array([5, 7]), np.array([0.5, 0.25]), meta, run="r", layer=2)
    assert frame.to_dict("list") == {"rank": [1, 2], "image_id": [5, 7], "path": ["c.png", "a.png"],
                                     "label": ["z", "x"], "score": [0.5, 0.25], "run": ["r", "r"], "layer": [2, 2]}


# --------------------------------------------------------------------------- maps


def test_summed_and_contrastive_maps_use_the_same_heads():
    maps1 = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # [l, h, g, g]
    maps2 = np.ones_like(maps1)
    layers = (4, 5)
    chosen = [(4, 0), (5, 2)]
    m1, m2, diff = analysis.contrastive_map(maps1, maps2, layers, chosen)
    assert np.array_equal(m1, maps1[0, 0] + maps1[1, 2])
    assert np.array_equal(m2, 2 * np.ones((2, 2)))
    assert np.array_equal(diff, m1 - m2)
    with pytest.raises(InputError, match="L3.H0"):
        analysis.summed_map(maps1, layers, [(3, 0)])
    frame = analysis.map_frame(diff)
    assert frame.shape == (4, 3) and frame["value"].tolist() == diff.reshape(-1).tolist()


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("test-tiny", WeightsSource("none", "0"), "cpu"))


def test_decompose_image_is_the_precomputes_decomposition(tiny):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    dec = Decomposer(tiny.model, [1, 2], spatial=True)
    result = live.decompose_image(tiny, dec, img)
    ref = Decomposer(tiny.model, [1, 2])(tiny.preprocess(img)[None])
    assert result.layers == (1, 2) and result.tokens.shape == (2, 4, 1 + 4 * 4, 32)  # [l, h, t, D]
    assert np.allclose(result.heads, ref.heads[0].numpy(), atol=1e-6)
    assert np.allclose(result.tokens.sum(2), result.heads, atol=1e-5)  # tokens sum to r[l,h]
    assert np.allclose(result.head_vector(2, 3), ref.heads[0, 1, 3].numpy(), atol=1e-6)
    maps = analysis.head_maps(result, np.eye(32, dtype=np.float32)[0])
    assert maps.shape == (2, 4, 4, 4)
    assert np.allclose(maps[1, 3].reshape(-1), result.tokens[1, 3, 1:, 0], atol=1e-7)


def test_the_live_view_is_the_uint8_crop_the_model_saw(tiny):
    from precompute.images import split_preprocess

    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    result = live.decompose_image(tiny, Decomposer(tiny.model, [2]), img)
    crop = split_preprocess(tiny.preprocess).to_pixels(img).permute(1, 2, 0).numpy()  # [H, W, 3]
    assert np.array_equal(np.asarray(result.view), crop)


def test_model_view_is_the_crop_the_model_saw(tiny):
    img = Image.new("RGB", (64, 32), (200, 30, 90))
    view = live.model_view(tiny.preprocess(img), tiny.preprocess)
    assert view.size == (32, 32)
    assert np.abs(np.asarray(view, np.int32) - [200, 30, 90]).max() <= 2


# --------------------------------------------------------------------------- head search


def test_search_by_words_groups_hits_per_head():
    hits = pd.DataFrame({"layer": [1, 1, 2], "head": [0, 0, 3], "rank": [4, 2, 1], "text": ["b", "a", "c"]})
    out = headsearch.group_hits(hits)
    assert out[["layer", "head", "best_rank", "matches", "texts"]].values.tolist() == [[2, 3, 1, 1, "c"],
                                                                                      [1, 0, 2, 2, "a | b"]]


def test_search_by_meaning_scores_a_head_by_its_texts_weighted_by_rank():
    emb = np.eye(3, dtype=np.float32)  # text ids 10, 11, 12
    picks = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 0, 1], "rank": [1, 2, 1], "text_id": [10, 12, 11],
                          "text": ["x", "z", "y"]})
    out = headsearch.by_meaning(np.array([0, 0.6, 0.8], np.float32), picks, np.array([10, 11, 12]), emb)
    assert out[["layer", "head", "best_text"]].values.tolist() == [[1, 1, "y"], [0, 0, "z"]]
    assert out["similarity"].tolist() == pytest.approx([0.6, (0 * 1 + 0.8 / 2) / 1.5])


def test_search_head_texts_matches_words_as_tokens(tmp_path):
    make_run(tmp_path, "r")
    con = data.connect(tmp_path)
    picked = data.all_head_texts(con, "r").column("text").to_pylist()  # 'text N'
    one = picked[0]
    found = data.search_head_texts(con, "r", one.upper()).column("text").to_pylist()
    assert set(found) == {one} and len(found) == picked.count(one)  # 'text 1' no longer finds 'text 10'
    assert data.search_head_texts(con, "r", "texts").num_rows == len(picked)  # a plural finds its singular
    assert data.search_head_texts(con, "r", "%").num_rows == 0
    assert data.search_head_texts(con, "r", "_").num_rows == 0


# --------------------------------------------------------------------------- hints and settings


def test_stage_hints_name_the_exact_commands():
    manifest = {"model": {"architecture": "ViT-B-32", "weights": {"kind": "file", "value": "/w/b32.safetensors"}},
                "images": {"root": "/data/imagenet val"}, "layers": [8, 9, 10, 11]}
    hint = hints.stage_hint("b32", manifest, "/runs/b32", ["decompose"], "label")
    assert "`clip-interpret textspan --out /runs/b32` then `clip-interpret label --out /runs/b32`" in hint
    assert ("clip-interpret run --model ViT-B-32 --pretrained /w/b32.safetensors --images '/data/imagenet val' "
            "--layers 8,9,10,11 --out /runs/b32") in hint
    assert hints.stage_hint("b32", manifest, "/runs/b32", list(hints.STAGES), "score") is None
    assert hints.weights_args({"kind": "none", "value": "3"}) == ["--random-init", "--seed", "3"]
    assert hints.weights_args({"kind": "shipped", "value": "toy-s", "sha256": "ab"}) == []  # the default weights
    assert hints.weights_args({"kind": "local-dir", "value": "/m"}) == ["--pretrained", "local-dir:/m"]
    assert hints.weights_args(None) == ["--pretrained", "WEIGHTS"]


def test_data_dir_comes_from_argv_then_env_then_runs_in_the_current_folder(tmp_path, monkeypatch):
    env = {settings.ENV_DATA_DIR: str(tmp_path / "env")}
    assert settings.resolve_data_dir(["--data-dir", str(tmp_path / "a")], env) == tmp_path / "a"
    assert settings.resolve_data_dir([f"--data-dir={tmp_path / 'b'}"], env) == tmp_path / "b"
    assert settings.resolve_data_dir([], env) == tmp_path / "env"
    monkeypatch.chdir(tmp_path)
    assert settings.resolve_data_dir([], {}) == tmp_path.resolve() / "runs"


def test_nearest_neighbours_match_a_full_sort():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)  # [n, d]
    query = rng.standard_normal(16).astype(np.float32)
    idx, scores = analysis.top_k(analysis.similarities(query, vectors), 7)
    expected = np.argsort(-(vectors @ query))[:7]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, (vectors @ query)[expected], rtol=1e-6)
    idx_all, _ = analysis.top_k(analysis.similarities(query, vectors[:5]), 50)
    np.testing.assert_array_equal(idx_all, np.argsort(-(vectors[:5] @ query)))
