"""The toy-world generator: determinism, captions that tell the truth, vocabulary coverage, the probe-set writer."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from precompute.errors import InputError
from precompute.toyworld.captions import ATTRIBUTE_NAMES, ATTRIBUTES, CaptionDropout, mentioned, prompts
from precompute.toyworld.generator import RGB, render_batch, write_probe_set

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAINING_DROPOUT = CaptionDropout(shape=0.2, position=0.2, single=0.2)


def test_same_seed_gives_identical_batches():
    a = render_batch(64, 7, TRAINING_DROPOUT)
    b = render_batch(64, 7, TRAINING_DROPOUT)
    assert a.images.dtype == np.uint8 and a.images.shape == (64, 64, 64, 3)
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.codes, b.codes)
    assert a.captions == b.captions


def test_different_seeds_give_different_batches():
    a = render_batch(64, 7, TRAINING_DROPOUT)
    b = render_batch(64, 8, TRAINING_DROPOUT)
    c = render_batch(64, (7, 1), TRAINING_DROPOUT)
    assert not np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.captions != b.captions


def test_captions_name_exactly_the_drawn_named_attributes():
    batch = render_batch(2000, 3, TRAINING_DROPOUT)
    for record, named, text in zip(batch.records(), batch.named, batch.captions):
        found = mentioned(text)
        expected = {a: [record[a]] for a, flag in zip(ATTRIBUTE_NAMES, named) if flag}
        assert found == expected, text


def test_contrast_groups_differ_in_one_named_attribute():
    batch = render_batch(256, 5, TRAINING_DROPOUT, group=4)
    for start in range(0, 256, 4):
        codes, named = batch.codes[start:start + 4], batch.named[start:start + 4]
        differs = [i for i in range(len(ATTRIBUTE_NAMES)) if len(set(codes[:, i])) > 1]
        constant = [i for i in range(len(ATTRIBUTE_NAMES)) if len(set(codes[:, i])) == 1]
        assert len(differs) <= 1 and len(constant) >= len(ATTRIBUTE_NAMES) - 1
        for i in differs:
            assert named[:, i].all()  # the captions name what tells the group apart
            if len(ATTRIBUTES[ATTRIBUTE_NAMES[i]]) >= 4:
                assert len(set(codes[:, i])) == 4
    for record, named, text in zip(batch.records(), batch.named, batch.captions):
        assert mentioned(text) == {a: [record[a]] for a, flag in zip(ATTRIBUTE_NAMES, named) if flag}, text
    again = render_batch(256, 5, TRAINING_DROPOUT, group=4)
    assert (again.images == batch.images).all() and again.captions == batch.captions


def test_dropout_drops_and_full_captions_name_everything():
    dropped = render_batch(1000, 4, TRAINING_DROPOUT)
    full = render_batch(200, 4)
    assert 0.5 < dropped.named.mean() < 0.95
    assert dropped.named.any(axis=1).all()  # a caption always names something
    assert (dropped.named.sum(axis=1) == 1).mean() > 0.15  # the single-attribute captions
    assert full.named.all()
    for record, text in zip(full.records(), full.captions):
        assert mentioned(text) == {a: [record[a]] for a in ATTRIBUTE_NAMES}


def test_attribute_values_cover_the_vocabularies():
    batch = render_batch(1000, 5)
    for i, attribute in enumerate(ATTRIBUTE_NAMES):
        assert set(batch.codes[:, i]) == set(range(len(ATTRIBUTES[attribute]))), attribute
    assert len(ATTRIBUTES["shape"]) >= 6 and len(ATTRIBUTES["color"]) >= 8 and len(ATTRIBUTES["position"]) >= 5
    assert ATTRIBUTES["size"] == ("small", "large") and ATTRIBUTES["count"] == ("one", "two", "three")
    assert len(ATTRIBUTES["pattern"]) >= 4 and len(ATTRIBUTES["background"]) >= 4


def test_vocabularies_are_disjoint_and_lowercase():
    words = [v for values in ATTRIBUTES.values() for v in values]
    assert len(words) == len(set(words))
    assert all(w == w.lower() for w in words)


def test_images_show_the_object_colour_where_the_position_says():
    batch = render_batch(300, 6)
    pos = ATTRIBUTE_NAMES.index("position")
    col = ATTRIBUTE_NAMES.index("color")
    for image, codes in zip(batch.images, batch.codes):
        colour = np.array(RGB[ATTRIBUTES["color"][codes[col]]])
        hit = (np.abs(image.astype(int) - colour).sum(-1) < 6)  # [64, 64] exact object pixels
        ys, xs = np.nonzero(hit)
        assert len(xs) > 10
        where = ATTRIBUTES["position"][codes[pos]]
        cx, cy = xs.mean(), ys.mean()
        if where == "center":
            assert 24 <= cx <= 40 and 24 <= cy <= 40, (where, cx, cy)
        else:
            assert (cy < 32) == where.startswith("top") and (cx < 32) == where.endswith("left"), (where, cx, cy)


def test_large_objects_cover_more_pixels_than_small_ones():
    batch = render_batch(400, 9)
    col, size, count = (ATTRIBUTE_NAMES.index(a) for a in ("color", "size", "count"))
    area = {0: [], 1: []}
    for image, codes in zip(batch.images, batch.codes):
        colour = np.array(RGB[ATTRIBUTES["color"][codes[col]]])
        area[codes[size]].append((np.abs(image.astype(int) - colour).sum(-1) < 6).sum() / (codes[count] + 1))
    assert np.median(area[1]) > 1.5 * np.median(area[0])


def test_prompts_vary_one_attribute_only():
    for attribute in ATTRIBUTE_NAMES:
        for value, texts in zip(ATTRIBUTES[attribute], prompts(attribute)):
            for text in texts:
                assert mentioned(text) == {attribute: [value]}, text


def test_probe_set_layout_and_attributes(tmp_path):
    out = tmp_path / "probe"
    parquet = write_probe_set(out, 40, seed=1)
    table = pq.read_table(parquet).to_pylist()
    assert len(table) == 40
    assert set(table[0]) == {"path", *ATTRIBUTE_NAMES, "caption"}
    for row in table:
        folder, name = row["path"].split("/")
        assert folder == row["shape"] and name.endswith(".png")
        with Image.open(out / row["path"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        assert mentioned(row["caption"]) == {a: [row[a]] for a in ATTRIBUTE_NAMES}
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(r["path"] for r in table)


def test_probe_set_pixels_match_render_batch(tmp_path):
    write_probe_set(tmp_path, 5, seed=2)
    rows = pq.read_table(tmp_path / "attributes.parquet").to_pylist()
    from precompute.toyworld.generator import iter_batches

    expected = next(iter_batches(5, 2))
    for row, image in zip(rows, expected.images):
        assert np.array_equal(np.asarray(Image.open(tmp_path / row["path"])), image)


def test_probe_set_regenerates_identically_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "probe"
    write_probe_set(out, 12, seed=3)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_probe_set(out, 12, seed=3)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    write_probe_set(out, 6, seed=4)  # a smaller set replaces the old one cleanly
    assert len(list(out.rglob("*.png"))) == 6

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        write_probe_set(foreign, 5, seed=0)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_counts_are_refused(tmp_path):
    with pytest.raises(InputError, match=">= 1"):
        write_probe_set(tmp_path / "x", 0, seed=0)


def test_cli_images_writes_a_probe_set(tmp_path):
    from typer.testing import CliRunner

    from precompute.toyworld.cli import app

    result = CliRunner().invoke(app, ["images", "--n", "7", "--seed", "1", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert len(pq.read_table(tmp_path / "p" / "attributes.parquet")) == 7
    for command in ("images", "train", "evaluate"):
        help_text = CliRunner().invoke(app, [command, "--help"]).output
        assert "--" in help_text and "Show this message" in help_text


def test_a_killed_attribute_write_leaves_a_folder_that_is_still_a_probe_set(tmp_path):
    out = tmp_path / "probe"
    write_probe_set(out, 4, seed=0)
    (out / ".attributes.parquet.abc123.tmp").write_bytes(b"half a parquet")  # store's temp name, write killed
    write_probe_set(out, 4, seed=0)  # recognised and replaced, not refused as a foreign folder
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["attributes.parquet"]
    assert len(pq.read_table(out / "attributes.parquet")) == 4
