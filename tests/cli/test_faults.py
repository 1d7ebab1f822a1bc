"""Faults injected into runs: a file-size limit mid-write, killed writes' leftovers, and who can read the files."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from precompute import store
from tests.conftest import make_image_folder

TINY = ["--model", "test-tiny", "--random-init", "--quiet", "--device", "cpu", "--workers", "0"]


def clip_interpret(*args: str, umask: int = 0o022, fsize: int | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, with its own umask and (optionally) a file-size limit in bytes."""

    def limits():
        os.umask(umask)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "precompute.cli", *args], capture_output=True, text=True,
                          preexec_fn=limits, env=env, timeout=300)


def _tables(run: Path) -> dict[str, object]:
    return {str(p.relative_to(run)): pq.read_table(p) for p in sorted(run.rglob("*.parquet"))}


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_class=4, bad_files=False)


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_run_files_follow_the_umask_not_0600(folder, tmp_path, umask, file_mode, dir_mode):
    run = tmp_path / "run"
    done = clip_interpret("decompose", *TINY, "--images", str(folder), "--out", str(run), umask=umask)
    assert done.returncode == 0, done.stderr
    files = [p for p in run.rglob("*") if p.is_file()]
    assert files and {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(file_mode)}
    dirs = [run, *[p for p in run.rglob("*") if p.is_dir()]]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs} == {oct(dir_mode)}


def test_a_file_size_limit_is_one_clear_line_and_the_rerun_resumes_to_identical_tables(folder, tmp_path):
    clean = tmp_path / "clean"
    assert clip_interpret("decompose", *TINY, "--images", str(folder), "--out", str(clean),
                          "--chunk-size", "2").returncode == 0
    run = tmp_path / "run"
    failed = clip_interpret("decompose", *TINY, "--images", str(folder), "--out", str(run), "--chunk-size", "2",
                            fsize=3000)
    assert failed.returncode == 74, failed.stderr
    assert "Traceback" not in failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "file too large" in errors[0] and "rerun the same command" in errors[0]
    assert len(failed.stderr.strip().splitlines()) <= 3

    resumed = clip_interpret("decompose", *TINY, "--images", str(folder), "--out", str(run), "--chunk-size", "2")
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = _tables(run), _tables(clean)
    assert ours.keys() == theirs.keys() and len(ours) > 2
    assert all(ours[k].equals(theirs[k]) for k in ours)  # images, embeddings, every head part
    assert not list(run.rglob(f"*{store.TEMP_SUFFIX}"))


def test_the_next_stage_sweeps_temp_files_that_killed_writes_left(folder, tmp_path):
    run = tmp_path / "run"
    assert clip_interpret("decompose", *TINY, "--images", str(folder), "--out", str(run)).returncode == 0
    orphans = [run / ".manifest.json.k1ll3d.tmp", run / ".head_labels.parquet.x9.tmp",
               run / "head_vectors" / "layer=0" / "head=0" / ".part-00000.parquet.q.tmp"]
    for p in orphans:
        p.write_bytes(b"half a file")
    done = clip_interpret("textspan", "--out", str(run), "--pool", "toyworld", "--quiet", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert not [p for p in orphans if p.exists()]


def test_decompose_sweeps_its_own_leftovers_too(folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".images.parquet.dead.tmp").write_bytes(b"x" * 1000)  # killed before its first manifest landed
    done = clip_interpret("decompose", *TINY, "--images", str(folder), "--out", str(run))
    assert done.returncode == 0, done.stderr
    assert not list(run.rglob(f"*{store.TEMP_SUFFIX}"))
