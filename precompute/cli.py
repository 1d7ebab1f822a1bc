"""`clip-interpret`: thin Typer front end. Parse options, call the library, map errors to exit codes."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from precompute.errors import InterpretError

app = typer.Typer(
    help="What do the attention heads of CLIP vision transformers do? Decompose, name, label, score, explore.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DEFAULT_RUNS = Path("data/runs")


def handle_errors(fn):
    """Print domain errors as one line on stderr and exit non-zero, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InterpretError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None

    return wrapper


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
Workers = Annotated[int, typer.Option(help="Image-decoding worker processes (0 decodes in the main process).")]
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
    return DEFAULT_RUNS / f"{model}{suffix}"


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
    out: Annotated[Optional[Path], typer.Option(help="Run folder to write (default: data/runs/<model>[-<weights>]).")] = None,
    pretrained: Pretrained = None,
    random_init: RandomInit = False,
    seed: Seed = 0,
    layers: Layers = None,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    workers: Workers = 1,
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


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="clip-interpret")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
