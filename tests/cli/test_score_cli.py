"""`clip-interpret score` loads the model only for what needs it: zero-shot accuracy, which needs class labels."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from precompute import pipeline, schema
from precompute.cli import app

TINY = ["--model", "test-tiny", "--random-init", "--quiet"]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_score_of_an_unlabelled_probe_set_never_loads_the_model(tmp_path, monkeypatch):
    flat = tmp_path / "flat"  # no class folders: the images have no labels, so there is no zero-shot to measure
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(flat / f"img{i}.png")
    out = tmp_path / "run"
    invoke("run", *TINY, "--images", flat, "--out", out, "--k", 4)
    before = pq.read_table(out / schema.HEAD_SCORES_FILE)

    def refuse(*args, **kwargs):
        raise AssertionError("score loaded the model for a probe set without class labels")

    monkeypatch.setattr(pipeline, "loaded_for_run", refuse)
    invoke("score", "--out", out, "--force")
    assert pq.read_table(out / schema.HEAD_SCORES_FILE).equals(before)  # the same scores, from the files alone
    model = pq.read_table(out / schema.MODEL_SCORES_FILE).to_pylist()[0]
    assert model["zeroshot_intact"] is None
