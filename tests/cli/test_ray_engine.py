"""`--engine ray` on a local Ray instance (2 CPUs, actors asking for half a CPU each): the same tables as the local
engine, resume across engines after a SIGKILL, bad images skipped with their reason, and `run --models`.

The instance is started once for the module and shut down in a ``finally``; the CLI commands run in this process
use it (``engine_ray.RaySession`` joins a connection it finds and leaves it to its owner). The kill tests run the CLI
in a process group of their own, which starts (and loses) its own instance; whatever of it outlives the kill is
ended by that group's id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from precompute import schema, store
from precompute.cli import app
from tests.conftest import make_image_folder

NEEDS_RAY = "the Ray engine's tests need pip install -e '.[ray]' (.ci/run installs it)"
runner = CliRunner()
TINY = ["--model", "test-tiny", "--random-init", "--quiet", "--device", "cpu"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason=NEEDS_RAY)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():  # ray.init's handlers must not outlive the module (test_train's SIGTERM)
            signal.signal(sig, handler)


def tables(run: Path) -> dict[str, object]:
    return {p.relative_to(run).as_posix(): pq.read_table(p) for p in sorted(run.rglob("*.parquet"))}


def assert_same_run(a: Path, b: Path) -> None:
    """Every table equal (schema included) and the manifests' file records and images record equal."""
    ta, tb = tables(a), tables(b)
    assert ta.keys() == tb.keys() and len(ta) > 3
    for name in ta:
        assert ta[name].equals(tb[name], check_metadata=True), name
    ma, mb = (json.loads((r / schema.MANIFEST).read_text()) for r in (a, b))
    assert ma["files"] == mb["files"]  # sizes, row counts and sha256: byte-for-byte the same files
    assert ma["images"] == mb["images"]


def test_ray_is_imported_only_for_the_ray_engine_and_its_absence_says_how_to_install_it(image_folder, tmp_path):
    probe = "import sys, precompute.cli, precompute.pipeline, precompute.engine_ray; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
    without = ("import sys; sys.modules['ray'] = None; from precompute.cli import main; sys.argv = ['clip-interpret', "
               f"'decompose', '--model', 'test-tiny', '--random-init', '--images', {str(image_folder)!r}, '--out', "
               f"{str(tmp_path / 'run')!r}, '--engine', 'ray']; main()")
    done = subprocess.run([sys.executable, "-c", without], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: --engine ray needs Ray, which is not installed here: "
                                   "pip install -e '.[ray]'")
    assert not (tmp_path / "run").exists()  # refused before any model loads or any folder is made


@pytest.mark.parametrize("args,message", [
    (["--engine", "spark"], "unknown engine 'spark': choose one of local, ray"),
    (["--ray-address", "auto"], "--ray-address needs --engine ray"),
])
def test_engine_options_are_checked(image_folder, tmp_path, args, message):
    result = runner.invoke(app, ["decompose", *TINY, "--images", str(image_folder), "--out", str(tmp_path / "r"),
                                 *args])
    assert result.exit_code == 2 and message in result.output


def test_an_address_with_no_cluster_is_one_line(image_folder, tmp_path):
    pytest.importorskip("ray", reason=NEEDS_RAY)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "precompute.cli", "decompose", *TINY, "--images", str(image_folder),
                           "--out", str(tmp_path / "run"), "--engine", "ray", "--ray-address", "auto"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: --ray-address auto: cannot reach a Ray cluster there")
    assert done.stderr.strip().endswith("start one with `ray start --head`, or leave --ray-address out for a local one")


def test_both_engines_write_the_same_tables(local_ray, tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=7, bad_files=False)
    common = [*TINY, "--images", folder, "--chunk-size", 4, "--batch-size", 3]
    invoke("decompose", *common, "--out", tmp_path / "local")
    done = invoke("decompose", *common, "--out", tmp_path / "ray", "--engine", "ray", "--workers", 1)
    assert "14 images decomposed" in done.output  # the actor decoding through a DataLoader worker, as on a GPU
    assert_same_run(tmp_path / "local", tmp_path / "ray")
    manifest = json.loads((tmp_path / "ray" / schema.MANIFEST).read_text())
    assert manifest["stages"]["decompose"]["done"] and manifest["stages"]["decompose"]["chunk_size"] == 4
    assert not (tmp_path / "ray" / store.WORK_DIR).exists()
    again = invoke("decompose", *common, "--out", tmp_path / "ray", "--engine", "ray")
    assert "already complete" in again.output


def test_the_ray_data_path_writes_the_same_tables_too(local_ray, tmp_path):
    """RayOptions(mode='data'): Ray Data map_batches over the chunks with the same actor class (the benchmark's
    alternative to the default ActorPool) writes what the local engine writes."""
    from precompute.engine_ray import RayOptions, RaySession
    from precompute.pipeline import DecomposeRequest
    from precompute.stage_decompose import run_decompose

    folder = make_image_folder(tmp_path / "images", per_class=5)
    req = DecomposeRequest("test-tiny", folder, random_init=True, chunk_size=3, batch_size=2, device="cpu")
    loaded = req.load()
    run_decompose(loaded, dataclasses.replace(req, out=tmp_path / "local").options(progress=False))
    with RaySession(RayOptions(mode="data")) as session:
        summary = run_decompose(loaded, dataclasses.replace(req, out=tmp_path / "data").options(progress=False),
                                session.compute_chunks)
    assert summary.computed == 13 and len(summary.skipped) == 3  # 10 images and the fixture's 3 bad image files
    assert_same_run(tmp_path / "local", tmp_path / "data")


def test_run_under_ray_computes_textspan_as_one_task_per_head_and_writes_the_local_tables(local_ray, tmp_path,
                                                                                             monkeypatch):
    """`run --engine ray`: the textspan stage's heads are Ray tasks (the session counts them), and head_texts,
    head_spans and head_summary (every other table too) equal a local `run`'s; so does `textspan --engine ray`."""
    from precompute import engine_ray

    folder = make_image_folder(tmp_path / "images", per_class=7, bad_files=False)
    common = [*TINY, "--images", folder, "--chunk-size", 4, "--k", 6]
    invoke("run", *common, "--out", tmp_path / "local" / "run")  # one folder name: model_scores holds it
    sessions = []
    real = engine_ray.RaySession.map_heads

    def counted(self, run_dir, heads, text_emb, opts):
        sessions.append(self)
        return real(self, run_dir, heads, text_emb, opts)

    monkeypatch.setattr(engine_ray.RaySession, "map_heads", counted)
    invoke("run", *common, "--out", tmp_path / "ray" / "run", "--engine", "ray")
    assert [s.head_tasks for s in sessions] == [12]  # test-tiny: 3 layers x 4 heads, one task each
    for name in (schema.HEAD_TEXTS_FILE, schema.HEAD_SPANS_FILE, schema.HEAD_SUMMARY_FILE):
        local, ray = (pq.read_table(tmp_path / r / "run" / name) for r in ("local", "ray"))
        assert local.num_rows > 0 and local.equals(ray, check_metadata=True), name
    assert_same_run(tmp_path / "local" / "run", tmp_path / "ray" / "run")
    # `textspan --engine ray` alone, on the local run: the same tasks, the same tables
    invoke("textspan", "--out", tmp_path / "local" / "run", "--k", 6, "--force", "--quiet", "--engine", "ray")
    assert [s.head_tasks for s in sessions] == [12, 12]
    assert_same_run(tmp_path / "local" / "run", tmp_path / "ray" / "run")


def test_a_textspan_task_that_fails_raises_its_error_in_the_driver_as_the_local_loop_does(local_ray, tmp_path):
    """A head with no parts fails in its task; the driver raises the task's RunDirError (one line for the CLI),
    the same error as ``local_heads``."""
    import numpy as np

    from precompute.engine_ray import RaySession
    from precompute.errors import RunDirError
    from precompute.pipeline import DecomposeRequest
    from precompute.stage_decompose import run_decompose
    from precompute.stage_textspan import TextspanOptions, local_heads

    folder = make_image_folder(tmp_path / "images", per_class=3, bad_files=False)
    req = DecomposeRequest("test-tiny", folder, out=tmp_path / "run", random_init=True, device="cpu")
    loaded = req.load()
    run_decompose(loaded, req.options(progress=False))
    heads = [(2, 3), (7, 0)]  # test-tiny has layers 0-2: layer 7 has no parts
    texts = np.eye(5, loaded.info.embed_dim, dtype=np.float32)  # [m, D]: the error comes before any use
    opts = TextspanOptions("unused", k=2, progress=False)
    with pytest.raises(RunDirError) as here:
        local_heads(tmp_path / "run", heads, texts, opts)
    with RaySession() as session, pytest.raises(RunDirError) as there:
        session.map_heads(tmp_path / "run", heads, texts, opts)
    assert session.head_tasks == 2
    assert str(there.value) == str(here.value) and "no head vectors for layer 7 head 0" in str(here.value)


def test_a_textspan_task_computes_with_the_thread_count_it_is_given(tmp_path):
    """What a Ray worker runs for one head: the driver's torch thread count set first, then the local loop's head."""
    import numpy as np
    import torch

    from precompute.engine_ray import _textspan_task
    from precompute.pipeline import DecomposeRequest
    from precompute.stage_decompose import run_decompose
    from precompute.stage_textspan import TextspanOptions, local_heads

    folder = make_image_folder(tmp_path / "images", per_class=3, bad_files=False)
    req = DecomposeRequest("test-tiny", folder, out=tmp_path / "run", random_init=True, device="cpu")
    loaded = req.load()
    run_decompose(loaded, req.options(progress=False))
    texts = np.random.default_rng(0).standard_normal((9, loaded.info.embed_dim)).astype(np.float32)  # [m, D]
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the "driver" computes on one thread
        (expected,) = local_heads(tmp_path / "run", [(1, 2)], texts, TextspanOptions("unused", k=3, rank=4,
                                                                                     progress=False))
        torch.set_num_threads(2)  # the worker starts with another count; the task is given the driver's
        summary, result = _textspan_task(str(tmp_path / "run"), 1, 2, texts, 3, 4, 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert summary.keys() == expected[0].keys()
    assert all(np.array_equal(summary[k], expected[0][k]) for k in summary)
    assert np.array_equal(result.picks, expected[1].picks) and np.array_equal(result.basis, expected[1].basis)


def test_a_bad_image_is_skipped_by_the_worker_with_its_reason_as_the_local_engine_does(local_ray, tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=3, bad_files=False)
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # in the middle of a chunk
    common = [*TINY, "--images", folder, "--chunk-size", 3, "--batch-size", 2]
    invoke("decompose", *common, "--out", tmp_path / "local")
    done = invoke("decompose", *common, "--out", tmp_path / "ray", "--engine", "ray")
    assert "6 images decomposed, 1 skipped" in done.output
    skipped = json.loads((tmp_path / "ray" / schema.MANIFEST).read_text())["images"]["skipped"]
    assert len(skipped) == 1 and skipped[0]["path"] == "cat/broken.jpg"
    assert "not a readable image" in skipped[0]["reason"]
    assert_same_run(tmp_path / "local", tmp_path / "ray")  # the same reason, rows and parts as the local engine


def test_a_dead_actor_ends_the_command_in_one_line_and_the_rerun_finishes_the_run(local_ray, tmp_path, monkeypatch):
    from precompute import engine_ray

    class Dying(engine_ray.ChunkWorker):  # defined here, so Ray ships it by value to the actor's process
        def run(self, chunk):
            if chunk == 2:
                os._exit(1)  # as an out-of-memory kill would end it: no exception, no cleanup
            return super().run(chunk)

    folder = make_image_folder(tmp_path / "images", per_class=8, bad_files=False)
    common = ["decompose", *TINY, "--images", folder, "--chunk-size", 4, "--out", tmp_path / "ray", "--engine", "ray"]
    monkeypatch.setattr(engine_ray, "ChunkWorker", Dying)
    died = runner.invoke(app, [str(a) for a in common])
    assert died.exit_code == 2 and "Traceback" not in died.output
    (line,) = [x for x in died.output.splitlines() if x.startswith("error:")]
    assert "lost a decomposition actor (ActorDiedError" in line and line.endswith("rerun the same command to resume")
    monkeypatch.undo()
    invoke(*common)
    invoke("decompose", *TINY, "--images", folder, "--chunk-size", 4, "--out", tmp_path / "local")
    assert_same_run(tmp_path / "ray", tmp_path / "local")


@pytest.mark.slow
def test_models_file_runs_three_toy_models_as_three_separate_runs(local_ray, tmp_path):
    probe = tmp_path / "probe"
    invoke("toyworld", "images", "--n", 40, "--seed", 5, "--out", probe)
    models = tmp_path / "models.csv"
    models.write_text("model,pretrained,images,out\n" + "".join(
        f"{m},,{probe},{tmp_path / 'many' / m}\n" for m in ("toy-s", "toy-m", "toy-l")))
    done = invoke("run", "--models", models, "--engine", "ray", "--k", 6, "--quiet")
    for m in ("toy-s", "toy-m", "toy-l"):
        assert f"{m} -> {tmp_path / 'many' / m}" in done.output
        invoke("run", "--model", m, "--images", probe, "--out", tmp_path / "one" / m, "--k", 6, "--quiet")
        assert_same_run(tmp_path / "many" / m, tmp_path / "one" / m)
        manifest = json.loads((tmp_path / "many" / m / schema.MANIFEST).read_text())
        assert manifest["model"]["architecture"] == m and all(
            manifest["stages"][s]["done"] for s in ("decompose", "textspan", "label", "score"))


def _group(pgid: int) -> list[int]:
    """Processes still alive in the process group ``pgid`` (what a killed driver's instance left)."""
    alive = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    alive.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return alive


def _rows_per_key(run: Path) -> tuple[int, int]:
    rows = [r for p in store.all_head_files(run) for r in
            zip([store.head_partition(p)] * pq.read_metadata(p).num_rows,
                pq.read_table(p, columns=["image_id"]).column("image_id").to_pylist())]
    return len(rows), len(set(rows))


@pytest.mark.slow
@pytest.mark.parametrize("killed,resumed", [("ray", "local"), ("local", "ray")])
def test_a_killed_driver_resumes_with_either_engine_to_one_row_per_image_layer_head(tmp_path, killed, resumed):
    """SIGKILL `decompose` mid-run (3 chunks done), rerun with the other engine, compare with a clean local run."""
    pytest.importorskip("ray", reason=NEEDS_RAY)
    folder = make_image_folder(tmp_path / "imgs", per_class=60, size=(64, 64), bad_files=False)
    args = ["decompose", *TINY, "--images", str(folder), "--chunk-size", "8", "--batch-size", "2", "--workers", "0"]
    cmd = [sys.executable, "-m", "precompute.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(run), "--engine", killed], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        work = run / store.WORK_DIR / "decompose"
        deadline = time.time() + 180
        while time.time() < deadline and len(list(work.glob("chunk-*/DONE"))) < 3:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        manifest = json.loads((run / schema.MANIFEST).read_text())
        assert len(list(work.glob("chunk-*/DONE"))) < 15 and not manifest["stages"]["decompose"]["done"], \
            "killed too late to test resume"
        time.sleep(2)  # the dead driver's actors may finish a chunk they were writing: the rerun redoes it or keeps it
    finally:
        for pid in _group(proc.pid):  # Ray's agents outlive a killed driver for a minute or so
            os.kill(pid, signal.SIGKILL)

    rerun = subprocess.Popen(cmd + args + ["--out", str(run), "--engine", resumed], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    settle = time.time() + 10  # a process that is exiting may still be listed for a moment
    while _group(rerun.pid) and time.time() < settle:
        time.sleep(0.2)
    assert _group(rerun.pid) == []  # a command that ends normally leaves no Ray process behind
    fresh = subprocess.run(cmd + args + ["--out", str(tmp_path / "fresh")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert _rows_per_key(run) == (120 * 3 * 4, 120 * 3 * 4)  # test-tiny: 3 layers x 4 heads, no duplicate rows
    assert pq.read_table(run / schema.IMAGES_FILE).num_rows == 120
    assert_same_run(run, tmp_path / "fresh")
