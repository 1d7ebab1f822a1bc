"""Where the dashboard looks for runs. Pure: argv and environment are passed in."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from precompute.paths import ENV_DATA_DIR, runs_dir


def data_dir_from_argv(argv: Sequence[str]) -> str | None:
    """The value of ``--data-dir DIR`` or ``--data-dir=DIR`` in the script's arguments (after ``--``)."""
    for i, arg in enumerate(argv):
        if arg == "--data-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--data-dir="):
            return arg.split("=", 1)[1]
    return None


def resolve_data_dir(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """``--data-dir`` in argv, else $CLIP_INTERPRET_DATA_DIR, else ./runs (the precompute's work folder)."""
    chosen = data_dir_from_argv(argv)
    return (Path(os.path.expanduser(chosen)) if chosen else runs_dir(environ)).resolve()
