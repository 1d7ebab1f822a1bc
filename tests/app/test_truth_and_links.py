"""AppTest: ground truth shown where the probe set has it, bad links that say what they opened, readable pages."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashboard.settings import ENV_DATA_DIR
from precompute import schema
from tests.app.conftest import all_text, no_exceptions, open_page
from tests.fixtures.runs import make_run


@pytest.fixture(scope="module")
def truth_dir(tmp_path_factory):
    """A synthetic run whose probe folder has ground-truth attributes.parquet (as the toy world's has)."""
    root = tmp_path_factory.mktemp("truth")
    make_run(root / "runs", "synth", d=8, layers=(2, 3), heads=2, n_images=12, seed=3)
    probe = root / "probe"
    probe.mkdir()
    paths = [f"cls{i % 2}/img{i}.png" for i in range(12)]
    pq.write_table(pa.table({"path": paths, "color": ["red", "blue", "green"] * 4, "size": ["small", "large"] * 6,
                             "caption": ["x"] * 12}), probe / schema.ATTRIBUTES_FILE)
    manifest_path = root / "runs" / "synth" / schema.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("images", {})["root"] = str(probe)
    manifest_path.write_text(json.dumps(manifest))
    return root / "runs"


@pytest.fixture
def truth_app(truth_dir, monkeypatch):
    monkeypatch.setenv(ENV_DATA_DIR, str(truth_dir))
    return open_page


def test_neighbour_tables_show_the_probe_sets_ground_truth(truth_app):
    at = truth_app("image_nn", run="synth", layer=3, head=1, img=104, k=5)
    no_exceptions(at)
    frame = at.dataframe[0].value
    assert {"color", "size"} <= set(frame.columns), list(frame.columns)
    assert "caption" not in frame.columns  # long free text stays in the SQL view
    expected = {100 + i: ["red", "blue", "green"][i % 3] for i in range(12)}
    assert all(expected[int(i)] == c for i, c in zip(frame["image_id"], frame["color"]))
    assert all(link.startswith("image?") for link in frame["image"])


def test_a_link_to_a_head_the_run_lacks_says_what_was_not_found_and_what_is_shown(truth_app):
    at = truth_app("head", run="synth", layer=1, head=99)
    no_exceptions(at)
    warnings = [str(w.value) for w in at.warning]
    assert any("layer **1**" in w and "choices: 2, 3" in w for w in warnings), warnings
    assert any("head **99**" in w and "showing head" in w for w in warnings), warnings
    at.run()  # the next rerun of the same link says nothing more: the user has been told
    assert not [w for w in at.warning if "The link asks" in str(w.value)]


def test_a_link_to_a_missing_run_names_it_and_the_runs_there_are(truth_app):
    at = truth_app(None, run="nope", layer=1, head=99)  # the first page a pasted link opens
    no_exceptions(at)
    assert "run **nope**" in all_text(at) and "synth" in all_text(at)


def test_a_bad_k_in_a_link_is_reported(truth_app):
    at = truth_app("image_nn", run="synth", layer=3, head=1, img=104, k="abc")
    no_exceptions(at)
    assert any("k (results) **abc**" in str(w.value) for w in at.warning), [w.value for w in at.warning]


# --------------------------------------------------------------------------- live pages


def test_topic_map_controls_keep_their_state_through_an_upload(app, runs_dir):
    """Type a text, choose all heads of layers on a dataset image, switch to Upload: the controls stay as they were
    while no file has arrived, and the map after the upload is of what they show (it used to drop them)."""
    from tests.app.conftest import widget

    at = app("topic_map", run="tiny", img=1)
    widget(at, "text_input", "topic.t").input("green").run()
    widget(at, "radio", "topic.mode").set_value("layers").run()
    widget(at, "radio", "topic.src").set_value("upload").run()
    no_exceptions(at)
    assert widget(at, "text_input", "topic.t").value == "green"
    assert widget(at, "radio", "topic.mode").value == "layers"
    layers = widget(at, "multiselect", "topic.layers").value
    assert layers
    image = next((runs_dir.parent / "images").rglob("*.png"))
    at.file_uploader[0].set_value((image.name, image.read_bytes(), "image/png")).run()
    no_exceptions(at)
    assert widget(at, "text_input", "topic.t").value == "green"
    assert widget(at, "radio", "topic.mode").value == "layers"
    assert widget(at, "multiselect", "topic.layers").value == layers
    assert "summed over all" in all_text(at), all_text(at)
    widget(at, "text_input", "topic.t").input("blue").run()  # the next edit keeps the heads it showed
    assert widget(at, "radio", "topic.mode").value == "layers"


def test_live_pages_say_when_the_model_is_a_toy_model(tmp_path, monkeypatch):
    from tests.conftest import make_image_folder
    from tests.fixtures.dashboard_runs import _invoke

    images = make_image_folder(tmp_path / "images", per_class=2)
    _invoke("run", "--model", "toy-s", "--images", images, "--out", tmp_path / "runs" / "toy", "--k", 4, "--quiet")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "runs"))
    at = open_page("topic_map", run="toy", img=0)
    no_exceptions(at)
    assert "is a toy model" in all_text(at) and "A real photo" in all_text(at)
    at = open_page("search", run="toy", q="a red shape")
    no_exceptions(at)
    assert "is a toy model" in all_text(at) and "outside that vocabulary" in all_text(at)  # words, not photos


# --------------------------------------------------------------------------- readability


def test_head_pickers_name_each_head_with_its_label(app, runs_dir):
    from dashboard import data
    from tests.app.conftest import widget

    at = app("image_nn", run="synth/full", layer=3, head=1, img=105)
    no_exceptions(at)
    labels = {(r["layer"], r["head"]): r["property"]
              for r in data.head_labels(data.connect(runs_dir), "synth/full").to_pylist()}
    assert widget(at, "selectbox", "inn.head").options == [f"L3.H{h} · {labels[(3, h)]}" for h in range(2)]


def test_rankings_keep_one_model_order_and_colour_and_write_the_label_in_each_cell():
    import pandas as pd

    from dashboard import charts

    scores = pd.DataFrame({"run": ["b", "a", "c"], "model": ["m"] * 3, "pretrained": ["p"] * 3,
                           "association": [0.2, 0.9, 0.5], "entanglement": [0.1, 0.8, 0.3]})
    spec = charts.score_rankings(scores).to_dict()
    panels = spec["concat"]
    sorts = {tuple(layer["encoding"]["y"]["sort"]) for panel in panels for layer in panel["layer"]}
    assert sorts == {("a", "b", "c")}  # the same order in every panel, whatever the score
    colours = [layer["encoding"]["color"]["scale"] for panel in panels for layer in panel["layer"]
               if "color" in layer["encoding"]]
    assert all(c == colours[0] for c in colours) and colours[0]["domain"] == ["a", "b", "c"]
    grid = charts.head_grid(pd.DataFrame({"layer": [1, 1], "head": [0, 1], "property": ["pattern", "background"],
                                          "association": [0.2, 1.0], "texts": ["", ""]}), "t",
                            *charts.property_colours(["pattern", "background"])).to_dict()
    assert not any("opacity" in layer.get("encoding", {}) for layer in grid["layer"])  # hue only
    assert any(layer["encoding"].get("text", {}).get("field") == "cell" for layer in grid["layer"])


def test_the_all_heads_grid_keeps_its_text_while_an_upload_is_awaited(app):
    from tests.app.conftest import widget

    at = app("head_grid", run="tiny", img=1)
    widget(at, "text_input", "grid.t").input("green").run()
    widget(at, "radio", "grid.scale").set_value("own").run()
    widget(at, "radio", "grid.src").set_value("upload").run()
    no_exceptions(at)
    assert widget(at, "text_input", "grid.t").value == "green"
    assert widget(at, "radio", "grid.scale").value == "own"
