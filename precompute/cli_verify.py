"""`clip-interpret verify RUN`: a run folder checked against its manifest's file record (precompute/verify.py).

Kept apart from cli.py, which registers it (``app.command("verify")(handle_errors(verify))``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DAMAGED_EXIT_CODE = 3  # the run is damaged: every damaged, missing or short file was named
INCOMPLETE_EXIT_CODE = 4  # not damaged, but a stage did not finish: the command that resumes it was printed


def verify(
    run: Annotated[Path, typer.Argument(help="The run folder to check (written by `run` or `decompose`).")],
    quick: Annotated[bool, typer.Option("--quick", help="Only sizes, Parquet footers and head coverage (no checksums): what the dashboard checks.")] = False,
) -> None:
    """Check every file of a run against the manifest (size, rows, sha256) and each head's coverage of the images; exit 3 naming each damaged file and the command that repairs it, or 4 with the command that resumes a stage that did not finish."""
    from precompute import verify as check
    from precompute.errors import InputError

    if not run.is_dir():
        raise InputError(f"{run} is not a folder; pass a run folder (written by `clip-interpret run`)")
    health = check.check_run(run, full=not quick)
    for problem in health.problems:
        typer.echo(f"{problem.kind:<10} {problem.line()}")
    typer.echo(f"{run}: {health.summary()}")
    if not health.ok:
        typer.echo(f"repair: {health.repair_command()}")
        raise typer.Exit(DAMAGED_EXIT_CODE)
    if health.unfinished:
        typer.echo(f"resume: {health.resume_command()}")
        raise typer.Exit(INCOMPLETE_EXIT_CODE)
