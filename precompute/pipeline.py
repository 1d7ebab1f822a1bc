"""images -> decompose -> textspan -> label -> score, each stage skipped when its output is current.

A command of the CLI is one call here: a request (what the user said, ``None`` where they said nothing) is
planned (every default resolved: the model's probe set, pool and run folder, or every shipped toy model) and
the plan runs stage by stage. The embedded default: with no model and no images, every toy model shipped
under ``data/models/`` on a toy-world probe set generated at a fixed seed, into the work folder
(``paths.runs_dir()``: ./runs unless $CLIP_INTERPRET_DATA_DIR).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from precompute import paths, registry, schema, store
from precompute.errors import InputError, RunDirError
from precompute.pools import load_pool
from precompute.stage_ablate import AblateOptions, run_ablate, summary_lines
from precompute.stage_decompose import DecomposeOptions, DecomposeSummary, run_decompose
from precompute.stage_label import LabelOptions, run_label
from precompute.stage_score import ScoreOptions, run_score
from precompute.stage_textspan import DEFAULT_K, DEFAULT_RANK, TextspanOptions, run_textspan

DEFAULT_PROBE_N = 5000
DEFAULT_PROBE_SEED = 0


@dataclass(frozen=True)
class DecomposeRequest:
    """A model, its weights and the images to decompose: what `decompose` takes and `run` shares.

    ``None`` is the default, resolved by ``plan``: no model, every shipped toy model (`run` only); no images,
    the model's generated probe set (toy models, `run` only); no out, ``default_out``.
    """

    model: str | None = None
    images: Path | None = None
    out: Path | None = None
    pretrained: str | None = None
    random_init: bool = False
    seed: int = 0
    layers: str | None = None  # '-4:' or '8,9,10,11'; default the last 4
    limit: int | None = None
    batch_size: int = 16
    workers: int | None = None
    chunk_size: int = 512
    device: str = "auto"
    precision: str = "fp32"
    engine: str = "local"  # 'local' (this process) or 'ray' (precompute/engine_ray.py)
    ray_address: str | None = None  # with the Ray engine: None starts a local instance; 'auto' joins a cluster

    def load(self) -> registry.LoadedModel:
        weights = registry.parse_weights(self.model, self.pretrained, self.random_init, self.seed)
        return registry.load_model(registry.ModelSpec(self.model, weights, self.device, self.precision))

    def options(self, progress: bool = True) -> DecomposeOptions:
        """The decompose stage's options; images and out must be resolved."""
        return DecomposeOptions(self.images, self.out, self.layers, self.limit, self.batch_size, self.workers,
                                self.chunk_size, progress)


@dataclass(frozen=True)
class RunRequest:
    """Everything `clip-interpret run` takes."""

    decompose: DecomposeRequest = DecomposeRequest()
    pool: str | None = None  # None: the model's pool (registry.model_defaults)
    k: int = DEFAULT_K
    rank: int = DEFAULT_RANK
    label: LabelOptions = LabelOptions()
    score: ScoreOptions = ScoreOptions()
    force: bool = False
    ablate: AblateOptions | None = None  # `run --ablate`: the ablate stage after score (off by default)
    models: Path | None = None  # `run --models FILE`: one run per row (precompute/models_file.py)


@dataclass(frozen=True)
class RunPlan:
    """One model's run with every default resolved: what the stages are called with."""

    source: DecomposeRequest  # model, images and out set
    textspan: TextspanOptions
    label: LabelOptions
    score: ScoreOptions
    force: bool = False
    ablate: AblateOptions | None = None


@dataclass
class StageReport:
    stage: str
    ran: bool
    seconds: float
    detail: str = ""


def default_pool(model: str) -> str:
    return registry.model_defaults(model).pool


def default_out(model: str, pretrained: str | None, random_init: bool) -> Path:
    """The run folder when none is given: ``<work folder>/<model>[-<weights>]``."""
    if random_init:
        suffix = "-random"
    elif not pretrained:
        suffix = ""
    else:
        p = pretrained.removeprefix("local-dir:").rstrip("/")
        suffix = "-" + (Path(p).stem if ("/" in p or "." in p) else p)
    return paths.runs_dir() / f"{model}{suffix}"


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


def default_requests(base: DecomposeRequest = DecomposeRequest(), progress: bool = True) -> list[DecomposeRequest]:
    """One request per shipped toy model on the default probe set (the README's main command)."""
    models = toy_models()
    if not models:
        raise InputError(f"no toy models are shipped under {paths.MODELS_DIR}; pass --model and --images")
    probe = ensure_default_probe(progress)
    runs = paths.runs_dir()
    return [replace(base, model=m, images=probe, out=runs / m) for m in models]


def plan(req: RunRequest, progress: bool = True) -> list[RunPlan]:
    """One plan per model (the request's, or every shipped toy model), images, run folder and pool resolved."""
    d = req.decompose
    if req.models is not None:
        sources = model_requests(req.models, d, progress)
    elif d.model is None:
        if d.out is not None or d.pretrained or d.random_init:
            raise InputError("--out, --pretrained and --random-init need --model (the default runs every toy model)")
        sources = default_requests(d, progress)
    else:
        images = d.images
        if images is None:
            if registry.model_defaults(d.model).probe is None:
                raise InputError(f"--images is needed for {d.model}; only toy models default to the toy-world probe set")
            images = ensure_default_probe(progress)
        sources = [replace(d, images=images, out=d.out or default_out(d.model, d.pretrained, d.random_init))]
    return [RunPlan(s, TextspanOptions(req.pool or default_pool(s.model), req.k, req.rank), req.label, req.score,
                    req.force, req.ablate) for s in sources]


def model_requests(path: Path, base: DecomposeRequest, progress: bool = True) -> list[DecomposeRequest]:
    """`run --models FILE`: one request per row, images and run folder resolved as a single `run` resolves them."""
    from precompute.models_file import read_models_file

    if base.model is not None or base.pretrained or base.random_init:
        raise InputError("--models excludes --model, --pretrained and --random-init: the file names the models "
                         "and their weights")
    out = []
    for row in read_models_file(path):
        images = row.images or base.images
        if images is None:
            if registry.model_defaults(row.model).probe is None:
                raise InputError(f"--models {path}: line {row.line} ({row.model}) names no images; add an 'images' "
                                 "column or pass --images")
            images = ensure_default_probe(progress)
        folder = row.out or default_out(row.model, row.pretrained, False)
        if row.out is None and base.out is not None:
            folder = base.out / folder.name
        clash = next((o for o in out if Path(o.out).resolve() == Path(folder).resolve()), None)
        if clash is not None:
            raise InputError(f"--models {path}: line {row.line} ({row.model}) would write into {folder}, as "
                             f"{clash.model} does; give one of them another 'out'")
        out.append(replace(base, model=row.model, pretrained=row.pretrained, images=images, out=folder))
    return out


ENGINES = ("local", "ray")


def check_engine(name: str, address: str | None = None) -> None:
    """Refuse an unknown engine, an address without Ray, or the Ray engine without Ray, before any model loads."""
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    if address is not None and name != "ray":
        raise InputError("--ray-address needs --engine ray")
    if name == "ray":
        from precompute.engine_ray import import_ray

        import_ray()


@contextlib.contextmanager
def engine(name: str, address: str | None = None):
    """The decompose stage's engine for one command: None (the local one) or a Ray session, always shut down."""
    check_engine(name, address)
    if name == "local":
        yield None
    elif name == "ray":
        from precompute.engine_ray import RayOptions, RaySession

        with RaySession(RayOptions(address=address)) as session:
            yield session


def run(req: RunRequest, log: Callable[[str], None] = print,
        progress: bool = True) -> list[tuple[RunPlan, list[StageReport]]]:
    """`clip-interpret run`: plan, then every stage of every planned model.

    With the Ray engine, several models run concurrently: each one's decomposition actors queue for the cluster's
    GPUs (or CPU slots) while the others' later stages run here; each model's run folder is the same.
    """
    d = req.decompose
    check_engine(d.engine, d.ray_address)
    plans = plan(req, progress)
    with engine(d.engine, d.ray_address) as session:
        compute = None if session is None else session.compute_chunks
        heads = None if session is None else session.map_heads  # textspan: one Ray task per head
        if session is None or len(plans) == 1:
            done = []
            for p in plans:
                log(f"{p.source.model} -> {p.source.out}")
                done.append((p, run_plan(p, log, progress, compute, map_heads=heads)))
            return done
        return _run_concurrently(plans, log, compute, heads)


def _run_concurrently(plans: list[RunPlan], log: Callable[[str], None], compute, map_heads=None) -> list:
    """Every plan in a thread of its own (no progress bars; each line names its model): the decompositions run on
    Ray side by side, the loads and later stages here one at a time (``run_plan``'s ``driver_lock``)."""
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()

    def one(p: RunPlan):
        log(f"{p.source.model} -> {p.source.out}")
        return p, run_plan(p, lambda line: log(f"[{p.source.model}] {line.strip()}"), False, compute, lock,
                           map_heads)

    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        return list(pool.map(one, plans))


def decompose(req: DecomposeRequest, progress: bool = True) -> DecomposeSummary:
    """`clip-interpret decompose`: the decompose stage alone, into ``req.out`` or ``default_out``."""
    check_engine(req.engine, req.ray_address)
    loaded = req.load()
    out = req.out or default_out(req.model, req.pretrained, req.random_init)
    with engine(req.engine, req.ray_address) as session:
        compute = None if session is None else session.compute_chunks
        return run_decompose(loaded, replace(req, out=out).options(progress), compute)


def textspan(run_dir: Path, pool: str | None = None, k: int = DEFAULT_K, rank: int = DEFAULT_RANK,
             device: str = "auto", force: bool = False, progress: bool = True, engine_name: str = "local",
             ray_address: str | None = None) -> bool:
    """`clip-interpret textspan` on a run: its own model, and the model's pool unless one is given; with the Ray
    engine, one task per head."""
    check_engine(engine_name, ray_address)
    loaded = loaded_for_run(run_dir, device)
    opts = TextspanOptions(pool or default_pool(loaded.spec.architecture), k, rank, progress=progress)
    with engine(engine_name, ray_address) as session:
        return run_textspan(loaded, run_dir, opts, force, None if session is None else session.map_heads)


def score(run_dir: Path, opts: ScoreOptions, device: str = "auto", force: bool = False,
          note: Callable[[str], None] = print) -> bool:
    """`clip-interpret score` on a run; where its model cannot be loaded, zero-shot is skipped with a note.

    The model is loaded only for zero-shot accuracy, which needs class labels: a probe set without them (a flat
    folder) is scored from the run's files alone, without the 0.3-1.7 GB of a loaded ViT.
    """
    manifest = store.read_manifest(Path(run_dir)) or {}
    if not (manifest.get("images") or {}).get("labelled"):
        return run_score(run_dir, opts, None, force)
    try:
        loaded = loaded_for_run(run_dir, device)
    except RunDirError as e:
        note(f"{e}; zero-shot accuracy is skipped")
        loaded = None
    return run_score(run_dir, opts, loaded, force)


def _clear_decompose(run_dir: Path) -> None:
    for name in (schema.HEAD_VECTORS_DIR, store.WORK_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (schema.IMAGES_FILE, schema.IMAGE_EMBEDDINGS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    manifest = store.read_manifest(run_dir)
    if manifest is not None:
        manifest.get("stages", {}).pop("decompose", None)
        store.write_manifest(run_dir, manifest)


def run_plan(p: RunPlan, log: Callable[[str], None] = print, progress: bool = True, compute=None,
             driver_lock: threading.Lock | None = None, map_heads=None) -> list[StageReport]:
    """Run every stage for one model; a stage whose output is current for the same inputs is skipped.

    ``compute`` is the decompose stage's engine (``stage_decompose.ComputeChunks``; None: the local one).
    ``driver_lock``, when models run concurrently, is held for the model load and for each stage after decompose:
    those run in this process, where torch's thread count and generator are process-wide (TEXTSPAN sets the one,
    a seeded random init draws from the other), so they run one model at a time, as separate runs would.
    ``map_heads`` computes the textspan stage's heads (``stage_textspan.MapHeads``; None: here)."""
    load_pool(p.textspan.pool)  # a bad pool fails now, not after a long decompose
    driver = driver_lock or contextlib.nullcontext()
    with driver:
        loaded = p.source.load()
    out = Path(p.source.out)
    reports = []

    t0 = time.perf_counter()
    dec = replace(p.source, out=out).options(progress)
    if p.force and store.read_manifest(out) is not None:
        from precompute.stage_decompose import _check_existing, model_record
        from precompute.registry import parse_layers

        _check_existing(out, model_record(loaded), list(parse_layers(dec.layers, loaded.info.layers)))
        _clear_decompose(out)
    summary = run_decompose(loaded, dec, compute)
    reports.append(StageReport("decompose", not summary.already_complete, time.perf_counter() - t0,
                               f"{summary.images} images, {len(summary.skipped)} skipped"))
    log(_line(reports[-1]))

    ts = replace(p.textspan, progress=progress)
    for stage, fn in (
        ("textspan", lambda: run_textspan(loaded, out, ts, force=p.force, map_heads=map_heads)),
        ("label", lambda: run_label(out, p.label, force=p.force)),
        ("score", lambda: run_score(out, replace(p.score, progress=progress), loaded, force=p.force)),
        *([("ablate", lambda: run_ablate(out, replace(p.ablate, progress=progress), loaded, force=p.force))]
          if p.ablate is not None else []),
    ):
        with driver:
            t0 = time.perf_counter()
            ran = fn()
        reports.append(StageReport(stage, ran, time.perf_counter() - t0))
        log(_line(reports[-1]))
    return reports


def ablate(run_dir: Path, opts: AblateOptions, device: str = "auto", force: bool = False) -> bool:
    """`clip-interpret ablate` on a run, with its own model (the class prompts need its text tower)."""
    return run_ablate(run_dir, opts, loaded_for_run(run_dir, device), force)


def ablate_summary(run_dir: Path) -> list[str]:
    """What the ablate stage found, in a few lines."""
    return summary_lines(run_dir)


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
