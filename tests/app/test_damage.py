"""Fault injection: a damaged run folder is reported on every page, never a traceback, never a silent loss.

One real run of the tiny random model (in chunks of 8 images, so each head has several part files) is made
once; each test copies it, damages the copy (truncates a head part, deletes one, truncates texts.parquet,
corrupts the images table, writes an invalid manifest next to it) and opens pages with AppTest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dashboard.settings import ENV_DATA_DIR
from precompute import schema
from precompute.labels import MIXED
from tests.app.conftest import all_text, no_exceptions, open_page
from tests.fixtures.dashboard_runs import TINY, _invoke

RUN = "tiny"
REPAIR = "clip-interpret run --model test-tiny --random-init"  # how the repair command of a `run` run starts
PART = "head_vectors/layer=2/head=1/part-00001.parquet"  # not the first part: binding a view reads the first footer


@pytest.fixture(scope="module")
def made(tmp_path_factory, runs_dir) -> Path:
    """A finished run of test-tiny over the session's images, in chunks of 8 images."""
    out = tmp_path_factory.mktemp("damage") / RUN
    _invoke("run", *TINY, "--images", runs_dir.parent / "images", "--out", out, "--k", 8, "--chunk-size", 8)
    assert len(list((out / "head_vectors" / "layer=2" / "head=1").glob("part-*.parquet"))) >= 2
    return out


@pytest.fixture
def runs(made, tmp_path, monkeypatch) -> Path:
    """A data folder holding a fresh copy of the run, for one test to damage."""
    root = tmp_path / "runs"
    shutil.copytree(made, root / RUN)
    monkeypatch.setenv(ENV_DATA_DIR, str(root))
    return root


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def error_text(at) -> str:
    return "\n".join(str(e.value) for e in at.error)


def warning_text(at) -> str:
    return "\n".join(str(e.value) for e in [*at.warning, *at.sidebar.warning])


# --------------------------------------------------------------------------- a truncated head part


def test_a_truncated_head_part_is_an_error_naming_it_on_the_head_explorer(runs):
    truncate(runs / RUN / PART)
    at = open_page("head", run=RUN, layer=2, head=1)
    no_exceptions(at)
    errors = error_text(at)
    assert f"the file {PART} cannot be read" in errors
    assert REPAIR in errors and f"--out {runs / RUN}" in errors
    # the health line, above the page, and in the sidebar, names it before anything is read
    assert f"Run {RUN} is damaged" in warning_text(at) and PART in warning_text(at)


@pytest.mark.parametrize("page, params", [
    ("image_nn", {"layer": 2, "head": 1}),
    ("text_nn", {"layer": 2, "head": 1, "t": "a red object"}),
])
def test_a_truncated_head_part_is_an_error_naming_it_on_the_neighbour_pages(runs, page, params):
    truncate(runs / RUN / PART)
    at = open_page(page, run=RUN, **params)
    no_exceptions(at)
    errors = error_text(at)
    assert f"the file {PART} cannot be read" in errors and "No magic bytes" in errors
    assert REPAIR in errors


def test_every_page_shows_the_health_line_of_a_damaged_run(runs):
    truncate(runs / RUN / PART)
    for page in ("rankings", "search", "sql", "topic_map"):
        at = open_page(page, run=RUN)
        no_exceptions(at)
        sidebar = "\n".join(str(w.value) for w in at.sidebar.warning)
        assert f"**{RUN}**: 1 damaged file: {PART}" in sidebar, page


def test_a_healthy_run_says_so(runs):
    at = open_page("head", run=RUN, layer=2, head=1)
    no_exceptions(at)
    assert any(str(c.value).startswith("Health: healthy (") for c in at.caption)
    assert "all 1 run check out" in "\n".join(str(c.value) for c in at.sidebar.caption)
    assert not at.error and not at.warning


# --------------------------------------------------------------------------- a deleted head part


@pytest.mark.parametrize("page, params", [
    ("image_nn", {"layer": 2, "head": 1}),
    ("text_nn", {"layer": 2, "head": 1, "t": "a red object"}),
    ("head", {"layer": 2, "head": 1}),
])
def test_a_deleted_head_part_is_a_coverage_note_where_neighbours_are_shown(runs, page, params):
    total = json.loads((runs / RUN / schema.MANIFEST).read_text())["images"]["count"]
    left = total - pq.read_metadata(runs / RUN / PART).num_rows
    (runs / RUN / PART).unlink()
    at = open_page(page, run=RUN, **params)
    no_exceptions(at)
    warnings = warning_text(at)
    assert f"L2.H1 covers {left:,} of {total:,} images" in warnings, warnings
    assert "neighbours are searched among those only" in warnings
    assert f"layer 2 head 1 covers {left:,} of {total:,} images" in warnings  # the health line (cheap check)
    assert REPAIR in warnings


def test_a_query_image_the_head_no_longer_covers_is_an_error_not_a_traceback(runs):
    lost = pq.read_table(runs / RUN / PART, columns=["image_id"]).column("image_id").to_pylist()
    (runs / RUN / PART).unlink()
    at = open_page("image_nn", run=RUN, layer=2, head=1, img=lost[0])
    no_exceptions(at)
    assert f"L2.H1 has no vector for image {lost[0]}" in error_text(at)


def test_a_property_whose_head_lost_a_part_averages_the_images_all_its_heads_cover_and_says_so(runs):
    labels = pq.read_table(runs / RUN / schema.HEAD_LABELS_FILE).to_pylist()
    first = next(r for r in labels if r["property"] != MIXED)
    part = runs / RUN / f"head_vectors/layer={first['layer']}/head={first['head']}/part-00001.parquet"
    total = json.loads((runs / RUN / schema.MANIFEST).read_text())["images"]["count"]
    left = total - pq.read_metadata(part).num_rows
    part.unlink()
    at = open_page("property_nn", run=RUN, prop=first["property"])
    no_exceptions(at)
    assert f"The {first['property']} heads' mean covers {left:,} of {total:,} images" in warning_text(at)
    assert not at.error and len(at.dataframe) == 1  # the neighbours, among the images every head covers


# --------------------------------------------------------------------------- other tables


def test_a_truncated_texts_table_is_an_error_naming_it_in_the_head_explorer(runs):
    truncate(runs / RUN / schema.TEXTS_FILE)
    at = open_page("head", run=RUN, layer=2, head=1, dir="text")
    no_exceptions(at)
    errors = error_text(at)
    assert f"the file {schema.TEXTS_FILE} cannot be read" in errors
    assert f"clip-interpret textspan --out {runs / RUN}" in errors  # the textspan stage and those after it
    assert schema.TEXTS_FILE in warning_text(at)


def test_an_unreadable_images_table_is_not_a_run_without_images(runs):
    (runs / RUN / schema.IMAGES_FILE).write_bytes(b"corrupt")
    at = open_page("image_nn", run=RUN, layer=2, head=1)
    no_exceptions(at)
    errors = error_text(at)
    assert f"the file {schema.IMAGES_FILE} cannot be read" in errors and "has no images" not in all_text(at)
    assert REPAIR in errors


def test_unreadable_scores_are_not_no_scores(runs):
    truncate(runs / RUN / schema.HEAD_SCORES_FILE)
    at = open_page("head", run=RUN, layer=2, head=1)
    no_exceptions(at)
    assert f"the file {schema.HEAD_SCORES_FILE} cannot be read" in error_text(at)
    assert "No scores for this head" not in all_text(at)
    assert f"clip-interpret score --out {runs / RUN}" in error_text(at)


def test_one_runs_unreadable_labels_leave_the_rankings_of_the_others(runs, made):
    shutil.copytree(made, runs / "other")
    truncate(runs / RUN / schema.HEAD_LABELS_FILE)
    at = open_page(run="other")
    no_exceptions(at)
    assert not at.error and [t.value for t in at.title] == ["Rankings"]
    assert f"run '{RUN}': the file {schema.HEAD_LABELS_FILE} cannot be read" in warning_text(at)
    assert f"clip-interpret label --out {runs / RUN}" in warning_text(at)
    grids = [json.dumps(json.loads(c.proto.spec), ensure_ascii=False) for c in at.get("vega_lite_chart")[1:]]
    assert len(grids) == 1 and "other · test-tiny" in grids[0]  # the score bars, then the one readable head grid


# --------------------------------------------------------------------------- links to runs not shown


def test_a_link_to_a_skipped_run_says_why_instead_of_showing_another(runs):
    (runs / "broken").mkdir()
    (runs / "broken" / schema.MANIFEST).write_text("{not json")
    at = open_page(run="broken")
    no_exceptions(at)
    errors = error_text(at)
    assert "The link names run **broken**, which cannot be shown: it was skipped" in errors
    assert "the manifest is not valid JSON" in errors
    assert [t.value for t in at.title] == []  # no other run's page under it
    assert "**broken** (not shown)" in warning_text(at)  # and the sidebar lists it on every page
    at.run()  # the next rerun (the sidebar's run now in the URL) shows the run the user is on
    no_exceptions(at)
    assert not at.error and [t.value for t in at.title] == ["Rankings"]


def test_a_link_to_an_unknown_run_names_the_runs_there_are(runs):
    at = open_page(run="nope")
    no_exceptions(at)
    assert f"The link names run **nope**, which cannot be shown: there is no run of that name" in error_text(at)
    assert f"(runs: {RUN})" in error_text(at)
