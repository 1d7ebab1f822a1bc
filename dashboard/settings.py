"""Where the dashboard looks for runs. Pure: argv and environment are passed in."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

ENV_DATA_DIR = "CLIP_INTERPRET_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "runs"


def data_dir_from_argv(argv: Sequence[str]) -> str | None:
    """The value of ``--data-dir DIR`` or ``--data-dir=DIR`` in the script's arguments (after ``--``)."""
    for i, arg in enumerate(argv):
        if arg == "--data-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--data-dir="):
            return arg.split("=", 1)[1]
    return None


def resolve_data_dir(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """``--data-dir`` in argv, else $CLIP_INTERPRET_DATA_DIR, else data/runs under the repository root."""
    chosen = data_dir_from_argv(argv) or environ.get(ENV_DATA_DIR) or str(DEFAULT_DATA_DIR)
    return Path(os.path.expanduser(chosen)).resolve()
