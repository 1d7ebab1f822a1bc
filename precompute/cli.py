"""`clip-interpret`: thin Typer front end. Parse options, call the library, map errors to exit codes."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import sys
import typing
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


def option_groups(fn):
    """Let a command take a group of options as one dataclass parameter; Typer sees the group's fields, in order.

    An option group shared by several commands is declared once, as a frozen dataclass whose fields are
    annotated and defaulted like any option (``DecomposeFlags``: `decompose` and `run`); the command
    receives the group built from them.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    params, groups = [], {}
    for p in inspect.signature(fn).parameters.values():
        kind = hints[p.name]
        if not dataclasses.is_dataclass(kind):
            params.append(p.replace(annotation=kind))
            continue
        fields = typing.get_type_hints(kind, include_extras=True)
        groups[p.name] = kind, [f.name for f in dataclasses.fields(kind)]
        params += [inspect.Parameter(f.name, p.kind, annotation=fields[f.name], default=f.default)
                   for f in dataclasses.fields(kind)]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        for name, (kind, names) in groups.items():
            kwargs[name] = kind(**{n: kwargs.pop(n) for n in names})
        return fn(**kwargs)

    wrapper.__signature__ = inspect.Signature(params)  # duplicate option names fail here, at import
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


# ---------------------------------------------------------------- options, each declared once

Model = Annotated[str, typer.Option("--model", "-m", help="open_clip architecture (e.g. ViT-B-32) or a project model (toy-s, toy-m, toy-l).")]
Images = Annotated[Path, typer.Option(help="Folder of images, searched recursively; class sub-folders give labels.")]
Out = Annotated[Optional[Path], typer.Option(help="Run folder to write (default: runs/<model>[-<weights>] in the current folder, or under $CLIP_INTERPRET_DATA_DIR).")]
RunModel = Annotated[Optional[str], typer.Option("--model", "-m", help="open_clip architecture or project model. Default: every shipped toy model.")]
RunImages = Annotated[Optional[Path], typer.Option(help="Folder of probe images. Default for toy models: a generated toy-world probe set (runs/_probe/toyworld, 5,000 images, seed 0).")]
RunOut = Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/<model>[-<weights>] in the current folder, or under $CLIP_INTERPRET_DATA_DIR).")]
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
Engine = Annotated[str, typer.Option(help="local (this process) or ray (on a Ray instance or cluster: decomposition actors, and one textspan task per head; needs pip install -e '.\\[ray]').")]
RayAddress = Annotated[Optional[str], typer.Option(help="--engine ray: the cluster to join ('auto' for the one `ray start --head` started here, or ray://HOST:10001). Default: start a local instance for this command.")]
Models = Annotated[Optional[Path], typer.Option(help="A CSV or YAML of models (columns model, pretrained, images, out; the last three may be empty), or a shipped list: study, vit_zoo. One run each, as a single `run` would write it.")]
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


# ---------------------------------------------------------------- option groups, each shared by two commands


@dataclasses.dataclass(frozen=True)
class DecomposeFlags:
    """`decompose` and `run`: the weights, the device, and which layers and images to decompose in what batches."""

    pretrained: Pretrained = None
    random_init: RandomInit = False
    seed: Seed = 0
    layers: Layers = None
    limit: Limit = None
    batch_size: BatchSize = 16
    workers: Workers = None
    chunk_size: ChunkSize = 512
    device: Device = "auto"
    precision: Precision = "fp32"
    engine: Engine = "local"
    ray_address: RayAddress = None


@dataclasses.dataclass(frozen=True)
class TextspanFlags:
    """`textspan` and `run`."""

    pool: Pool = None
    k: K = 20
    rank: Rank = 80


@dataclasses.dataclass(frozen=True)
class LabelFlags:
    """`label` and `run` (`run` passes --top-k on to the score stage too)."""

    labeller: Labeller = "pool"
    top_k: TopK = 5
    min_share: MinShare = 0.4
    overrides: Overrides = None
    llm_base_url: LlmUrl = None
    llm_model: LlmModel = None
    llm_timeout: LlmTimeout = 30.0


@dataclasses.dataclass(frozen=True)
class ScoreFlags:
    """`score` and `run`, besides --top-k."""

    template: Templates = None
    attributes: Attributes = None


def _decompose_request(model: str | None, images: Path | None, out: Path | None, flags: DecomposeFlags):
    from precompute.errors import InputError
    from precompute.pipeline import DecomposeRequest

    for name in ("batch_size", "chunk_size"):
        if (v := getattr(flags, name)) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    return DecomposeRequest(model, images, out, **dataclasses.asdict(flags))


def _label_options(flags: LabelFlags):
    from precompute.stage_label import LabelOptions

    return LabelOptions(**dataclasses.asdict(flags))


def _score_options(top_k: int, flags: ScoreFlags, quiet: bool):
    from precompute.errors import InputError
    from precompute.stage_score import DEFAULT_TEMPLATES, ScoreOptions

    templates = tuple(flags.template) if flags.template else DEFAULT_TEMPLATES
    if any("{}" not in t for t in templates):
        raise InputError(f"every --template needs '{{}}' for the class name; got {list(templates)}")
    return ScoreOptions(top_k, templates, flags.attributes, progress=not quiet)


def _ablate_options(flags: ScoreFlags, quiet: bool):
    from precompute.stage_ablate import AblateOptions
    from precompute.stage_score import DEFAULT_TEMPLATES

    return AblateOptions(templates=tuple(flags.template) if flags.template else DEFAULT_TEMPLATES,
                         attributes=flags.attributes, progress=not quiet)


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
@option_groups
def decompose(model: Model, images: Images, out: Out = None, flags: DecomposeFlags = DecomposeFlags(),
              quiet: Quiet = False):
    """Decompose every image's embedding into per-head vectors and write images, embeddings and head vectors."""
    from precompute import pipeline

    request = _decompose_request(model, images, out, flags)
    _quiet_libraries()
    _print_decompose_summary(pipeline.decompose(request, progress=not quiet))


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


def _done(stage: str, ran: bool, out: Path) -> None:
    typer.echo(f"{out}: {stage} " + ("done" if ran else "is current; nothing to do (--force recomputes)"))


@app.command()
@handle_errors
@option_groups
def textspan(out: RunDir, flags: TextspanFlags = TextspanFlags(), device: Device = "auto", force: Force = False,
             quiet: Quiet = False, engine: Engine = "local", ray_address: RayAddress = None):
    """Name every analysed head with TEXTSPAN: embed the pool once, write texts and head_texts."""
    from precompute import pipeline

    _quiet_libraries()
    _done("textspan", pipeline.textspan(out, flags.pool, flags.k, flags.rank, device, force, not quiet, engine,
                                        ray_address), out)


@app.command()
@handle_errors
@option_groups
def label(out: RunDir, flags: LabelFlags = LabelFlags(), force: Force = False):
    """Give every analysed head a property (pool vote, LLM, or manual override) and write head_labels."""
    from precompute.stage_label import run_label

    _done("label", run_label(out, _label_options(flags), force), out)


@app.command()
@handle_errors
@option_groups
def score(out: RunDir, top_k: TopK = 5, flags: ScoreFlags = ScoreFlags(), device: Device = "auto",
          force: Force = False, quiet: Quiet = False):
    """Score heads and the model: association, CCS, entanglement, variance explained, zero-shot, ground truth."""
    from precompute import pipeline

    opts = _score_options(top_k, flags, quiet)
    _quiet_libraries()
    _done("score", pipeline.score(out, opts, device, force, note=_note), out)


def _note(message: str) -> None:
    typer.secho(f"note: {message}", fg=typer.colors.YELLOW, err=True)


@app.command()
@handle_errors
@option_groups
def run(model: RunModel = None, images: RunImages = None, out: RunOut = None, models: Models = None,
        decompose_flags: DecomposeFlags = DecomposeFlags(), textspan_flags: TextspanFlags = TextspanFlags(),
        label_flags: LabelFlags = LabelFlags(), score_flags: ScoreFlags = ScoreFlags(), force: Force = False,
        quiet: Quiet = False,
        ablate: Annotated[bool, typer.Option("--ablate", help="Also run the ablate stage (defaults of `clip-interpret ablate`) after score.")] = False):
    """Decompose, TEXTSPAN, label and score in one go; stages whose output is current are skipped."""
    from precompute import pipeline

    request = pipeline.RunRequest(
        decompose=_decompose_request(model, images, out, decompose_flags),
        pool=textspan_flags.pool, k=textspan_flags.k, rank=textspan_flags.rank,
        label=_label_options(label_flags), score=_score_options(label_flags.top_k, score_flags, quiet), force=force,
        ablate=_ablate_options(score_flags, quiet) if ablate else None, models=models)
    _quiet_libraries()
    (first, _), *_ = pipeline.run(request, log=typer.echo, progress=not quiet)
    data_dir = "" if model is None and models is None else f" --data-dir {first.source.out.parent}"
    typer.echo("open the dashboard: clip-interpret dashboard" + data_dir)


@app.command()
@handle_errors
def dashboard(
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding run folders (searched 3 levels deep). Default: $CLIP_INTERPRET_DATA_DIR, else ./runs.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
):
    """Serve the Streamlit dashboard over every run under --data-dir."""
    from precompute.errors import InputError

    data_dir = data_dir or paths.runs_dir()
    if not data_dir.is_dir():
        raise InputError(f"data folder {data_dir} does not exist; make runs with `clip-interpret run` first")
    app_file = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", "--data-dir", str(data_dir.resolve())]
    typer.echo(f"dashboard on http://{host}:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the server (exec, not a child): SIGTERM, SIGINT or SIGHUP sent to this pid reach Streamlit itself,
    # so a supervisor that stops `clip-interpret dashboard` never leaves a server holding the port.
    os.execv(sys.executable, cmd)


def _mount_toyworld() -> None:
    from precompute.toyworld.cli import app as toyworld_app

    app.add_typer(toyworld_app, name="toyworld")


_mount_toyworld()
app.command("verify")(handle_errors(__import__("precompute.cli_verify", fromlist=["verify"]).verify))
app.add_typer(__import__("precompute.cli_analyse", fromlist=["app"]).app, name="analyse")
app.command("ablate")(handle_errors(__import__("precompute.cli_ablate", fromlist=["ablate"]).ablate))
app.command("compare")(handle_errors(__import__("precompute.cli_ablate", fromlist=["compare"]).compare))


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="clip-interpret")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
