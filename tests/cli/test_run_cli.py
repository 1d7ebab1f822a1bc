"""`clip-interpret run` and its stages end to end on a tiny random model; `--help` of every command."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from precompute import schema
from precompute.cli import app
from precompute.paths import MODELS_DIR
from precompute.weights import file_sha256
from precompute.toyworld.captions import ATTRIBUTE_NAMES
from tests.conftest import make_image_folder

runner = CliRunner()
TINY = ["--model", "test-tiny", "--random-init", "--quiet"]
TABLES = [schema.IMAGES_FILE, schema.IMAGE_EMBEDDINGS_FILE, schema.TEXTS_FILE, schema.HEAD_TEXTS_FILE,
          schema.HEAD_SPANS_FILE, schema.HEAD_LABELS_FILE, schema.HEAD_SCORES_FILE, schema.MODEL_SCORES_FILE]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            yield from _commands(cmd, prefix + (name,))


def test_help_works_for_every_command():
    root = typer.main.get_command(app)
    paths = list(_commands(root))
    assert {("decompose",), ("run",), ("textspan",), ("label",), ("score",), ("models",), ("dashboard",),
            ("toyworld", "images"), ("toyworld", "train")} <= set(paths)
    for path in paths:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
    for name, cmd in root.commands.items():  # every option of every command documents itself
        for sub in (cmd.commands.values() if hasattr(cmd, "commands") else [cmd]):
            for param in sub.params:
                if param.param_type_name == "option" and param.name != "help":
                    assert param.help, f"{name} {sub.name} --{param.name} has no help text"


@pytest.fixture
def tiny_run(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=6)
    out = tmp_path / "runs" / "tiny"
    result = invoke("run", *TINY, "--images", images, "--out", out, "--k", 8)
    assert result.exit_code == 0, result.output
    return images, out, result.output


def test_run_writes_every_table_then_skips_every_stage(tiny_run):
    images, out, first = tiny_run
    for stage in ("decompose", "textspan", "label", "score"):
        assert f"{stage:<10} done in" in first
    for name in TABLES:
        table = pq.read_table(out / name)
        expected = schema.TABLES[name]
        assert table.schema.remove_metadata().equals(expected), name
    head_texts = pq.read_table(out / schema.HEAD_TEXTS_FILE)
    assert head_texts.num_rows == 3 * 4 * 8  # 3 layers x 4 heads x k
    ve = head_texts.column("variance_explained").to_pylist()
    assert all(0 <= v <= 1.0 + 1e-6 for v in ve)
    scores = pq.read_table(out / schema.MODEL_SCORES_FILE).to_pylist()[0]
    assert scores["model"] == "test-tiny" and scores["n_heads"] == 12
    assert scores["zeroshot_intact"] is not None and scores["zeroshot_replaced"] is not None  # class folders give labels
    stamps = {n: (out / n).stat().st_mtime_ns for n in TABLES}

    again = invoke("run", *TINY, "--images", images, "--out", out, "--k", 8)
    assert again.exit_code == 0
    assert again.output.count("current, skipped") == 4
    assert {n: (out / n).stat().st_mtime_ns for n in TABLES} == stamps

    forced = invoke("run", *TINY, "--images", images, "--out", out, "--k", 8, "--force")
    assert forced.exit_code == 0 and forced.output.count("done in") == 4


def test_changed_options_rerun_only_the_stages_they_affect(tiny_run):
    images, out, _ = tiny_run
    result = invoke("run", *TINY, "--images", images, "--out", out, "--k", 8, "--min-share", 0.6)
    assert "decompose  current" in result.output and "textspan   current" in result.output
    assert "label      done" in result.output and "score      done" in result.output


def test_label_honours_the_runs_overrides_file(tiny_run):
    images, out, _ = tiny_run
    (out / schema.LABEL_OVERRIDES_FILE).write_text("layer,head,property,author\n2,1,colors,ana\n")
    result = invoke("label", "--out", out)
    assert result.exit_code == 0 and "label done" in result.output
    labels = {(r["layer"], r["head"]): r for r in pq.read_table(out / schema.HEAD_LABELS_FILE).to_pylist()}
    assert labels[(2, 1)]["property"] == "colors" and labels[(2, 1)]["labeller"] == "manual"
    assert json.loads(labels[(2, 1)]["provenance"])["author"] == "ana"
    assert labels[(2, 0)]["labeller"] == "pool"
    manifest = json.loads((out / schema.MANIFEST).read_text())
    assert manifest["stages"]["label"]["manual"] == 1
    assert manifest["stages"]["score"]["done"] is False  # scores of the old labels are stale
    rerun = invoke("run", *TINY, "--images", images, "--out", out, "--k", 8)
    assert "label      current" in rerun.output and "score      done" in rerun.output


def test_user_text_pool(tiny_run, tmp_path):
    _, out, _ = tiny_run
    pool = tmp_path / "mine.txt"
    pool.write_text("\n".join(f"a photo of thing number {i}" for i in range(30)) + "\n")
    result = invoke("textspan", "--out", out, "--pool", pool, "--k", 5, "--quiet")
    assert result.exit_code == 0, result.output
    texts = pq.read_table(out / schema.HEAD_TEXTS_FILE).column("text").to_pylist()
    assert texts and all(t.startswith("a photo of thing number") for t in texts)
    labels = invoke("label", "--out", out)  # no properties in a .txt pool: every head is mixed
    assert labels.exit_code == 0
    assert set(pq.read_table(out / schema.HEAD_LABELS_FILE).column("property").to_pylist()) == {"mixed"}


@pytest.mark.parametrize("command", ["textspan", "label", "score"])
def test_stages_on_a_folder_that_is_not_a_run(tmp_path, command):
    result = invoke(command, "--out", tmp_path)
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_stage_before_its_input_names_the_command(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=2, bad_files=False)
    out = tmp_path / "run"
    assert invoke("decompose", *TINY, "--images", images, "--out", out).exit_code == 0
    result = invoke("label", "--out", out)
    assert result.exit_code == 2 and "clip-interpret textspan --out" in result.output


def test_bad_options_are_refused(tiny_run):
    _, out, _ = tiny_run
    assert "unknown labeller" in invoke("label", "--out", out, "--labeller", "oracle").output
    assert "'{}'" in invoke("score", "--out", out, "--template", "a photo").output
    missing = invoke("run", "--model", "ViT-B-32", "--random-init", "--out", out)
    assert missing.exit_code == 2 and "--images is needed" in missing.output


def test_a_typo_or_a_missing_pool_fails_before_any_work(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=2)
    typo = invoke("run", "--model", "ViT-B-23", "--images", images, "--out", tmp_path / "a")
    assert typo.exit_code != 0 and "unknown architecture 'ViT-B-23'" in typo.output and "ViT-B-32" in typo.output
    pool = invoke("run", *TINY, "--images", images, "--out", tmp_path / "b", "--pool", tmp_path / "nope.csv")
    assert pool.exit_code != 0 and "nope.csv does not exist" in pool.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_models_command_lists_and_marks():
    result = invoke("models", "ViT-B-32")
    assert result.exit_code == 0 and "ViT-B-32 " in result.output and "decomposable: yes" in result.output
    assert "RN50" not in invoke("models").output
    everything = invoke("models", "--all", "RN50")
    assert "decomposable: no" in everything.output and "ResNet" in everything.output


def test_llm_labeller_through_the_label_command(tiny_run, monkeypatch):
    """`label --labeller llm` against a local OpenAI-compatible server: labels, provenance, fallback."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            # the 3rd head gets a malformed reply: it must keep its pool label
            content = "not json at all!" if len(seen) == 3 else '{"property": "colors"}'
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CLIP_INTERPRET_LLM_API_KEY", "sk-test-secret")
    _, out, _ = tiny_run
    try:
        result = invoke("label", "--out", out, "--labeller", "llm", "--llm-base-url",
                        f"http://127.0.0.1:{server.server_port}/v1", "--llm-model", "fake-gpt")
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: LLM labeller") == 1 and "keeping the pool label" in result.output
    assert len(seen) == 12 and seen[0][0] == "/v1/chat/completions" and seen[0][1] == "Bearer sk-test-secret"
    assert seen[0][2]["model"] == "fake-gpt" and len(seen[0][2]["messages"]) > 3  # few-shot examples
    rows = pq.read_table(out / schema.HEAD_LABELS_FILE).to_pylist()
    llm = [r for r in rows if r["labeller"] == "llm"]
    assert len(llm) == 11 and all(r["property"] == "colors" for r in llm)
    prov = json.loads(llm[0]["provenance"])
    assert prov["model"] == "fake-gpt" and len(prov["prompt_sha256"]) == 64
    assert "sk-test-secret" not in (out / schema.HEAD_LABELS_FILE).read_bytes().decode("latin-1")
    fallback = [r for r in rows if r["labeller"] == "pool"]
    assert len(fallback) == 1 and "llm_fallback" in json.loads(fallback[0]["provenance"])


def test_run_on_a_shipped_toy_model_scores_labels_against_ground_truth(tmp_path):
    """The embedded default's path for one model: shipped toy-s weights, a toy-world probe set, the toyworld pool."""
    probe = tmp_path / "probe"
    assert invoke("toyworld", "images", "--n", 200, "--seed", 3, "--out", probe).exit_code == 0
    out = tmp_path / "runs" / "toy-s"
    result = invoke("run", "--model", "toy-s", "--images", probe, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "toy-s"
    assert manifest["model"]["weights"] == {"kind": "shipped", "value": "toy-s", "sha256": file_sha256(
        MODELS_DIR / "toy-s" / "open_clip_model.safetensors")}  # by name: no path of this machine
    assert str(MODELS_DIR) not in (out / "manifest.json").read_text()
    assert manifest["images"]["count"] == 200 and not manifest["images"]["skipped"]
    texts = pq.read_table(out / schema.TEXTS_FILE).to_pylist()
    assert {t["property"] for t in texts} == set(ATTRIBUTE_NAMES)
    heads = pq.read_table(out / schema.HEAD_SCORES_FILE).to_pylist()
    assert len(heads) == 16  # toy-s: 4 layers x 4 heads, all analysed
    assert all(h["best_attribute"] in ATTRIBUTE_NAMES for h in heads)
    model = pq.read_table(out / schema.MODEL_SCORES_FILE).to_pylist()[0]
    # trained weights on their own world: labels name the planted attribute far above chance (1/7)
    assert model["label_agreement"] is not None and model["label_agreement"] > 0.3, model
    assert model["zeroshot_intact"] > 0.9  # the probe's class folders are shapes, which toy-s knows
    again = invoke("run", "--model", "toy-s", "--images", probe, "--out", out, "--quiet")
    assert again.output.count("current, skipped") == 4


def test_default_run_plans_every_shipped_toy_model_into_runs_under_the_current_folder(tmp_path, monkeypatch):
    from precompute import pipeline
    from precompute.paths import ENV_DATA_DIR

    monkeypatch.setattr(pipeline, "DEFAULT_PROBE_N", 20)
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    plans = pipeline.plan(pipeline.RunRequest(), progress=False)
    probe = tmp_path / "runs" / "_probe" / "toyworld"
    assert [p.source.model for p in plans] == ["toy-s", "toy-m", "toy-l"]
    assert [p.source.out for p in plans] == [tmp_path / "runs" / m for m in ("toy-s", "toy-m", "toy-l")]
    assert (probe / "attributes.parquet").is_file() and all(p.source.images == probe for p in plans)
    assert all(p.textspan.pool == "toyworld" for p in plans)
    (other,) = pipeline.plan(pipeline.RunRequest(pipeline.DecomposeRequest("ViT-B-32", tmp_path, random_init=True),
                                                 k=7), progress=False)
    assert other.source.out == tmp_path / "runs" / "ViT-B-32-random"
    assert (other.textspan.pool, other.textspan.k) == ("general", 7)


def test_run_has_every_option_of_the_stage_commands_with_the_same_flags_default_and_help():
    """Every option of decompose, textspan, label and score is an option of `run` with the same flags and help.

    --model, --images and --out are declared per command (their defaults differ); --device and --quiet
    are shared; --top-k of `score` is --top-k of `run`, which feeds the label and score stages alike.
    """
    root = typer.main.get_command(app)
    run = {p.name: p for p in root.commands["run"].params}
    for name in ("decompose", "textspan", "label", "score"):
        for p in root.commands[name].params:
            if p.name in ("model", "images", "out"):
                continue
            same = run[p.name]
            assert (same.opts, same.default, same.help) == (p.opts, p.default, p.help), (name, p.name)


def test_score_rebuilds_heads_from_the_stored_spans_exactly_as_a_recomputed_textspan(tiny_run):
    import numpy as np

    from precompute import store
    from precompute.pipeline import loaded_for_run
    from precompute.stage_score import DEFAULT_TEMPLATES, _zero_shot
    from precompute.stage_textspan import head_stats, read_spans
    from precompute.textspan import reconstruct, textspan_from_stats

    _, out, _ = tiny_run
    manifest = store.read_manifest(out)
    ts = manifest["stages"]["textspan"]
    texts = store.arrow_to_vectors(pq.read_table(out / schema.TEXTS_FILE).column("embedding"))
    images = pq.read_table(out / schema.IMAGES_FILE)
    embeddings = store.arrow_to_vectors(pq.read_table(out / schema.IMAGE_EMBEDDINGS_FILE).column("embedding"))
    spans = read_spans(out)
    assert sorted(spans) == [(layer, h) for layer in manifest["layers"] for h in range(manifest["heads"])]
    delta = np.zeros_like(embeddings, dtype=np.float64)
    for (layer, head), stored in spans.items():
        again = textspan_from_stats(head_stats(out, layer, head), texts, k=ts["k"], rank=ts["rank"])  # as before
        np.testing.assert_array_equal(stored.picks, again.picks)
        np.testing.assert_array_equal(stored.basis, again.basis)
        np.testing.assert_array_equal(stored.mean, again.mean)
        assert (stored.total_variance, stored.rank, stored.n) == (again.total_variance, again.rank, again.n)
        ids, vectors = store.read_head(out, layer, head)
        assert ids.tolist() == images.column("image_id").to_pylist()
        np.testing.assert_array_equal(reconstruct(vectors, stored), reconstruct(vectors, again))
        delta += vectors - reconstruct(vectors, again)
    # the stage's zero-shot with heads replaced equals the old recompute-every-head path
    intact, replaced = _zero_shot(loaded_for_run(out, "cpu"), images.column("label").to_pylist(), embeddings,
                                  embeddings - delta, DEFAULT_TEMPLATES)
    model = pq.read_table(out / schema.MODEL_SCORES_FILE).to_pylist()[0]
    assert model["zeroshot_intact"] == pytest.approx(intact, abs=0) and model["zeroshot_replaced"] == pytest.approx(
        replaced, abs=0)
    head_variance = {(r["layer"], r["head"]): r["head_variance"]
                     for r in pq.read_table(out / schema.HEAD_SCORES_FILE).to_pylist()}
    assert head_variance == {k: pytest.approx(v.total_variance, rel=1e-6) for k, v in spans.items()}


def test_score_on_a_run_without_head_spans_names_the_command(tiny_run):
    _, out, _ = tiny_run
    (out / schema.HEAD_SPANS_FILE).unlink()  # as a textspan stage of an older version left it: not written,
    manifest = json.loads((out / schema.MANIFEST).read_text())  # so not in the manifest's file record either
    del manifest["files"][schema.HEAD_SPANS_FILE]
    (out / schema.MANIFEST).write_text(json.dumps(manifest))
    result = invoke("score", "--out", out, "--force", "--quiet")
    assert result.exit_code == 2 and f"rerun `clip-interpret textspan --out {out}`" in result.output
