"""Label corrections: an append-only history, read by the label stage and applied live by every dashboard page.

Each AppTest here fails on the revision before the history (3078f89^): a correction showed only after
`clip-interpret label`, a second save erased the first's author and note, and typed text beat the dropdown.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dashboard import data
from dashboard.settings import ENV_DATA_DIR
from precompute import overrides, schema
from precompute.cli import app as cli
from precompute.errors import InputError
from tests.app.conftest import all_text, no_exceptions, open_page, widget
from tests.fixtures.runs import make_run

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the history file


def test_the_history_keeps_every_correction_and_the_latest_wins(tmp_path):
    path = tmp_path / schema.LABEL_OVERRIDES_FILE
    overrides.append_correction(path, 3, 1, "shapes", "ana", "top texts are shapes", now=T0)
    overrides.append_correction(path, 2, 0, "colors", now=T0)
    overrides.append_correction(path, 3, 1, "sizes", "bo", "no: big vs small", now=T0.replace(hour=10))
    assert path.read_text().splitlines()[0] == "layer,head,property,author,note,time"
    rows = overrides.read_history(path)
    assert [(c.property, c.author, c.note) for c in rows] == [
        ("shapes", "ana", "top texts are shapes"), ("colors", None, None), ("sizes", "bo", "no: big vs small")]
    assert rows[0].time == "2026-12-01T09:30:00+00:00"
    assert [c.property for c in overrides.head_history(rows, 3, 1)] == ["sizes", "shapes"]  # newest first
    assert {k: o.property for k, o in overrides.load_latest(path).items()} == {(3, 1): "sizes", (2, 0): "colors"}


def test_an_old_file_without_time_or_author_reads_and_keeps_its_rows(tmp_path):
    path = tmp_path / schema.LABEL_OVERRIDES_FILE
    path.write_text("layer,head,property,reviewed\n2,1,colors,yes\n")
    assert overrides.load_latest(path)[(2, 1)].property == "colors"
    assert overrides.read_history(path)[0].time is None
    overrides.append_correction(path, 2, 1, "shapes", "ana", now=T0)
    lines = path.read_text().splitlines()
    assert lines == ["layer,head,property,author,note,time,reviewed", "2,1,colors,,,,yes",
                     "2,1,shapes,ana,,2026-12-01T09:30:00+00:00,"]
    assert overrides.load_latest(path)[(2, 1)].property == "shapes"


@pytest.mark.parametrize("text, needle", [("layer,head\n1,1\n", "missing column(s) property"),
                                          ("layer,head,property\n1,x,colors\n", "line 2: head 'x' is not an integer"),
                                          ("layer,head,property\n1,1, \n", "line 2: empty property for L1.H1")])
def test_a_bad_history_file_is_one_line_naming_it(tmp_path, text, needle):
    path = tmp_path / schema.LABEL_OVERRIDES_FILE
    path.write_text(text)
    with pytest.raises(InputError, match=None) as info:
        overrides.read_history(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_apply_to_labels_marks_changed_labels_stale(tmp_path):
    run = make_run(tmp_path, "team", layers=(2, 3), heads=2).path
    labels = pq.read_table(run / schema.HEAD_LABELS_FILE)
    labels = labels.set_column(labels.schema.get_field_index("association"), "association",
                               pa.array([0.8] * labels.num_rows, pa.float32()))
    history = run / schema.LABEL_OVERRIDES_FILE
    overrides.append_correction(history, 3, 1, "shapes", "ana", now=T0)  # colors -> shapes
    overrides.append_correction(history, 2, 0, "colors", now=T0)  # make_run labels L2.H0 'locations'
    overrides.append_correction(history, 2, 0, "locations", "bo", "it was right", now=T0)  # back to the stored label
    out = {(r["layer"], r["head"]): r for r in overrides.apply_to_labels(labels, history).to_pylist()}
    changed, confirmed, untouched = out[(3, 1)], out[(2, 0)], out[(2, 1)]
    assert (changed["property"], changed["stored_property"], changed["labeller"]) == ("shapes", "colors", "manual")
    assert changed["stale"] and changed["label_source"] == "override"
    assert changed["association"] is None and changed["ccs5"] is None  # they were of 'colors'
    assert json.loads(changed["provenance"])["author"] == "ana"
    assert (confirmed["property"], confirmed["stale"], confirmed["label_source"]) == ("locations", False, "override")
    assert confirmed["association"] == pytest.approx(0.8)  # the same property: its scores stand
    assert (untouched["label_source"], untouched["stale"]) == ("labeller", False)


def test_the_label_stage_applies_the_latest_correction_of_a_history(runs_dir, tmp_path):
    shutil.copytree(runs_dir / "tiny", tmp_path / "tiny")
    run = tmp_path / "tiny"
    history = run / schema.LABEL_OVERRIDES_FILE
    overrides.append_correction(history, 2, 1, "colors", "ana", "first look", now=T0)
    overrides.append_correction(history, 2, 1, "shapes", "bo", "second look", now=T0)
    result = CliRunner().invoke(cli, ["label", "--out", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    labels = {(r["layer"], r["head"]): r for r in pq.read_table(run / schema.HEAD_LABELS_FILE).to_pylist()}
    assert (labels[(2, 1)]["property"], labels[(2, 1)]["labeller"]) == ("shapes", "manual")
    assert json.loads(labels[(2, 1)]["provenance"])["author"] == "bo"
    # applied by the stage now: the dashboard shows it as the labeller's, not stale
    row = data.head_labels(data.connect(tmp_path), "tiny").to_pandas().query("layer == 2 and head == 1").iloc[0]
    assert (row["property"], row["label_source"], bool(row["stale"])) == ("shapes", "labeller", False)


# --------------------------------------------------------------------------- the dashboard


@pytest.fixture
def team(tmp_path, monkeypatch):
    make_run(tmp_path, "team", d=8, layers=(2, 3), heads=2)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    return tmp_path / "team"


def correct(at, how: str, new: str = "", prop: str | None = None, author: str = "", note: str = ""):
    widget(at, "radio", "head.override.how").set_value(how)
    if prop is not None:
        [s for s in at.selectbox if s.label == "Property from the list"][0].set_value(prop)
    [t for t in at.text_input if t.label == "New property name"][0].set_value(new)
    [t for t in at.text_input if t.label == "Your name"][0].set_value(author)
    [t for t in at.text_input if t.label == "Why (optional)"][0].set_value(note)
    [b for b in at.button if b.label == "Save correction"][0].click().run()
    no_exceptions(at)
    return at


def grid_cells(at, run: str) -> dict[tuple[int, int], str]:
    """(layer, head) -> property of the Rankings grid of ``run``."""
    for chart in at.get("vega_lite_chart"):
        if run in json.dumps(json.loads(chart.proto.spec).get("title", "")):
            frame = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all().to_pandas()
            return {(int(r.layer), int(r.head)): r.property for r in frame.itertuples()}
    raise AssertionError(f"no head grid of {run}")


def test_a_correction_shows_at_once_on_every_page(team):
    at = correct(open_page("head", run="team", layer=3, head=1), "new", "shapes", author="ana")
    assert "Saved: L3.H1 → shapes." in [s.value for s in at.success]
    assert at.subheader[0].value == "L3.H1 · shapes"
    warning = " ".join(w.value for w in at.warning)
    assert "**Corrected** from **colors** to **shapes**" in warning
    assert f"clip-interpret label --out {team}" in warning
    assert "**Stale:** these scores are of the label **colors**" in all_text(at)
    # Rankings' grid, search by property and property neighbours read the corrected label too
    rankings = open_page(None, run="team")
    assert grid_cells(rankings, "team")[(3, 1)] == "shapes"
    search = open_page("search", run="team", by="property", prop="shapes")
    no_exceptions(search)
    assert list(zip(search.dataframe[0].value["layer"], search.dataframe[0].value["head"])) == [(3, 1)]
    pnn = open_page("property_nn", run="team", prop="shapes", img=100)
    no_exceptions(pnn)
    assert "the 1 head labelled **shapes** (L3.H1)" in all_text(pnn)


def test_a_correction_written_by_hand_shows_without_rerunning_label(team):
    """The same finding without the form: a row in the run's file (the format before the history) is applied."""
    (team / schema.LABEL_OVERRIDES_FILE).write_text("layer,head,property,author\n2,1,sizes,ana\n")
    head = open_page("head", run="team", layer=2, head=1)
    no_exceptions(head)
    assert head.subheader[0].value == "L2.H1 · sizes"
    assert grid_cells(open_page(None, run="team"), "team")[(2, 1)] == "sizes"
    search = open_page("search", run="team", by="property", prop="sizes")
    assert list(zip(search.dataframe[0].value["layer"], search.dataframe[0].value["head"])) == [(2, 1)]


def test_a_second_correction_keeps_the_first_ones_author_and_note(team):
    at = open_page("head", run="team", layer=2, head=1)
    correct(at, "new", "sizes", author="ana", note="big against small")
    correct(at, "existing", prop="colors", author="bo", note="the texts are colours")
    assert at.subheader[0].value == "L2.H1 · colors"
    history = [d.value for d in at.dataframe if "author" in d.value][0]
    assert history["author"].tolist() == ["bo", "ana"] and history["property"].tolist() == ["colors", "sizes"]
    assert history["note"].tolist() == ["the texts are colours", "big against small"]
    assert [c.author for c in overrides.read_history(team / schema.LABEL_OVERRIDES_FILE)] == ["ana", "bo"]


def test_the_list_or_new_name_choice_is_explicit(team):
    at = open_page("head", run="team", layer=3, head=0)
    correct(at, "existing", new="typed but not chosen", prop="colors")
    assert overrides.load_latest(team / schema.LABEL_OVERRIDES_FILE)[(3, 0)].property == "colors"
    correct(at, "new", new="")
    assert "Type the new property name" in " ".join(e.value for e in at.error)
    assert len(overrides.read_history(team / schema.LABEL_OVERRIDES_FILE)) == 1  # nothing written


def test_a_broken_corrections_file_names_its_line(team):
    (team / schema.LABEL_OVERRIDES_FILE).write_text("layer,head,property\n3,one,shapes\n")
    at = open_page("head", run="team", layer=3, head=1)
    assert "line 2: head 'one' is not an integer" in " ".join(e.value for e in at.error)
    assert not at.exception


def test_the_all_heads_grid_titles_a_corrected_head_and_says_its_scores_are_stale(runs_dir, tmp_path, monkeypatch):
    shutil.copytree(runs_dir / "tiny", tmp_path / "tiny")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    overrides.append_correction(tmp_path / "tiny" / schema.LABEL_OVERRIDES_FILE, 0, 1, "noise", "ana")
    image_id = int(data.image_meta(data.connect(tmp_path), "tiny").column("image_id")[0].as_py())
    at = open_page("head_grid", run="tiny", img=image_id, t="a photo")
    no_exceptions(at)
    assert "L0.H1 · noise" in [c for img in at.image for c in img.captions]
    assert "corrected label L0.H1 → noise, shown at once" in all_text(at)
