"""`clip-interpret decompose` end to end on a tiny random model: tables, bad files, refusals, kill and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from precompute import schema, store
from precompute.cli import app
from precompute.decompose import Decomposer
from precompute.registry import ModelSpec, WeightsSource, load_model
from tests.conftest import make_image_folder

runner = CliRunner()
TINY = ["--model", "test-tiny", "--random-init", "--quiet"]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_decompose_writes_every_table_and_lists_bad_files(image_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke("decompose", *TINY, "--images", str(image_folder), "--out", str(out), "--chunk-size", "5",
                    "--batch-size", "3", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "12 images decomposed, 3 skipped" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {row["path"]: row["reason"] for row in manifest["images"]["skipped"]}
    assert set(reasons) == {"cat/corrupt.jpg", "cat/empty.png", "dog/truncated.png"}
    assert "0 bytes" in reasons["cat/empty.png"] and "truncated" in reasons["dog/truncated.png"]
    assert manifest["images"]["ignored"] == [["dog/notes.txt", "not an image file type (.txt)"]]
    assert manifest["layers"] == [0, 1, 2] and manifest["heads"] == 4
    assert manifest["model"]["architecture"] == "test-tiny" and manifest["stages"]["decompose"]["done"]
    assert {"open_clip", "torch", "clip_interpret"} <= set(manifest["versions"])
    assert not (out / store.WORK_DIR).exists()

    images = pq.read_table(out / schema.IMAGES_FILE)
    assert images.schema.equals(schema.IMAGES)
    assert images.num_rows == 12
    assert set(images.column("label").to_pylist()) == {"cat", "dog"}
    row = images.slice(0, 1).to_pylist()[0]
    assert (row["width"], row["height"]) == (48, 40)
    from PIL import Image
    import io
    thumb = Image.open(io.BytesIO(row["thumbnail"]))
    assert thumb.format == "JPEG" and max(thumb.size) <= schema.THUMBNAIL_SIZE


def test_head_vectors_read_back_through_duckdb_and_match_the_decomposer(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=4, bad_files=False)
    out = tmp_path / "run"
    assert invoke("decompose", *TINY, "--images", str(folder), "--out", str(out), "--layers", "1,2",
                  "--workers", "0").exit_code == 0
    con = duckdb.connect()
    rows = con.execute(
        f"""SELECT count(*), count(DISTINCT (image_id, layer, head)), min(layer), max(layer), max(head)
            FROM read_parquet('{out}/head_vectors/*/*/*.parquet', hive_partitioning=true)"""
    ).fetchone()
    assert rows == (8 * 2 * 4, 8 * 2 * 4, 1, 2, 3)
    sims = con.execute(
        f"""SELECT image_id, array_cosine_similarity(vector::FLOAT[32], vector::FLOAT[32])
            FROM read_parquet('{out}/head_vectors/*/*/*.parquet', hive_partitioning=true)
            WHERE layer = 2 AND head = 1 ORDER BY image_id"""
    ).fetchall()
    assert len(sims) == 8 and all(abs(s - 1) < 1e-5 for _, s in sims)

    # Recompute in-process with the same weights (same seed) and compare the stored vectors.
    loaded = load_model(ModelSpec("test-tiny", WeightsSource("none", "0")))
    from precompute.images import open_image

    paths = pq.read_table(out / schema.IMAGES_FILE).column("path").to_pylist()
    batch = torch.stack([loaded.preprocess(open_image(folder / p)[0]) for p in paths])
    dec = Decomposer(loaded.model, [1, 2])(batch)
    ids, vectors = store.read_head(out, 2, 1)
    np.testing.assert_allclose(vectors, dec.heads.numpy()[ids, 1, 1], atol=1e-5)
    emb = pq.read_table(out / schema.IMAGE_EMBEDDINGS_FILE)
    np.testing.assert_allclose(store.arrow_to_vectors(emb.column("embedding")), dec.embedding.numpy(), atol=1e-5)


def test_reading_one_head_opens_only_that_heads_files(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=2, bad_files=False)
    out = tmp_path / "run"
    assert invoke("decompose", *TINY, "--images", str(folder), "--out", str(out), "--workers", "0").exit_code == 0
    files = store.head_files(out, 2, 3)
    assert files and all("layer=2/head=3" in f.as_posix() for f in files)
    plan = duckdb.connect().execute(
        f"""EXPLAIN ANALYZE SELECT count(*) FROM read_parquet('{out}/head_vectors/*/*/*.parquet',
            hive_partitioning=true) WHERE layer = 2 AND head = 3"""
    ).fetchall()
    text = "\n".join(str(r) for r in plan)
    assert "Total Files Read: 1" in text or "Total Files Read:   1" in text or "Files Read: 1" in text, text


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_run_dir_of_another_model_or_layers_is_refused_and_untouched(image_folder, tmp_path):
    out = tmp_path / "run"
    assert invoke("decompose", *TINY, "--images", str(image_folder), "--out", str(out), "--workers", "0").exit_code == 0
    before = _tree_digest(out)
    other_model = invoke("decompose", "--model", "test-tiny-ls", "--random-init", "--quiet", "--images",
                         str(image_folder), "--out", str(out))
    assert other_model.exit_code == 2 and "another model" in other_model.output
    other_layers = invoke("decompose", *TINY, "--images", str(image_folder), "--out", str(out), "--layers", "2")
    assert other_layers.exit_code == 2 and "layers [0, 1, 2]" in other_layers.output
    again = invoke("decompose", *TINY, "--images", str(image_folder), "--out", str(out))
    assert again.exit_code == 0 and "already complete" in again.output
    assert _tree_digest(out) == before


@pytest.mark.parametrize("case", ["missing", "empty", "file", "not_a_run"])
def test_bad_folders_give_a_clear_refusal(tmp_path, case):
    images, out = tmp_path / "images", tmp_path / "run"
    if case == "empty":
        images.mkdir()
    elif case == "file":
        images.write_text("x")
    elif case == "not_a_run":
        make_image_folder(images, per_class=1, bad_files=False)
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    result = invoke("decompose", *TINY, "--images", str(images), "--out", str(out))
    assert result.exit_code == 2
    expected = {"missing": "not found", "empty": "no images", "file": "must be a folder", "not_a_run": "not a run folder"}
    assert expected[case] in result.output
    assert "Traceback" not in result.output
    if case == "not_a_run":
        assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_unknown_model_exits_2_without_traceback(image_folder, tmp_path):
    result = invoke("decompose", "--model", "ViT-B-33", "--random-init", "--images", str(image_folder))
    assert result.exit_code == 2
    assert "unknown architecture 'ViT-B-33'" in result.output and "ViT-B-32" in result.output


def _rows_per_key(out: Path) -> tuple[int, int, int]:
    return duckdb.connect().execute(
        f"""SELECT count(*), count(DISTINCT (image_id, layer, head)), count(DISTINCT image_id)
            FROM read_parquet('{out}/head_vectors/*/*/*.parquet', hive_partitioning=true)"""
    ).fetchone()


@pytest.mark.slow
def test_killed_run_resumes_with_exactly_one_row_per_image_layer_head(tmp_path):
    """Kill a real `clip-interpret decompose` process mid-run (SIGKILL), rerun the same command, compare."""
    folder = make_image_folder(tmp_path / "imgs", per_class=60, size=(64, 64), bad_files=False)
    args = ["decompose", *TINY, "--images", str(folder), "--chunk-size", "8", "--batch-size", "2", "--workers", "0"]
    cmd = [sys.executable, "-m", "precompute.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(killed_out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    work = killed_out / store.WORK_DIR / "decompose"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("chunk-*/DONE"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(work.glob("chunk-*/DONE")))
    manifest = json.loads((killed_out / "manifest.json").read_text())
    assert 3 <= done_at_kill < 15 and not manifest["stages"]["decompose"]["done"], "killed too late to test resume"

    resumed = subprocess.run(cmd + args + ["--out", str(killed_out)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    fresh_out = tmp_path / "fresh"
    fresh = subprocess.run(cmd + args + ["--out", str(fresh_out)], env=env, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr

    assert _rows_per_key(killed_out) == _rows_per_key(fresh_out) == (120 * 3 * 4, 120 * 3 * 4, 120)
    assert pq.read_table(killed_out / schema.IMAGES_FILE).num_rows == 120
    for layer, head in [(0, 0), (2, 3)]:
        ids_a, vec_a = store.read_head(killed_out, layer, head)
        ids_b, vec_b = store.read_head(fresh_out, layer, head)
        order_a, order_b = np.argsort(ids_a), np.argsort(ids_b)
        assert np.array_equal(ids_a[order_a], np.arange(120)) and np.array_equal(ids_b[order_b], np.arange(120))
        np.testing.assert_array_equal(vec_a[order_a], vec_b[order_b])  # seeded random init: same weights


def test_worker_processes_ship_uint8_crops_and_give_the_same_vectors_as_the_main_process(tmp_path):
    """--workers 2 (uint8 crops over shared memory, normalised in the main process) == --workers 0, bit for bit."""
    folder = make_image_folder(tmp_path / "images", per_class=5)
    tables = {}
    for workers in ("0", "2"):
        out = tmp_path / f"run{workers}"
        result = invoke("decompose", *TINY, "--images", str(folder), "--out", str(out), "--batch-size", "3",
                        "--workers", workers)
        assert result.exit_code == 0, result.output
        parts = sorted((out / "head_vectors").rglob("*.parquet"))
        tables[workers] = [pq.read_table(p) for p in parts]
        assert len(parts) == 12 and tables[workers][0].num_rows == 10
    assert all(a.equals(b) for a, b in zip(tables["0"], tables["2"]))
