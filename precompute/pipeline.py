"""images -> decompose -> textspan -> label -> score, each stage skipped when its output is current.

Also the embedded default: with no model and no images, every toy model shipped
under ``data/models/`` on a toy-world probe set generated at a fixed seed, into
the work folder (``paths.runs_dir()``: ./runs unless $CLIP_INTERPRET_DATA_DIR).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from precompute import paths, registry, schema, store
from precompute.errors import InputError, RunDirError
from precompute.pools import load_pool
from precompute.stage_decompose import DecomposeOptions, run_decompose
from precompute.stage_label import LabelOptions, run_label
from precompute.stage_score import ScoreOptions, run_score
from precompute.stage_textspan import TextspanOptions, run_textspan

DEFAULT_PROBE_N = 5000
DEFAULT_PROBE_SEED = 0


@dataclass(frozen=True)
class RunRequest:
    """Everything `clip-interpret run` needs for one model."""

    model: str
    images: Path
    out: Path
    pretrained: str | None = None
    random_init: bool = False
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    decompose: DecomposeOptions | None = None  # images/out filled in from above
    textspan: TextspanOptions | None = None  # default pool: toyworld for toy models, general otherwise
    label: LabelOptions = LabelOptions()
    score: ScoreOptions = ScoreOptions()
    force: bool = False


@dataclass
class StageReport:
    stage: str
    ran: bool
    seconds: float
    detail: str = ""


def default_pool(model: str) -> str:
    return registry.model_defaults(model).pool


def toy_models() -> list[str]:
    """Project toy models whose weights are shipped, smallest first."""
    return registry.shipped_toy_models()


def ensure_default_probe(progress: bool = True, path: Path | None = None) -> Path:
    """The toy-world probe set of the embedded default, generated on first use."""
    from precompute.toyworld.generator import write_probe_set

    path = path or paths.probe_dir()
    if not (path / schema.ATTRIBUTES_FILE).is_file():
        write_probe_set(path, DEFAULT_PROBE_N, DEFAULT_PROBE_SEED, progress=progress)
    return path


def default_requests(base: RunRequest | None = None, progress: bool = True) -> list[RunRequest]:
    """One request per shipped toy model on the default probe set (the README's main command)."""
    models = toy_models()
    if not models:
        raise InputError(f"no toy models are shipped under {paths.MODELS_DIR}; pass --model and --images")
    probe = ensure_default_probe(progress)
    runs = paths.runs_dir()
    template = base or RunRequest(model="", images=probe, out=runs)
    return [replace(template, model=m, images=probe, out=runs / m) for m in models]


def _clear_decompose(run_dir: Path) -> None:
    for name in (schema.HEAD_VECTORS_DIR, store.WORK_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (schema.IMAGES_FILE, schema.IMAGE_EMBEDDINGS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    manifest = store.read_manifest(run_dir)
    if manifest is not None:
        manifest.get("stages", {}).pop("decompose", None)
        store.write_manifest(run_dir, manifest)


def run_pipeline(req: RunRequest, log: Callable[[str], None] = print, progress: bool = True) -> list[StageReport]:
    """Run every stage for one model; a stage whose output is current for the same inputs is skipped."""
    ts = req.textspan or TextspanOptions(pool=default_pool(req.model))
    load_pool(ts.pool)  # a bad pool fails now, not after a long decompose
    weights = registry.parse_weights(req.model, req.pretrained, req.random_init, req.seed)
    loaded = registry.load_model(registry.ModelSpec(req.model, weights, req.device, req.precision))
    out = Path(req.out)
    reports = []

    t0 = time.perf_counter()
    dec = replace(req.decompose or DecomposeOptions(req.images, out), images=req.images, out=out, progress=progress)
    if req.force and store.read_manifest(out) is not None:
        from precompute.stage_decompose import _check_existing, model_record
        from precompute.registry import parse_layers

        _check_existing(out, model_record(loaded), list(parse_layers(dec.layers, loaded.info.layers)))
        _clear_decompose(out)
    summary = run_decompose(loaded, dec)
    reports.append(StageReport("decompose", not summary.already_complete, time.perf_counter() - t0,
                               f"{summary.images} images, {len(summary.skipped)} skipped"))
    log(_line(reports[-1]))

    ts = replace(ts, progress=progress)
    for stage, fn in (
        ("textspan", lambda: run_textspan(loaded, out, ts, force=req.force)),
        ("label", lambda: run_label(out, req.label, force=req.force)),
        ("score", lambda: run_score(out, replace(req.score, progress=progress), loaded, force=req.force)),
    ):
        t0 = time.perf_counter()
        ran = fn()
        reports.append(StageReport(stage, ran, time.perf_counter() - t0))
        log(_line(reports[-1]))
    return reports


def _line(r: StageReport) -> str:
    state = f"done in {r.seconds:.1f} s" if r.ran else "current, skipped"
    return f"  {r.stage:<10} {state}" + (f" ({r.detail})" if r.detail else "")


def loaded_for_run(run_dir: Path, device: str = "auto") -> registry.LoadedModel:
    """The model a run was made with, or a RunDirError saying why it is not available here.

    Rebuilt as the dashboard rebuilds it (``state.model_spec``, ``state.model_bundle``): the manifest's
    record through ``registry.spec_from_manifest``, then ``registry.load_model``.
    """
    manifest = store.read_manifest(Path(run_dir))
    if manifest is None:
        raise RunDirError(f"{run_dir} is not a run folder (no {schema.MANIFEST})")
    spec, why = registry.spec_from_manifest(manifest.get("model") or {}, device)
    if spec is None:
        raise RunDirError(f"{run_dir}: {why}")
    return registry.load_model(spec)
