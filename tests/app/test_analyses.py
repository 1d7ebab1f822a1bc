"""AppTest: the five analyses on dataset images and uploads, checked against numpy and the model itself."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dashboard import data
from precompute.decompose import Decomposer, spatial_maps
from precompute.textenc import encode_texts
from tests.app.conftest import all_text, no_exceptions, widget


def image_file(con, run: str, image_id: int) -> Path:
    manifest = json.loads(data.run_info(con, run)["manifest"])
    meta = data.image_meta(con, run).to_pandas().set_index("image_id")
    return Path(manifest["images"]["root"]) / meta.loc[image_id, "path"]


def exact_scores(vectors, query, sim="dot", text=False):
    """The neighbour scores in float64, straight from their definitions (docs/design.md section 5.2)."""
    v, q = np.asarray(vectors, np.float64), np.asarray(query, np.float64)
    if sim == "centred":
        mu = v.mean(0)
        v, q = v - mu, (q if text else q - mu)
    scores = v @ q
    if sim in ("cosine", "centred"):
        scores = scores / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    return scores


def expected_top(ids, vectors, query, k, exclude=None, cosine=False, sim=None, text=False):
    scores = exact_scores(vectors, query, sim or ("cosine" if cosine else "dot"), text)
    if exclude is not None:
        scores[list(ids).index(exclude)] = -np.inf
    return [int(i) for i in ids[np.argsort(-scores, kind="stable")[:k]]]


FP16_TOL = 1e-3  # the dashboard holds head vectors in float16: scores within 1e-3 |v| |q| of float32


def close_to_float32(scores, vectors, query) -> bool:
    """The page's scores equal the float32 products within the float16 tolerance."""
    exact = vectors @ query
    return bool(np.all(np.abs(np.asarray(scores) - exact)
                       <= FP16_TOL * np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)))


# --------------------------------------------------------------------------- 1 and 4: no model for dataset images


def test_property_neighbours_of_a_dataset_image_use_the_mean_over_the_propertys_heads(app, con):
    at = app("property_nn", run="synth/full", prop="textures", img=103, k=4)
    no_exceptions(at)
    heads = [(2, 1), (3, 0)]  # make_run: textures = (layer + head) % 4 == 3
    ids, _ = data.head_vectors(con, "synth/full", 2, 1)
    mean = np.mean([data.head_vectors(con, "synth/full", l, h)[1] for l, h in heads], axis=0)
    query = mean[list(ids).index(103)]
    table = at.dataframe[0].value
    assert table["image_id"].tolist() == expected_top(ids, mean, query, 4, exclude=103, sim="centred")
    rows = [list(ids).index(i) for i in table["image_id"]]
    assert table["score"].to_numpy() == pytest.approx(exact_scores(mean, query, "centred")[rows], abs=2e-3)
    assert (table["similarity"] == "centred").all()
    assert "L2.H1, L3.H0" in all_text(at)
    assert "(the query image itself left out)" in all_text(at)
    assert len(at.download_button) == 1


@pytest.mark.parametrize("sim", ["dot", "cosine", "centred", None])
def test_image_neighbours_of_a_dataset_image_match_numpy(app, con, sim):
    at = app("image_nn", run="synth/full", layer=3, head=1, img=105, k=5, **({"sim": sim} if sim else {}))
    no_exceptions(at)
    sim = sim or "centred"  # the default
    assert widget(at, "radio", "inn.sim").value == sim
    ids, vectors = data.head_vectors(con, "synth/full", 3, 1)
    query = vectors[list(ids).index(105)]
    table = at.dataframe[0].value
    assert table["image_id"].tolist() == expected_top(ids, vectors, query, 5, exclude=105, sim=sim)
    rows = [list(ids).index(i) for i in table["image_id"]]
    if sim != "dot":
        assert table["score"].to_numpy() == pytest.approx(exact_scores(vectors, query, sim)[rows], abs=2e-3)
    assert (table["similarity"] == sim).all() and f"by **{sim}**" in all_text(at)
    assert (table["layer"] == 3).all() and (table["head"] == 1).all()
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith(f"#{table['image_id'][0]} · ") for c in captions)  # result thumbnails


def test_an_upload_is_decomposed_like_the_precompute(app, con):
    """Uploading a probe image's own file gives back its stored head vector: cosine 1 with itself."""
    image_id = 5
    at = app("image_nn", run="tiny", layer=2, head=3, k=3, sim="cosine", src="upload")
    path = image_file(con, "tiny", image_id)
    at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/png")).run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert table["image_id"][0] == image_id
    assert table["score"][0] == pytest.approx(1.0, abs=FP16_TOL)  # the stored row is float16
    assert table["query"][0] == path.name
    assert "src" in at.query_params and "img" not in at.query_params  # uploads are not part of the link


def test_a_bad_upload_is_an_error_message_not_a_stack_trace(app):
    at = app("image_nn", run="tiny", src="upload")
    at.file_uploader[0].set_value(("photo.png", b"just some text, not an image\n" * 20, "image/png")).run()
    no_exceptions(at)
    assert any("photo.png: the upload is a text file" in e.value for e in at.error)
    assert not at.dataframe


def test_an_upload_follows_the_user_to_the_next_analysis(app, con):
    at = app("image_nn", run="tiny", src="upload")
    path = image_file(con, "tiny", 2)
    at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/png")).run()
    at.switch_page("app_pages/property_nn.py").run()
    no_exceptions(at)
    assert f"Your upload **{path.name}**" in all_text(at)
    at.button(key="pnn.forget").click().run()
    assert "Upload an image to analyse it" in all_text(at)


def test_switching_a_linked_dataset_image_to_an_upload(app):
    at = app("image_nn", run="tiny", img=3)
    assert not at.file_uploader
    widget(at, "radio", "inn.src").set_value("upload").run()
    no_exceptions(at)
    assert len(at.file_uploader) == 1
    assert "Upload an image to analyse it" in all_text(at)
    assert at.query_params["src"] == "upload" and "img" not in at.query_params


def test_live_analyses_say_why_they_are_off(app):
    at = app("topic_map", run="synth/full")
    no_exceptions(at)
    text = all_text(at)
    assert "Live analyses are off for run **synth/full**" in text
    assert "the run's weights /weights/synth/full.safetensors are not on this machine" in text
    at = app("property_nn", run="synth/full", src="upload")
    at.file_uploader[0].set_value(("x.png", png_bytes(), "image/png")).run()
    no_exceptions(at)
    assert "Live analyses are off" in all_text(at)


def test_a_decompose_only_run_names_the_label_command_on_property_neighbours(app, runs_dir):
    at = app("property_nn", run="tiny-decomp")
    no_exceptions(at)
    assert f"clip-interpret label --out {runs_dir / 'tiny-decomp'}" in all_text(at)


def png_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- 2, 3 and 5: the live model


def test_topic_map_of_a_dataset_image_uses_its_file_and_a_symmetric_scale(app, con, tiny_model):
    at = app("topic_map", run="tiny", img=3, t="a photo of a dog", heads="one", layer=2, head=0)
    no_exceptions(at)
    assert widget(at, "text_input", "topic.t").value == "a photo of a dog"
    # the same map straight from the precompute's code
    img = Image.open(image_file(con, "tiny", 3)).convert("RGB")
    dec = Decomposer(tiny_model.model, [0, 1, 2], spatial=True)(tiny_model.preprocess(img)[None])
    text = torch.from_numpy(encode_texts(tiny_model, ["a photo of a dog"])[0])
    grid = spatial_maps(dec.tokens[0, 2, 0], text, tiny_model.info.grid)  # [g, g]
    caption = all_text(at)
    scale = float(re.search(r"symmetric around 0: ±([0-9.e+-]+);", caption).group(1))
    assert scale == pytest.approx(float(grid.abs().max()), rel=2e-3)
    assert "summed over L2.H0" in caption
    shown = [i for i in at.image if not i.captions or not i.captions[0]]
    assert shown, "the overlay image is shown"
    assert {b.label for b in at.download_button} == {"Download PNG", "Download map values (CSV)"}


def test_contrastive_map_uses_the_same_heads_for_both_texts(app):
    at = app("contrastive", run="tiny", img=1, t1="a dog", t2="a cat")
    no_exceptions(at)
    assert "Both maps use the same 12 heads (all 12 heads of layers 0, 1, 2)" in all_text(at)
    at = app("contrastive", run="tiny", img=1, t1="a dog", t2="a cat", heads="one", layer=1, head=2)
    assert "Both maps use the same 1 head (L1.H2)" in all_text(at)
    assert widget(at, "text_input", "con.t2").value == "a cat"


def test_contrastive_map_asks_for_both_texts(app):
    at = app("contrastive", run="tiny", img=1, t1="a dog")
    no_exceptions(at)
    assert "Type two texts to contrast." in all_text(at)


def test_text_neighbours_match_the_models_text_embedding(app, con, tiny_model):
    at = app("text_nn", run="tiny", t="a red circle", layer=1, head=0, k=5, sim="dot")
    no_exceptions(at)
    ids, vectors = data.head_vectors(con, "tiny", 1, 0)
    query = encode_texts(tiny_model, ["a red circle"])[0]
    table = at.dataframe[0].value
    assert table["image_id"].tolist() == expected_top(ids, vectors, query, 5)
    rows = [list(ids).index(i) for i in table["image_id"]]
    assert close_to_float32(table["score"], vectors[rows], query)
    assert np.all(np.diff(table["score"]) <= 0)


def test_text_neighbours_by_default_centre_the_images_not_the_text(app, con, tiny_model):
    at = app("text_nn", run="tiny", t="a red circle", layer=1, head=0, k=5)
    no_exceptions(at)
    ids, vectors = data.head_vectors(con, "tiny", 1, 0)
    query = encode_texts(tiny_model, ["a red circle"])[0]
    table = at.dataframe[0].value
    assert table["image_id"].tolist() == expected_top(ids, vectors, query, 5, sim="centred", text=True)
    rows = [list(ids).index(i) for i in table["image_id"]]
    assert table["score"].to_numpy() == pytest.approx(exact_scores(vectors, query, "centred", True)[rows], abs=2e-3)
    assert "the text is not" in all_text(at)


def test_changing_widgets_updates_the_permalink(app):
    at = app("image_nn", run="synth/full", img=101)
    widget(at, "slider", "inn.k").set_value(3).run()
    widget(at, "selectbox", "inn.head").set_value(1).run()
    widget(at, "radio", "inn.sim").set_value("cosine").run()
    assert {k: at.query_params[k] for k in ("run", "img", "k", "head", "sim")} == \
        {"run": "synth/full", "img": "101", "k": "3", "head": "1", "sim": "cosine"}
    assert len(at.dataframe[0].value) == 3


def test_a_dataset_image_whose_file_is_gone_is_mapped_from_its_thumbnail(runs_dir, tmp_path, monkeypatch):
    import shutil

    from dashboard.settings import ENV_DATA_DIR
    from tests.app.conftest import open_page

    shutil.copytree(runs_dir / "tiny", tmp_path / "moved")
    manifest_path = tmp_path / "moved" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["images"]["root"] = str(tmp_path / "not-here")  # a run made on another machine
    manifest_path.write_text(json.dumps(manifest))
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    at = open_page("topic_map", run="moved", img=2, t="a dog")
    no_exceptions(at)
    assert "is not on this machine: the stored thumbnail is used" in all_text(at)
    assert "Colour scale symmetric around 0" in all_text(at)
