"""`clip-interpret ablate` and `clip-interpret compare` (docs/design.md sections 6.4 and 6.5).

Kept apart from cli.py, which registers them with one line each, as it registers `verify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Fractions = Annotated[Optional[list[float]], typer.Option("--fraction", help="Group size as a share of the analysed heads, for the CCS top-k / bottom-k and random sets (repeat for several). Default: 0.125, 0.25, 0.375, 0.5.")]
Repeats = Annotated[int, typer.Option(help="Random head sets per group size (their mean and spread are the baseline).")]
AblateSeed = Annotated[int, typer.Option("--seed", help="Seed of the random head sets and of the CCS tie-break.")]
MinDrop = Annotated[float, typer.Option(help="Causal label check: a head's causal attribute must lose more accuracy than this (else the check is inconclusive).")]
Forward = Annotated[bool, typer.Option("--forward", help="Also mean-ablate each head through the model (later layers see it) on a sample, and record how far it differs from the direct effect.")]
ForwardImages = Annotated[int, typer.Option(help="Images in the --forward sample (seeded).")]
BatchSize = Annotated[int, typer.Option(help="Images per forward pass (--forward only).")]
Templates = Annotated[Optional[list[str]], typer.Option("--template", help="Zero-shot prompt with '{}' for the class name (repeat for several); the toy world's attributes use its own prompts. Default: 'a photo of a {}.', 'an image of a {}.', 'a {}.'")]
Attributes = Annotated[Optional[Path], typer.Option(help="Ground-truth attributes (Parquet: path + categorical columns). Default: <images>/attributes.parquet when present.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | mps.")]
Force = Annotated[bool, typer.Option("--force", help="Recompute even when the stage's output is current.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def ablate_options(fraction, repeats, seed, min_drop, forward, forward_images, batch_size, template, attributes,
                   quiet):
    from precompute.stage_ablate import DEFAULT_FRACTIONS, DEFAULT_TEMPLATES, AblateOptions

    opts = AblateOptions(fractions=tuple(fraction) if fraction else DEFAULT_FRACTIONS, repeats=repeats, seed=seed,
                         min_drop=min_drop, templates=tuple(template) if template else DEFAULT_TEMPLATES,
                         attributes=attributes, forward=forward, forward_images=forward_images,
                         batch_size=batch_size, progress=not quiet)
    opts.check()
    return opts


def ablate(
    out: Annotated[Path, typer.Option("--out", help="The run folder (scored by `run` or `score`).")],
    fraction: Fractions = None,
    repeats: Repeats = 16,
    seed: AblateSeed = 0,
    min_drop: MinDrop = 0.005,
    forward: Forward = False,
    forward_images: ForwardImages = 500,
    batch_size: BatchSize = 64,
    template: Templates = None,
    attributes: Attributes = None,
    device: Device = "auto",
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Mean-ablate every head, each property's heads, the most / least consistent heads and random sets; write head_ablations, group_ablations and model_ablations."""
    from precompute import pipeline

    opts = ablate_options(fraction, repeats, seed, min_drop, forward, forward_images, batch_size, template,
                          attributes, quiet)
    ran = pipeline.ablate(out, opts, device, force)
    typer.echo(f"{out}: ablate " + ("done" if ran else "is current; nothing to do (--force recomputes)"))
    for line in pipeline.ablate_summary(out):
        typer.echo("  " + line)


def compare(
    run: Annotated[list[Path], typer.Option("--run", help="A run folder; give exactly two (the same probe images).")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for the head_matches file. Default: _compare/ in the data folder ($CLIP_INTERPRET_DATA_DIR, else ./runs) when both runs are under it, else beside the first run.")] = None,
    rank: Annotated[int, typer.Option(help="Directions kept per head (its span; a head writes into at most head-width directions).")] = 64,
) -> None:
    """Linear CKA of every head of one run against every head of another over their shared images; write a head_matches table."""
    from precompute import compare as cmp
    from precompute.errors import InputError

    if len(run) != 2:
        raise InputError(f"compare takes exactly two --run folders, got {len(run)}")
    result = cmp.compare_runs(run[0], run[1], out, rank)
    typer.echo(f"{result.path}: {result.rows:,} head pairs over {result.images:,} shared images "
               f"in {result.seconds:.1f} s")
    for line in result.summary():
        typer.echo("  " + line)
