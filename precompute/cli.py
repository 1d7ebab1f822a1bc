"""`clip-interpret`: thin Typer front end. Parse options, call the library, map errors to exit codes."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

from precompute.runtime import passive_openmp

passive_openmp()  # before anything loads torch

import typer  # noqa: E402

from precompute import paths  # noqa: E402
from precompute.errors import IO_EXIT_CODE, InterpretError, describe_io_error  # noqa: E402

app = typer.Typer(
    help="What do the attention heads of CLIP vision transformers do? Decompose, name, label, score, explore.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def handle_errors(fn):
    """Print domain errors and I/O failures as one line on stderr and exit non-zero, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    return fn(*args, **kwargs)
                finally:
                    _show_warnings(caught)
        except InterpretError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # disk full, file too large, permission: one line, not a traceback
            typer.secho(f"error: {describe_io_error(e)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(IO_EXIT_CODE) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None

    return wrapper


def _show_warnings(caught) -> None:
    """Every warning of ours (one per head, say) on its own line; library warnings as Python shows them."""
    ours = str(Path(__file__).resolve().parent)
    seen = set()
    for w in caught:
        if str(Path(w.filename).resolve()).startswith(ours):
            typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
        elif (str(w.message), w.category) not in seen:
            seen.add((str(w.message), w.category))
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _quiet_libraries() -> None:
    logging.getLogger().addFilter(lambda r: "No pretrained weights loaded" not in r.getMessage())


# ---------------------------------------------------------------- shared options

Model = Annotated[str, typer.Option("--model", "-m", help="open_clip architecture (e.g. ViT-B-32) or a project model (toy-s, toy-m, toy-l).")]
Pretrained = Annotated[Optional[str], typer.Option(help="Weights: a pretrained tag (needs the hub or its cache), a .safetensors/.bin/.pt file, or local-dir:FOLDER. Default for toy models: the shipped weights.")]
RandomInit = Annotated[bool, typer.Option("--random-init", help="No weights: a seeded random initialisation (tests, benchmarks).")]
Seed = Annotated[int, typer.Option(help="Seed of --random-init.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | mps.")]
Precision = Annotated[str, typer.Option(help="fp32 | fp16 | bf16 (fp16 needs a GPU).")]
Layers = Annotated[Optional[str], typer.Option(help="Layers to analyse: a slice like '-4:' or a list like '8,9,10,11' (absolute, 0-based). Default: the last 4.")]
Limit = Annotated[Optional[int], typer.Option(help="Use at most this many images (a seeded random sample, kept in path order).")]
BatchSize = Annotated[int, typer.Option(help="Images per forward pass.")]
Workers = Annotated[Optional[int], typer.Option(
    help="Image-decoding worker processes (0 decodes in the main process). Default: every core on a GPU, 1 on the CPU.")]
ChunkSize = Annotated[int, typer.Option(help="Images per resumable chunk: a crash loses at most one chunk of work.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def default_out(model: str, pretrained: str | None, random_init: bool) -> Path:
    if random_init:
        suffix = "-random"
    elif not pretrained:
        suffix = ""
    else:
        p = pretrained.removeprefix("local-dir:").rstrip("/")
        suffix = "-" + (Path(p).stem if ("/" in p or "." in p) else p)
    return paths.runs_dir() / f"{model}{suffix}"


def load(model: str, pretrained: str | None, random_init: bool, device: str, precision: str, seed: int = 0):
    from precompute import registry

    _quiet_libraries()
    weights = registry.parse_weights(model, pretrained, random_init, seed)
    return registry.load_model(registry.ModelSpec(model, weights, device, precision))


# ---------------------------------------------------------------- commands


@app.command()
@handle_errors
def models(
    search: Annotated[Optional[str], typer.Argument(help="Show only architectures whose name contains this text.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Also list architectures the decomposition cannot handle.")] = False,
):
    """List architectures, their known pretrained tags, and which ones can be decomposed."""
    from precompute import registry

    rows = [e for e in registry.catalogue() if (all_ or e.decomposable) and (not search or search.lower() in e.architecture.lower())]
    if not rows:
        typer.echo("no matching architectures" + ("" if all_ else " (try --all)"))
        return
    width = max(len(e.architecture) for e in rows)
    for e in rows:
        mark = "yes" if e.decomposable else "no "
        extra = ""
        if e.project:
            extra = " [project model" + (", weights shipped]" if e.shipped else "]")
        tags = ", ".join(e.tags) if e.tags else "-"
        line = f"{e.architecture:<{width}}  decomposable: {mark}  tags: {tags}{extra}"
        if not e.decomposable and e.reason:
            line += f"  ({e.reason})"
        typer.echo(line)
    hidden = "" if all_ else " (add --all for the ones that cannot be decomposed)"
    typer.echo(f"\n{len(rows)} architectures{hidden}")


@app.command()
@handle_errors
def decompose(
    model: Model,
    images: Annotated[Path, typer.Option(help="Folder of images, searched recursively; class sub-folders give labels.")],
    out: Annotated[Optional[Path], typer.Option(help="Run folder to write (default: runs/<model>[-<weights>] in the current folder, or under $CLIP_INTERPRET_DATA_DIR).")] = None,
    pretrained: Pretrained = None,
    random_init: RandomInit = False,
    seed: Seed = 0,
    layers: Layers = None,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    workers: Workers = None,
    chunk_size: ChunkSize = 512,
    device: Device = "auto",
    precision: Precision = "fp32",
    quiet: Quiet = False,
):
    """Decompose every image's embedding into per-head vectors and write images, embeddings and head vectors."""
    from precompute.stage_decompose import DecomposeOptions, run_decompose

    _check_positive(batch_size=batch_size, chunk_size=chunk_size)
    loaded = load(model, pretrained, random_init, device, precision, seed)
    out = out or default_out(model, pretrained, random_init)
    opts = DecomposeOptions(images, out, layers, limit, batch_size, workers, chunk_size, progress=not quiet)
    summary = run_decompose(loaded, opts)
    _print_decompose_summary(summary)


def _check_positive(**values: int) -> None:
    from precompute.errors import InputError

    for name, v in values.items():
        if v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {v}")


def _print_decompose_summary(s) -> None:
    if s.already_complete:
        typer.echo(f"{s.run_dir}: already complete ({s.images} images); nothing to do")
        return
    rate = f", {s.images_per_second:.1f} images/s" if s.computed else ""
    typer.echo(f"{s.run_dir}: {s.images} images decomposed, {len(s.skipped)} skipped{rate}")
    for row in s.skipped[:10]:
        typer.echo(f"  skipped {row['path']}: {row['reason']}")
    if len(s.skipped) > 10:
        typer.echo(f"  ... and {len(s.skipped) - 10} more (see manifest.json)")
    if s.ignored:
        typer.echo(f"  {s.ignored} files that are not images were ignored (listed in manifest.json)")


RunDir = Annotated[Path, typer.Option("--out", help="The run folder (written by `decompose` or `run`).")]
Pool = Annotated[Optional[str], typer.Option(help="Text pool: a shipped name (toyworld, general) or a .txt/.csv/.parquet file. Default: toyworld for toy models, general otherwise.")]
K = Annotated[int, typer.Option("--k", help="TEXTSPAN picks computed per head (the dashboard shows 5).")]
Rank = Annotated[int, typer.Option(help="TEXTSPAN rank r: texts are projected on the top-r span of the head's outputs.")]
Force = Annotated[bool, typer.Option("--force", help="Recompute even when the stage's output is current.")]
Labeller = Annotated[str, typer.Option(help="pool (offline: majority property of the top picks) or llm (an OpenAI-compatible chat endpoint).")]
TopK = Annotated[int, typer.Option(help="Top picks a label and its association score look at.")]
MinShare = Annotated[float, typer.Option(help="Pool labeller: the winning property needs at least this share of the top picks, else 'mixed'.")]
Overrides = Annotated[Optional[Path], typer.Option(help="CSV layer,head,property of manual labels (wins over the labellers). The run's own label_overrides.csv is always read.")]
LlmUrl = Annotated[Optional[str], typer.Option(help="LLM labeller: base URL (env CLIP_INTERPRET_LLM_BASE_URL; default https://api.openai.com/v1). Key from CLIP_INTERPRET_LLM_API_KEY or OPENAI_API_KEY.")]
LlmModel = Annotated[Optional[str], typer.Option(help="LLM labeller: model name (env CLIP_INTERPRET_LLM_MODEL).")]
LlmTimeout = Annotated[float, typer.Option(help="LLM labeller: seconds per request.")]
Templates = Annotated[Optional[list[str]], typer.Option("--template", help="Zero-shot prompt with '{}' for the class name (repeat for several). Default: 'a photo of a {}.', 'an image of a {}.', 'a {}.'")]
Attributes = Annotated[Optional[Path], typer.Option(help="Ground-truth attributes (Parquet: path + categorical columns). Default: <images>/attributes.parquet when present.")]


def _label_options(labeller, top_k, min_share, overrides, llm_base_url, llm_model, llm_timeout):
    from precompute.stage_label import LabelOptions

    return LabelOptions(labeller, top_k, min_share, overrides, llm_base_url, llm_model, llm_timeout)


def _score_options(top_k, templates, attributes, quiet):
    from precompute.stage_score import DEFAULT_TEMPLATES, ScoreOptions
    from precompute.errors import InputError

    templates = tuple(templates) if templates else DEFAULT_TEMPLATES
    if any("{}" not in t for t in templates):
        raise InputError(f"every --template needs '{{}}' for the class name; got {list(templates)}")
    return ScoreOptions(top_k, templates, attributes, progress=not quiet)


def _done(stage: str, ran: bool, out: Path) -> None:
    typer.echo(f"{out}: {stage} " + ("done" if ran else "is current; nothing to do (--force recomputes)"))


@app.command()
@handle_errors
def textspan(
    out: RunDir,
    pool: Pool = None,
    k: K = 20,
    rank: Rank = 80,
    device: Device = "auto",
    force: Force = False,
    quiet: Quiet = False,
):
    """Name every analysed head with TEXTSPAN: embed the pool once, write texts and head_texts."""
    from precompute.pipeline import default_pool, loaded_for_run
    from precompute.stage_textspan import TextspanOptions, run_textspan

    _quiet_libraries()
    loaded = loaded_for_run(out, device)
    opts = TextspanOptions(pool or default_pool(loaded.spec.architecture), k, rank, progress=not quiet)
    _done("textspan", run_textspan(loaded, out, opts, force), out)


@app.command()
@handle_errors
def label(
    out: RunDir,
    labeller: Labeller = "pool",
    top_k: TopK = 5,
    min_share: MinShare = 0.4,
    overrides: Overrides = None,
    llm_base_url: LlmUrl = None,
    llm_model: LlmModel = None,
    llm_timeout: LlmTimeout = 30.0,
    force: Force = False,
):
    """Give every analysed head a property (pool vote, LLM, or manual override) and write head_labels."""
    from precompute.stage_label import run_label

    opts = _label_options(labeller, top_k, min_share, overrides, llm_base_url, llm_model, llm_timeout)
    _done("label", run_label(out, opts, force), out)


@app.command()
@handle_errors
def score(
    out: RunDir,
    top_k: TopK = 5,
    template: Templates = None,
    attributes: Attributes = None,
    device: Device = "auto",
    force: Force = False,
    quiet: Quiet = False,
):
    """Score heads and the model: association, CCS, entanglement, variance explained, zero-shot, ground truth."""
    from precompute.errors import RunDirError
    from precompute.pipeline import loaded_for_run
    from precompute.stage_score import run_score

    _quiet_libraries()
    try:
        loaded = loaded_for_run(out, device)
    except RunDirError as e:
        typer.secho(f"note: {e}; zero-shot accuracy is skipped", fg=typer.colors.YELLOW, err=True)
        loaded = None
    _done("score", run_score(out, _score_options(top_k, template, attributes, quiet), loaded, force), out)


@app.command()
@handle_errors
def run(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="open_clip architecture or project model. Default: every shipped toy model.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of probe images. Default for toy models: a generated toy-world probe set (runs/_probe/toyworld, 5,000 images, seed 0).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/<model>[-<weights>] in the current folder, or under $CLIP_INTERPRET_DATA_DIR).")] = None,
    pretrained: Pretrained = None,
    random_init: RandomInit = False,
    seed: Seed = 0,
    layers: Layers = None,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    workers: Workers = None,
    chunk_size: ChunkSize = 512,
    device: Device = "auto",
    precision: Precision = "fp32",
    pool: Pool = None,
    k: K = 20,
    rank: Rank = 80,
    labeller: Labeller = "pool",
    top_k: TopK = 5,
    min_share: MinShare = 0.4,
    overrides: Overrides = None,
    llm_base_url: LlmUrl = None,
    llm_model: LlmModel = None,
    llm_timeout: LlmTimeout = 30.0,
    template: Templates = None,
    attributes: Attributes = None,
    force: Force = False,
    quiet: Quiet = False,
):
    """Decompose, TEXTSPAN, label and score in one go; stages whose output is current are skipped."""
    from precompute import pipeline, registry
    from precompute.errors import InputError
    from precompute.stage_decompose import DecomposeOptions
    from precompute.stage_textspan import TextspanOptions

    _check_positive(batch_size=batch_size, chunk_size=chunk_size)
    _quiet_libraries()
    base = pipeline.RunRequest(
        model=model or "", images=images or paths.probe_dir(), out=out or Path(), pretrained=pretrained,
        random_init=random_init, seed=seed, device=device, precision=precision,
        decompose=DecomposeOptions(Path(), Path(), layers, limit, batch_size, workers, chunk_size),
        textspan=TextspanOptions(pool, k, rank) if pool else None,
        label=_label_options(labeller, top_k, min_share, overrides, llm_base_url, llm_model, llm_timeout),
        score=_score_options(top_k, template, attributes, quiet), force=force,
    )
    if model is None:
        if out is not None or pretrained or random_init:
            raise InputError("--out, --pretrained and --random-init need --model (the default runs every toy model)")
        requests = pipeline.default_requests(base, progress=not quiet)
    else:
        if images is None:
            if registry.model_defaults(model).probe is None:
                raise InputError(f"--images is needed for {model}; only toy models default to the toy-world probe set")
            base = dataclasses.replace(base, images=pipeline.ensure_default_probe(not quiet))
        requests = [dataclasses.replace(base, out=out or default_out(model, pretrained, random_init))]
    if pool is None:
        requests = [dataclasses.replace(r, textspan=TextspanOptions(pipeline.default_pool(r.model), k, rank))
                    for r in requests]
    for req in requests:
        typer.echo(f"{req.model} -> {req.out}")
        pipeline.run_pipeline(req, log=typer.echo, progress=not quiet)
    typer.echo("open the dashboard: clip-interpret dashboard" + ("" if model is None else f" --data-dir {requests[0].out.parent}"))


@app.command()
@handle_errors
def dashboard(
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding run folders (searched 3 levels deep). Default: $CLIP_INTERPRET_DATA_DIR, else ./runs.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
):
    """Serve the Streamlit dashboard over every run under --data-dir."""
    import subprocess

    from precompute.errors import InputError

    data_dir = data_dir or paths.runs_dir()
    if not data_dir.is_dir():
        raise InputError(f"data folder {data_dir} does not exist; make runs with `clip-interpret run` first")
    app_file = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", "--data-dir", str(data_dir.resolve())]
    typer.echo(f"dashboard on http://{host}:{port}  (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(cmd))


def _mount_toyworld() -> None:
    from precompute.toyworld.cli import app as toyworld_app

    app.add_typer(toyworld_app, name="toyworld")


_mount_toyworld()


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="clip-interpret")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
