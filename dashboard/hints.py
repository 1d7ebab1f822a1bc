"""What to tell a user whose run lacks a stage, or who has no runs yet: the exact command that adds it.

Pure text, no streamlit. Commands are built from the run's manifest so they can be
pasted as they are (stages already done are skipped by `clip-interpret run`).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from precompute import verify, weights
from precompute.schema import STAGES

WHAT = {
    "decompose": "head vectors",
    "textspan": "TEXTSPAN texts",
    "label": "property labels",
    "score": "scores",
}


weights_args = weights.cli_args  # the run's weights record as `clip-interpret` options


def run_command(manifest: Mapping, run_dir: str) -> str:
    """`clip-interpret run ...` that completes the run in ``run_dir`` (``precompute.verify.run_command``)."""
    return verify.run_command(Path(run_dir), dict(manifest))


def stage_command(stage: str, run_dir: str, manifest: Mapping | None = None) -> str:
    return verify.stage_command(Path(run_dir), dict(manifest or {}), stage)


def missing_stages(done: Sequence[str], needed: str) -> list[str]:
    """The stages up to and including ``needed`` that are not done, in pipeline order."""
    upto = STAGES[: STAGES.index(needed) + 1]
    return [s for s in upto if s not in done]


def stage_hint(run: str, manifest: Mapping | str, run_dir: str, done: Sequence[str], needed: str) -> str | None:
    """Markdown saying what the run lacks for ``needed`` and the commands that add it; None if nothing is missing."""
    if isinstance(manifest, str):
        manifest = json.loads(manifest)
    missing = missing_stages(done, needed)
    if not missing:
        return None
    have = ", ".join(done) or "none"
    if "decompose" in missing:
        steps = f"`{run_command(manifest, run_dir)}`"
    else:
        steps = " then ".join(f"`{stage_command(s, run_dir, manifest)}`" for s in missing)
        steps += f", or all at once: `{run_command(manifest, run_dir)}` (finished stages are skipped)"
    return (f"Run **{run}** has no {WHAT[needed]} yet (stages done: {have}). "
            f"Add {'them' if len(missing) > 1 else 'it'} with {steps}.")


def getting_started(data_dir: str, exists: bool, problems: Sequence[str] = ()) -> str:
    """Markdown for an empty or missing data folder: how to make runs and open them."""
    where = "does not exist yet" if not exists else "holds no runs yet (no folder with a manifest.json, 3 levels deep)"
    q = shlex.quote(data_dir)
    text = f"""The data folder `{data_dir}` {where}.

A *run* is what the precompute writes for one model: head vectors, TEXTSPAN texts, labels and scores.
Make one, then reload this page:

```bash
# every shipped toy model on the generated toy-world probe set, into ./runs (or $CLIP_INTERPRET_DATA_DIR)
clip-interpret run
# your own model and images (weights from a local file; tags need the model hub)
clip-interpret run --model ViT-B-32 --pretrained /path/to/weights.safetensors \\
    --images /path/to/images --out {q}/ViT-B-32
# a quick check with a tiny random model
clip-interpret run --model test-tiny --random-init --images /path/to/images --out {q}/tiny
```

Then serve the dashboard over that folder: `clip-interpret dashboard --data-dir {q}`
(or `streamlit run dashboard/app.py -- --data-dir {q}`, or set `CLIP_INTERPRET_DATA_DIR`).
"""
    if problems:
        text += "\n\nFolders that look like runs but could not be read:\n\n" + "\n".join(f"- {p}" for p in problems)
    return text
