"""A run made before the run-folder and weights-record restructuring equals one made after it, table for table.

The revision before the change is exported with ``git archive`` and run as it was (toy-s, shipped weights,
a 40-image toy-world probe set); then the current ``precompute/`` replaces the exported one in place, as an
upgrade would, and the same command makes a second run and reruns the first. Skipped outside a git
checkout that holds the revision.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import precompute
from precompute import registry, schema, store

BEFORE = "0d72009"  # the last revision with the manifest's pretrained string and the run layout restated
REPO = Path(precompute.__file__).resolve().parent.parent


def _export(rev: str, into: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"revision {rev} is not in this clone")
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "precompute", "data"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def _cli(tree: Path, *args) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "CLIP_INTERPRET_DATA_DIR": str(tree)}
    result = subprocess.run([sys.executable, "-m", "precompute.cli", *map(str, args)], cwd=tree, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _tables(run: Path) -> dict[str, object]:
    names = [n for n in schema.TABLES if (run / n).is_file()]
    names += [str(p.relative_to(run)) for p in store.all_head_files(run)]
    return {n: pq.read_table(run / n) for n in names}


def test_a_run_before_the_change_equals_one_after_it_and_stays_current(tmp_path):
    tree = tmp_path / "tree"
    _export(BEFORE, tree)
    probe = tmp_path / "probe"
    _cli(tree, "toyworld", "images", "--n", 40, "--seed", 3, "--out", probe)
    run = ["run", "--model", "toy-s", "--images", probe, "--quiet", "--out"]
    before, after = tmp_path / "a" / "toy-s", tmp_path / "b" / "toy-s"  # same folder name: model_scores.run
    _cli(tree, *run, before)
    old_manifest = json.loads((before / schema.MANIFEST).read_text())
    assert old_manifest["model"]["pretrained"] == f"local-dir:{tree / 'data' / 'models' / 'toy-s'}"

    shutil.rmtree(tree / "precompute")  # the upgrade: the current code, the same installation folder
    shutil.copytree(REPO / "precompute", tree / "precompute", ignore=shutil.ignore_patterns("__pycache__"))
    _cli(tree, *run, after)
    assert _cli(tree, *run, before).count("current, skipped") == 4  # an old run is not redone, nor refused

    old, new = _tables(before), _tables(after)
    assert sorted(old) == sorted(new) and len(new) == len(schema.TABLES) + 16  # toy-s: 4 layers x 4 heads
    for name in old:
        if name == schema.MODEL_SCORES_FILE:  # its pretrained column names the weights, not a path, now
            assert old[name].column("pretrained").to_pylist() == [old_manifest["model"]["pretrained"]]
            assert new[name].column("pretrained").to_pylist() == ["shipped:toy-s"]
            old[name], new[name] = old[name].drop_columns(["pretrained"]), new[name].drop_columns(["pretrained"])
        assert new[name].equals(old[name]), name
        assert new[name].schema.metadata == old[name].schema.metadata, name  # head_summary's decompose key

    new_manifest = json.loads((after / schema.MANIFEST).read_text())
    assert new_manifest["model"]["weights"]["kind"] == "shipped"
    assert str(tree / "data" / "models") not in json.dumps(new_manifest)
    migrated = store.read_manifest(before)
    assert migrated["model"] == new_manifest["model"]  # the old record migrates to the new one
    assert {s: v["key"] for s, v in migrated["stages"].items()} == {s: v["key"] for s, v in
                                                                    new_manifest["stages"].items()}
    spec = registry.spec_from_manifest(migrated["model"], "cpu")
    assert spec == registry.spec_from_manifest(new_manifest["model"], "cpu") and spec[0] is not None
