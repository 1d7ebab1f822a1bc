"""AppTest: head search (issue 10, item 2). Words match as tokens and stems, tables carry the head's label,
meaning weights a head's texts by pick order, and a query far from the pool gets a warning.

Runs of their own: ``words`` (synthetic, chosen TEXTSPAN texts), ``weighted`` (synthetic texts whose embeddings
are placed relative to the tiny model's embedding of the query) and ``toy-s`` (the shipped toy model on a few
images, with the toyworld pool: the vocabulary the far-from-pool threshold was calibrated on).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dashboard.settings import ENV_DATA_DIR
from precompute import schema
from precompute.cli import app as cli
from precompute.registry import ModelSpec, WeightsSource, load_model
from precompute.textenc import encode_texts
from tests.app.conftest import all_text, no_exceptions, open_page
from tests.conftest import make_image_folder
from tests.fixtures.runs import PROPERTIES, make_run, vectors, write

TINY = {"architecture": "test-tiny", "weights": {"kind": "none", "value": "0"}}
QUERY = "zebra"


def write_picks(path, picks: dict[tuple[int, int], list[tuple[int, str]]]) -> None:
    """head_texts.parquet from {(layer, head): [(text_id, text), ...] in pick order}."""
    rows = [(l, h, r, t, text) for (l, h), texts in picks.items() for r, (t, text) in enumerate(texts, 1)]
    write(path / schema.HEAD_TEXTS_FILE, {
        "layer": [r[0] for r in rows], "head": [r[1] for r in rows], "rank": [r[2] for r in rows],
        "text_id": [r[3] for r in rows], "text": [r[4] for r in rows], "property": [None] * len(rows),
        "variance_explained": [0.1 * r[2] for r in rows]}, schema.HEAD_TEXTS)


def write_pool(path, texts: list[str], emb: np.ndarray) -> None:
    write(path / schema.TEXTS_FILE, {"text_id": np.arange(len(texts), dtype=np.int32), "text": texts,
                                     "property": [None] * len(texts), "embedding": vectors(emb)}, schema.TEXTS)


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    runs = root / "runs"
    # words: make_run labels heads by (layer + head) % 4 of PROPERTIES
    words = make_run(runs, "words", d=8, layers=(2, 3), heads=2, n_images=6)
    texts = ["a checkered background", "a red object", "a striped backdrop", "dotted shapes", "a small thing"]
    write_pool(words.path, texts, np.eye(len(texts), 8, dtype=np.float32))
    write_picks(words.path, {(2, 0): [(0, texts[0]), (4, texts[4])], (2, 1): [(4, texts[4]), (1, texts[1])],
                             (3, 0): [(3, texts[3]), (2, texts[2])], (3, 1): [(4, texts[4])]})
    # weighted: the tiny model's embedding of QUERY is the pool text "zebra"; head (3, 1) has it at rank 15,
    # head (2, 0) has a text of cosine 0.8 to it at rank 1
    tiny = load_model(ModelSpec("test-tiny", WeightsSource("none", "0"), "cpu"))
    d = tiny.info.embed_dim
    weighted = make_run(runs, "weighted", d=d, layers=(2, 3), heads=2, n_images=6)
    q = encode_texts(tiny, [QUERY])[0].astype(np.float64)
    basis = np.linalg.qr(np.column_stack([q, np.random.default_rng(0).standard_normal((d, 20))]))[0]  # [d, 21]
    orth = (basis[:, 1:] * np.sign(basis[:, :1].T @ q)).T  # [20, d] unit vectors orthogonal to q
    pool = ["zebra", "nearly a zebra"] + [f"other {i}" for i in range(20)]
    emb = np.vstack([q, 0.8 * q + 0.6 * orth[0], orth]).astype(np.float32)  # [22, d]
    write_pool(weighted.path, pool, emb)
    late = [(2 + i, pool[2 + i]) for i in range(14)] + [(0, "zebra")]
    write_picks(weighted.path, {(3, 1): late, (2, 0): [(1, "nearly a zebra"), (2, "other 0")],
                                (2, 1): [(5, "other 3")], (3, 0): [(6, "other 4")]})
    manifest = json.loads((weighted.path / schema.MANIFEST).read_text())
    manifest["model"] = {**TINY, "embed_dim": d}
    (weighted.path / schema.MANIFEST).write_text(json.dumps(manifest))
    # toy-s: the shipped toy model and its toyworld pool
    images = make_image_folder(root / "images", per_class=6)
    result = CliRunner().invoke(cli, ["run", "--model", "toy-s", "--images", str(images), "--out",
                                      str(runs / "toy-s"), "--quiet"])
    assert result.exit_code == 0, result.output
    return runs


@pytest.fixture
def page(search_dir, monkeypatch):
    monkeypatch.setenv(ENV_DATA_DIR, str(search_dir))
    return lambda **params: open_page("search", **params)


def heads(frame) -> list[tuple[int, int]]:
    return list(zip(frame["layer"].astype(int), frame["head"].astype(int)))


def test_red_never_matches_checkered(page):
    at = page(run="words", q="red")
    no_exceptions(at)
    table = at.dataframe[0].value
    assert heads(table) == [(2, 1)]  # "a red object"; the old substring match put "checkered" (2, 0) first
    assert table["texts"].tolist() == ["a red object"]


def test_stripes_finds_striped(page):
    at = page(run="words", q="stripes")
    no_exceptions(at)
    table = at.dataframe[0].value
    assert heads(table) == [(3, 0)] and table["texts"].tolist() == ["a striped backdrop"]
    assert heads(page(run="words", q="dots").dataframe[0].value) == [(3, 0)]  # "dotted shapes"


def test_result_tables_show_each_heads_label(page):
    at = page(run="words", q="a small thing")
    table = at.dataframe[0].value
    assert table.columns.tolist()[:3] == ["layer", "head", "label"]
    assert [(l, h, lab) for l, h, lab in zip(table["layer"], table["head"], table["label"])] == \
        [(l, h, PROPERTIES[(l + h) % len(PROPERTIES)]) for l, h in heads(table)]
    at = page(run="weighted", q=QUERY)
    meaning = at.dataframe[-1].value
    assert "label" in meaning.columns and meaning["label"].notna().all()


def test_meaning_ranks_by_the_top_texts_not_a_15th_text(page):
    at = page(run="weighted", q=QUERY)
    no_exceptions(at)
    meaning = at.dataframe[-1].value
    # the old ranking (best cosine of any text) put (3, 1) first: its 15th text is the query itself
    assert heads(meaning)[0] == (2, 0)
    w = 1 / np.arange(1, 3)
    assert meaning["similarity"][0] == pytest.approx(0.8 * w[0] / w.sum(), abs=1e-4)
    late = meaning[(meaning["layer"] == 3) & (meaning["head"] == 1)]
    assert late["rank"].tolist() == [15] and late["best_text"].tolist() == ["zebra"]
    assert late["similarity"].iloc[0] == pytest.approx((1 / 15) / (1 / np.arange(1, 16)).sum(), abs=1e-4)
    assert "weighted 1/rank" in all_text(at)


@pytest.mark.parametrize("query, far", [("colour", True), ("a dog", True), ("a red shape", False)])
def test_a_query_far_from_the_pool_is_said_so(page, query, far):
    at = page(run="toy-s", q=query)
    no_exceptions(at)
    warned = [w.value for w in at.warning if "far from every text this run's pool knows" in w.value]
    assert bool(warned) == far, [w.value for w in at.warning]
    assert at.dataframe  # the ranking is still shown
