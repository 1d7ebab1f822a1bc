"""Damaged runs: `verify` names every damaged, missing or short file, and `run` repairs them to the clean tables.

Faults injected into a finished run: a truncated head part, a deleted head part, bytes flipped inside
images.parquet (same size, other sha256), deleted texts.parquet and head_labels.parquet. The damaged run and the
clean one are made by the same command into folders of the same name (model_scores.parquet holds the name).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from precompute import schema, verify
from tests.cli.test_faults import TINY, _tables, clip_interpret
from tests.conftest import make_image_folder

CHUNK = 2  # 8 images: 4 chunks
PART = "head_vectors/layer=0/head=1/part-00001.parquet"
GONE = "head_vectors/layer=1/head=0/part-00002.parquet"


def _run_args(images: Path, run: Path) -> list[str]:
    return ["run", *TINY, "--images", str(images), "--out", str(run), "--chunk-size", str(CHUNK), "--pool", "toyworld"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(images, a clean finished run) shared by the tests, which damage copies of it."""
    root = tmp_path_factory.mktemp("damage")
    images = make_image_folder(root / "images", per_class=4, bad_files=False)
    clean = root / "clean" / "run"
    done = clip_interpret(*_run_args(images, clean))
    assert done.returncode == 0, done.stderr
    return images, clean


def _copy(clean: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"  # the clean run's name
    shutil.copytree(clean, run)
    return run


def truncate(run: Path) -> None:
    path = run / PART
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_part(run: Path) -> None:
    (run / GONE).unlink()


def corrupt_images(run: Path) -> None:
    path = run / "images.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a data page: the footer still reads
    path.write_bytes(bytes(data))


def delete_texts(run: Path) -> None:
    (run / "texts.parquet").unlink()


def delete_labels(run: Path) -> None:
    (run / "head_labels.parquet").unlink()


DAMAGE = {  # fault -> (the path verify names, its kind, found by the cheap check too)
    truncate: (PART, "size", True),
    delete_part: (GONE, "coverage", True),
    corrupt_images: ("images.parquet", "checksum", False),
    delete_texts: ("texts.parquet", "missing", True),
    delete_labels: ("head_labels.parquet", "missing", True),
}


def test_a_clean_run_records_every_table_and_verifies(made):
    _, clean = made
    manifest = json.loads((clean / "manifest.json").read_text())
    on_disk = {p.relative_to(clean).as_posix() for p in clean.rglob("*.parquet")}
    assert set(manifest["files"]) == on_disk and len(on_disk) == 3 * 4 * 4 + 9  # 12 heads x 4 chunks + 9 tables
    record = manifest["files"][PART]
    assert record["bytes"] == (clean / PART).stat().st_size and record["rows"] == CHUNK
    assert record["sha256"] == verify.sha256_file(clean / PART)
    done = clip_interpret("verify", str(clean))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "healthy (58 files checked)" in done.stdout


def test_verify_names_every_damaged_file_and_the_repair_command(made, tmp_path):
    _, clean = made
    run = _copy(clean, tmp_path)
    for fault in DAMAGE:
        fault(run)
    done = clip_interpret("verify", str(run))
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for path, kind, _ in DAMAGE.values():
        assert any(line.split()[:2] == [kind, f"{path}:"] for line in lines), (path, done.stdout)
    assert "5 damaged files" in done.stdout
    assert "repair: clip-interpret run --model test-tiny --random-init --seed 0 --images" in done.stdout

    quick = clip_interpret("verify", "--quick", str(run))
    assert quick.returncode == 3
    for path, kind, cheap in DAMAGE.values():
        assert (f"{path}:" in quick.stdout) == cheap, (path, quick.stdout)


def test_the_cheap_check_reports_a_shrunk_head_as_coverage(made, tmp_path):
    _, clean = made
    run = _copy(clean, tmp_path)
    delete_part(run)
    health = verify.check_run(run)
    assert not health.full and [(p.path, p.kind) for p in health.problems] == [(GONE, "coverage")]
    assert "covers 6 of 8 images" in health.problems[0].detail
    assert health.summary().startswith("1 damaged file: " + GONE)


@pytest.mark.parametrize("fault", list(DAMAGE), ids=[f.__name__ for f in DAMAGE])
def test_run_repairs_each_fault_to_the_clean_tables(made, tmp_path, fault):
    images, clean = made
    run = _copy(clean, tmp_path)
    fault(run)
    done = clip_interpret(*_run_args(images, run))
    assert done.returncode == 0, done.stderr
    ours, theirs = _tables(run), _tables(clean)
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not ours[k].equals(theirs[k])] == []
    assert verify.check_run(run, full=True).ok
    redone = json.loads((run / "manifest.json").read_text())["timings"]["decompose"]["images"]
    path = DAMAGE[fault][0]
    if path.startswith("head_vectors/"):
        assert redone == CHUNK  # exactly the damaged chunk
        assert "decompose  done" in done.stdout
    elif path == "images.parquet":
        assert redone == 8  # a whole-run table: every chunk
    else:
        assert "decompose  current, skipped" in done.stdout
    assert "textspan   done" in done.stdout or path == "head_labels.parquet"
    assert "label      done" in done.stdout and "score      done" in done.stdout  # downstream redone


def test_everything_damaged_at_once_is_repaired_by_one_run(made, tmp_path):
    images, clean = made
    run = _copy(clean, tmp_path)
    for fault in DAMAGE:
        fault(run)
    assert clip_interpret(*_run_args(images, run)).returncode == 0
    ours, theirs = _tables(run), _tables(clean)
    assert ours.keys() == theirs.keys() and all(ours[k].equals(theirs[k]) for k in ours)
    assert clip_interpret("verify", str(run)).returncode == 0


def test_the_decompose_stage_alone_repairs_its_parts(made, tmp_path):
    images, clean = made
    run = _copy(clean, tmp_path)
    truncate(run)
    done = clip_interpret("decompose", *TINY, "--images", str(images), "--out", str(run), "--chunk-size", str(CHUNK))
    assert done.returncode == 0, done.stderr
    assert (run / PART).read_bytes() == (clean / PART).read_bytes()
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["decompose"]["done"] and not stages["textspan"]["done"]  # computed from the damaged part


def test_a_run_made_before_the_record_gets_footers_and_coverage_checked(made, tmp_path):
    images, clean = made
    run = _copy(clean, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"]
    for info in manifest["stages"].values():
        info.pop("recorded", None)
        info.pop("chunk_size", None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    health = verify.check_run(run)
    assert health.ok and not health.recorded and "predates checksums" in health.summary()

    delete_part(run)
    truncate(run)
    health = verify.check_run(run)
    assert {(p.path, p.kind) for p in health.problems} == {(PART, "unreadable"),
                                                           (GONE.rsplit("/", 1)[0], "coverage")}
    done = clip_interpret(*_run_args(images, run))
    assert done.returncode == 0, done.stderr
    ours, theirs = _tables(run), _tables(clean)
    assert ours.keys() == theirs.keys() and all(ours[k].equals(theirs[k]) for k in ours)
    assert json.loads((run / "manifest.json").read_text())["timings"]["decompose"]["images"] == 2 * CHUNK
    assert verify.check_run(run, full=True).recorded  # the repair wrote the record


def test_a_later_stage_on_damaged_input_names_the_file_and_the_repair_not_a_traceback(made, tmp_path):
    _, clean = made
    run = _copy(clean, tmp_path)
    truncate(run)
    done = clip_interpret("textspan", "--out", str(run), "--pool", "toyworld", "--force", "--quiet", "--device", "cpu")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and PART in errors[0] and "repair it with `clip-interpret run --model test-tiny" in errors[0]


def test_a_repair_redoes_the_opt_in_ablate_stage_only_where_the_run_has_it(tmp_path):
    from precompute import verify

    plain = {"model": {"architecture": "toy-s"}, "images": {"root": "/probe"},
             "stages": {s: {"key": "k"} for s in ("decompose", "textspan", "label", "score")}}
    ablated = {**plain, "stages": {**plain["stages"], "ablate": {"key": "k"}}}
    assert verify.repair_command(tmp_path, plain, ["label"]) == \
        f"clip-interpret label --out {tmp_path} && clip-interpret score --out {tmp_path}"
    assert verify.repair_command(tmp_path, ablated, ["label"]).endswith(f"clip-interpret ablate --out {tmp_path}")
    assert verify.repair_command(tmp_path, ablated, ["ablate"]) == f"clip-interpret ablate --out {tmp_path}"
    assert "--ablate" in verify.repair_command(tmp_path, ablated, ["decompose"])
    assert "--ablate" not in verify.repair_command(tmp_path, plain, ["decompose"])


@pytest.mark.parametrize("stage, resumes_with", [("decompose", "clip-interpret run --model test-tiny"),
                                                 ("textspan", "clip-interpret textspan --out")])
def test_an_unfinished_run_is_incomplete_not_healthy_and_verify_names_the_command_that_resumes_it(
        made, tmp_path, stage, resumes_with):
    _, clean = made
    run = _copy(clean, tmp_path)
    manifest = json.loads((run / schema.MANIFEST).read_text())
    manifest["stages"][stage]["done"] = False  # as a run killed during the stage leaves it
    (run / schema.MANIFEST).write_text(json.dumps(manifest))
    done = clip_interpret("verify", "--quick", str(run))
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"incomplete: the {stage} stage did not finish" in done.stdout and "healthy" not in done.stdout
    resume = next(line for line in done.stdout.splitlines() if line.startswith("resume: "))
    assert resumes_with in resume
    assert clip_interpret("verify", "--quick", str(clean)).returncode == 0  # a finished run stays healthy
