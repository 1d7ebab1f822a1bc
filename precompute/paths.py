"""Where things are: the shipped assets, and the work folder that runs and generated files go to.

Shipped assets (toy weights, text pools, LLM examples) live in the repository's
top-level ``data/`` folder. A wheel installs that folder's shipped part as
``precompute/assets/`` (pyproject maps the package ``precompute.assets`` onto
``data/``), so a checkout, an editable install and a plain ``pip install .`` all
find the same files.

Everything the tools write goes under the work folder: $CLIP_INTERPRET_DATA_DIR,
else ``runs/`` in the current directory; never next to the installed package.
Run folders sit at its top; generated probe sets and training checkpoints sit in
``_``-folders, which the dashboard does not search for runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "model_configs"
_INSTALLED_ASSETS = PACKAGE_DIR / "assets"  # what a wheel installs
ASSETS_DIR = _INSTALLED_ASSETS if _INSTALLED_ASSETS.is_dir() else PACKAGE_DIR.parent / "data"  # else a checkout
MODELS_DIR = ASSETS_DIR / "models"
POOLS_DIR = ASSETS_DIR / "pools"
LLM_EXAMPLES = ASSETS_DIR / "llm_examples.json"

ENV_DATA_DIR = "CLIP_INTERPRET_DATA_DIR"
DEFAULT_RUNS = "runs"  # relative to the current directory


def runs_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The work folder: $CLIP_INTERPRET_DATA_DIR, else ./runs, as an absolute path (read at call time)."""
    return Path(os.path.expanduser(environ.get(ENV_DATA_DIR) or DEFAULT_RUNS)).absolute()


def probe_dir(name: str = "toyworld", environ: Mapping[str, str] = os.environ) -> Path:
    """Where a generated probe set goes by default."""
    return runs_dir(environ) / "_probe" / name


def train_dir(model: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Checkpoints of a toy model's training."""
    return runs_dir(environ) / "_train" / model


def export_dir(model: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where a freshly trained toy model is exported by default (the shipped ones live under MODELS_DIR)."""
    return runs_dir(environ) / "_models" / model
