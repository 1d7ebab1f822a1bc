"""AppTest: the head page (provenance, histogram, top and bottom images paged, patch maps, the test box, links),
the all-heads grid and the image page, each checked against numpy and the run's own model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashboard import data, headprobe
from dashboard.settings import ENV_DATA_DIR
from precompute import schema
from precompute.textenc import encode_texts
from tests.app.conftest import all_text, no_exceptions, open_page, widget
from tests.fixtures.runs import make_run

TOL = 2e-3  # head vectors are held in float16 (scores within 1e-3 |v| |q| of float32)


def principal(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit principal direction [D] oriented by the third moment, centred projections [n]), by SVD."""
    centred = vectors - vectors.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ v
    return (v, proj) if np.sum(proj ** 3) >= 0 else (-v, -proj)


def grid_ids(at, start: int, count: int) -> list[int]:
    """Image ids of ``count`` thumbnails from the page's ``start``-th thumbnail on (captions '#id · ...')."""
    captions = [c for img in at.image for c in img.captions if c.startswith("#")]
    return [int(re.match(r"#(\d+)", c).group(1)) for c in captions[start:start + count]]


def chart_frames(at) -> list:
    """Every dataset of every Vega-Lite chart on the page, as frames."""
    return [pa.ipc.open_stream(d.data.data).read_all().to_pandas()
            for c in at.get("vega_lite_chart") for d in c.proto.datasets]


def rule_marks(at) -> dict[str, float]:
    """The histogram's red rules: what -> value."""
    return {w: v for f in chart_frames(at) if {"what", "value"} <= set(f) for w, v in zip(f["what"], f["value"])}


# --------------------------------------------------------------------------- ranking, paging, histogram


@pytest.fixture
def many(tmp_path, monkeypatch):
    run = make_run(tmp_path, "many", d=8, layers=(2, 3), heads=2, n_images=60, seed=5)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    return run


def test_top_and_bottom_images_are_paged_along_the_principal_direction(many):
    ids, vectors = many.image_ids, many.head_vectors[(3, 1)]
    order = ids[np.argsort(-principal(vectors)[1], kind="stable")]
    at = open_page("head", run="many", layer=3, head=1, dir="pc")
    no_exceptions(at)
    per = headprobe.PER_PAGE
    assert grid_ids(at, 0, per) == order[:per].tolist()  # top, best first
    assert grid_ids(at, per, per) == order[::-1][:per].tolist()  # bottom, lowest first
    widget(at, "number_input", "head.page").set_value(2).run()
    assert grid_ids(at, 0, per) == order[per:2 * per].tolist()
    assert f"Top images, ranks {per + 1}–{2 * per} of 60" in all_text(at)
    widget(at, "number_input", "head.page").set_value(3).run()  # the last page is short
    assert grid_ids(at, 0, 60 - 2 * per) == order[2 * per:].tolist()


def test_the_histogram_holds_every_images_projection(many):
    proj = principal(many.head_vectors[(2, 0)])[1]
    at = open_page("head", run="many", layer=2, head=0, dir="pc")
    shown = [f for f in chart_frames(at) if list(f.columns) == ["projection"]]
    assert len(shown) == 1 and len(shown[0]) == 60
    assert np.allclose(np.sort(shown[0]["projection"].to_numpy()), np.sort(proj), atol=TOL)


def test_the_image_table_links_each_image_to_its_page(many):
    at = open_page("head", run="many", layer=2, head=1, dir="pc")
    table = [d.value for d in at.dataframe if "open" in d.value][0]
    first = int(table["image_id"][0])
    assert table["open"][0] == f"image?run=many&img={first}"
    page = open_page("image", run="many", img=first)
    no_exceptions(page)
    facts = page.dataframe[0].value.set_index("attribute")["value"]
    assert facts["image id"] == str(first)


# --------------------------------------------------------------------------- provenance, permalink, links


def test_the_permalink_and_a_link_into_each_analysis(app, con):
    at = app("head", run="tiny", layer=2, head=1)
    no_exceptions(at)
    assert at.code[0].value.endswith("/head?run=tiny&layer=2&head=1")
    links = {p.proto.label: p.proto for p in at.page_link}
    prop = data.head_labels(con, "tiny").to_pandas().query("layer == 2 and head == 1")["property"].iloc[0]
    assert set(links) >= {"4 · Image neighbours", "5 · Text neighbours", "2 · Topic map", "3 · Contrastive map",
                          "All heads' maps"} | ({f"1 · Property neighbours ({prop})"} if prop != "mixed" else set())
    assert links["4 · Image neighbours"].page.endswith("image-neighbours")
    assert "run=tiny" in links["4 · Image neighbours"].query_string
    assert "layer=2" in links["2 · Topic map"].query_string and "heads=one" in links["2 · Topic map"].query_string
    # the analysis opens on this head
    opened = app("image_nn", run="tiny", layer=2, head=1)
    assert (widget(opened, "selectbox", "inn.layer").value, widget(opened, "selectbox", "inn.head").value) == (2, 1)


def test_ground_truth_agreement_is_shown_where_the_probe_set_has_attributes(many):
    scores = pq.read_table(many.path / schema.HEAD_SCORES_FILE)
    frame = scores.to_pandas()
    frame["best_attribute"], frame["best_attribute_r2"] = frame["property"], 0.5
    frame.loc[(frame.layer == 2) & (frame["head"] == 1), "best_attribute"] = "shape"
    pq.write_table(pa.Table.from_pandas(frame, schema=scores.schema, preserve_index=False),
                   many.path / schema.HEAD_SCORES_FILE)
    agrees = open_page("head", run="many", layer=2, head=0)
    assert "best separate this head's vectors is **locations** (R² 0.50); the label **agrees**" in all_text(agrees)
    disagrees = open_page("head", run="many", layer=2, head=1)
    assert "is **shape** (R² 0.50); the label **disagrees**" in all_text(disagrees)


# --------------------------------------------------------------------------- live: the test box and patch maps


def test_a_typed_text_lands_where_the_images_it_picks_project(app, con, tiny_model):
    ids, vectors = data.head_vectors(con, "tiny", 2, 1)
    u, proj = principal(vectors)
    t = encode_texts(tiny_model, ["a photo of a dog"])[0]
    near = np.argsort(-(vectors @ t), kind="stable")[:8]  # analysis 5's top 8 for this head
    at = app("head", run="tiny", layer=2, head=1, dir="pc", t="a photo of a dog")
    no_exceptions(at)
    cosine = float(re.search(r"cosine with the ranking direction \*\*([-+0-9.]+)\*\*", all_text(at)).group(1))
    assert cosine == pytest.approx(float(t @ u), abs=2e-3)
    assert rule_marks(at)["“a photo of a dog”"] == pytest.approx(float(np.median(proj[near])), abs=TOL)


def test_an_uploaded_image_lands_where_the_same_dataset_image_does(app, con, runs_dir):
    ids, vectors = data.head_vectors(con, "tiny", 2, 0)
    proj = principal(vectors)[1]
    manifest = json.loads(data.run_info(con, "tiny")["manifest"])
    meta = data.image_meta(con, "tiny").to_pandas().set_index("image_id")
    image_id = int(ids[3])
    path = Path(manifest["images"]["root"]) / meta.loc[image_id, "path"]
    at = app("head", run="tiny", layer=2, head=0, dir="pc")
    assert rule_marks(at)[f"image {int(ids[0])}"] == pytest.approx(float(proj[0]), abs=TOL)  # the default test image
    widget(at, "radio", "headtest.src").set_value("upload").run()
    at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/png")).run()
    no_exceptions(at)
    assert rule_marks(at)[path.name] == pytest.approx(float(proj[3]), abs=TOL)  # decomposed live, same place
    assert f"{path.name} · projection **{proj[3]:.3g}**" in all_text(at)


def test_patch_maps_of_the_first_top_images(app, con):
    ids, vectors = data.head_vectors(con, "tiny", 2, 1)
    top = ids[np.argsort(-principal(vectors)[1], kind="stable")][:headprobe.MAPS].tolist()
    at = app("head", run="tiny", layer=2, head=1, dir="pc")
    assert not [c for img in at.image for c in img.captions if re.fullmatch(r"#\d+", c)]  # off until asked
    widget(at, "toggle", "head.maps").set_value(True).run()
    no_exceptions(at)
    maps = [img for img in at.image if img.captions and all(re.fullmatch(r"#\d+", c) for c in img.captions)]
    assert [int(c[1:]) for c in maps[0].captions] == top
    assert "one scale" in all_text(at)


def test_the_all_heads_grid_titles_every_head_with_its_label(app, con):
    image_id = int(data.image_meta(con, "tiny").column("image_id")[0].as_py())
    at = app("head_grid", run="tiny", img=image_id, t="a photo of a cat")
    no_exceptions(at)
    info = data.run_info(con, "tiny")
    labels = data.head_labels(con, "tiny").to_pandas().set_index(["layer", "head"])["property"]
    titles = [c for img in at.image for c in img.captions if c.startswith("L")]
    assert titles == [f"L{l}.H{h} · {labels[(l, h)]}" for l in info["layers"] for h in range(info["heads"])]
    widget(at, "radio", "grid.scale").set_value("own").run()
    assert at.query_params["scale"] == "own" and "Each map on its own scale." in all_text(at)


def test_the_all_heads_grid_ranks_heads_by_how_much_more_than_usual_they_write_toward_the_text(app, con, tiny_model,
                                                                                                  runs_dir):
    """The page's ranking is (r - mean) . t of the image's live head terms, the means the textspan stage stored."""
    from precompute.decompose import Decomposer
    from precompute.images import open_image

    image_id = int(data.image_meta(con, "tiny").column("image_id")[1].as_py())
    at = app("head_grid", run="tiny", img=image_id, t="a photo of a cat")
    no_exceptions(at)
    shown = at.dataframe[0].value
    info = data.run_info(con, "tiny")
    manifest = json.loads(info["manifest"])
    rel = data.image_meta(con, "tiny").to_pandas().set_index("image_id").loc[image_id, "path"]
    img, _ = open_image(Path(manifest["images"]["root"]) / rel)
    dec = Decomposer(tiny_model.model, info["layers"])
    heads = dec(tiny_model.preprocess(img).unsqueeze(0)).heads[0].float().numpy()  # [l, h, D]
    text = np.asarray(encode_texts(tiny_model, ["a photo of a cat"])[0], np.float32)  # [D]
    spans = pq.read_table(Path(info["path"]) / schema.HEAD_SPANS_FILE).to_pydict()
    mean = {(l, h): np.asarray(m) for l, h, m in zip(spans["layer"], spans["head"], spans["mean"])}
    expected = sorted(((float((heads[i, h] - mean[(l, h)]) @ text), l, h) for i, l in enumerate(info["layers"])
                       for h in range(info["heads"])), key=lambda x: -x[0])
    assert [(int(l), int(h)) for l, h in zip(shown["layer"], shown["head"])] == [(l, h) for _, l, h in expected][:12]
    assert np.allclose(shown["centred"], [v for v, _, _ in expected][:12], atol=1e-4)
    assert "Which heads respond most" in all_text(at)


# --------------------------------------------------------------------------- the image page


def test_the_image_page_shows_attributes_and_strongest_heads(many, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    paths = pq.read_table(many.path / schema.IMAGES_FILE).column("path").to_pylist()
    pq.write_table(pa.table({"path": paths, "shape": [f"s{i % 3}" for i in range(len(paths))],
                             "caption": ["x"] * len(paths)}), probe / schema.ATTRIBUTES_FILE)
    manifest = json.loads((many.path / schema.MANIFEST).read_text())
    manifest["images"]["root"] = str(probe)
    (many.path / schema.MANIFEST).write_text(json.dumps(manifest))
    image_id, row = int(many.image_ids[7]), 7
    at = open_page("image", run="many", img=image_id)
    no_exceptions(at)
    facts = at.dataframe[0].value.set_index("attribute")["value"]
    assert facts["shape"] == "s1" and facts["path"] == paths[7] and "caption" not in facts
    heads = at.dataframe[1].value
    expected = {}
    for (layer, head), v in many.head_vectors.items():
        centred = v - v.mean(0)
        expected[f"L{layer}.H{head}"] = np.linalg.norm(centred[row]) / np.sqrt(np.mean(np.sum(centred ** 2, 1)))
    assert dict(zip(heads["head"], heads["strength"])) == pytest.approx(expected, abs=1e-2)
    assert list(heads["strength"]) == sorted(heads["strength"], reverse=True)


def test_an_uploaded_image_gets_the_same_strongest_heads_as_its_dataset_copy(app, con):
    manifest = json.loads(data.run_info(con, "tiny")["manifest"])
    meta = data.image_meta(con, "tiny").to_pandas()
    image_id, rel = int(meta["image_id"][2]), meta["path"][2]
    stored = app("image", run="tiny", img=image_id)
    no_exceptions(stored)
    expected = stored.dataframe[-1].value.set_index("head")["strength"]
    at = app("image", run="tiny")
    widget(at, "radio", "image.src").set_value("upload").run()
    at.file_uploader[0].set_value((Path(rel).name, (Path(manifest["images"]["root"]) / rel).read_bytes(),
                                   "image/png")).run()
    no_exceptions(at)
    live = at.dataframe[-1].value.set_index("head")["strength"]  # no attributes table for an upload
    assert live.to_dict() == pytest.approx(expected.to_dict(), abs=1e-2)
    assert len([img for img in at.image if img.captions and img.captions[0].startswith("L")]) == 1  # its maps
