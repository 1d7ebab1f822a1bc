"""The decompose stage: a folder of images -> images, embeddings and head vectors in a run directory.

Resumable: the plan (which files, in which chunks) is written before any work;
each chunk's files are written before its DONE marker; a restarted run skips
finished chunks and redoes the rest. See store.py. A finished stage whose files
fail the full check (precompute/verify.py) is reopened, and only its damaged
chunks are redone (precompute/repair.py).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from precompute import schema, store, verify
from precompute.decompose import Decomposer
from precompute.errors import RunDirError
from precompute.images import Batch, ImageFolderDataset, PixelPipeline, collate, discover, split_preprocess
from precompute.registry import LoadedModel, parse_layers
from precompute.repair import reopen
from precompute.weights import WeightsSource, legacy_pretrained

STAGE = "decompose"


@dataclass(frozen=True)
class DecomposeOptions:
    images: Path
    out: Path
    layers: str | None = None  # '-4:' or '8,9,10,11'; default the last 4
    limit: int | None = None
    batch_size: int = 16
    workers: int | None = None  # decoding processes; None: every core on a GPU, one on the CPU (default_workers)
    chunk_size: int = 512
    progress: bool = True


@dataclass
class DecomposeSummary:
    run_dir: Path
    images: int  # rows in images.parquet
    skipped: list[dict] = field(default_factory=list)
    ignored: int = 0
    seconds: float = 0.0
    computed: int = 0  # images decomposed by this call (0 when the run was already complete)
    already_complete: bool = False

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def versions() -> dict:
    import duckdb
    import open_clip

    from precompute import __version__

    return {"clip_interpret": __version__, "open_clip": open_clip.__version__, "torch": torch.__version__,
            "pyarrow": pa.__version__, "duckdb": duckdb.__version__, "python": platform.python_version()}


def model_record(loaded: LoadedModel) -> dict:
    """The manifest's ``model``: what identifies the model (compared on resume) plus its geometry."""
    info = loaded.info
    return {
        "architecture": loaded.spec.architecture,
        "weights": loaded.spec.weights.record(loaded.weights_sha256),
        "precision": loaded.spec.precision,
        "embed_dim": info.embed_dim,
        "layers_total": info.layers,
        "heads": info.heads,
        "width": info.width,
        "head_width": info.head_width,
        "image_size": info.image_size,
        "patch_size": info.patch_size,
        "grid": info.grid,
        "quick_gelu": info.quick_gelu,
    }


def _identity(model: dict) -> dict:
    """What makes two runs' models the same: the architecture and the weights record (sha256 included)."""
    return {"architecture": model.get("architecture"), "weights": model.get("weights")}


def _plan_identity(model: dict) -> dict:
    """The model as the decompose plan (and so its key) names it: the form manifests had before the weights
    record, so that a run made then is still current (``weights.legacy_pretrained``)."""
    w = model["weights"]
    return {"architecture": model["architecture"],
            "pretrained": legacy_pretrained(WeightsSource.from_record(w)), "weights_sha256": w.get("sha256")}


def _check_existing(run_dir: Path, model: dict, layers: list[int]) -> dict | None:
    """Refuse a run dir made by another model or other layers; return its manifest if it is ours."""
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} exists and is a file")
    manifest = store.read_manifest(run_dir)
    if manifest is None:
        if any(p for p in run_dir.iterdir() if not p.name.endswith(store.TEMP_SUFFIX)):
            raise RunDirError(f"--out {run_dir} exists, is not empty and is not a run folder; pick another --out")
        return None
    theirs = _identity(manifest.get("model") or {})
    ours = _identity(model)
    if theirs != ours:
        diff = ", ".join(f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs[k] != ours[k])
        raise RunDirError(f"{run_dir} holds a run of another model ({diff}); pick another --out")
    if manifest.get("layers") != layers:
        raise RunDirError(
            f"{run_dir} holds layers {manifest.get('layers')}, this call asks for {layers}; pick another --out"
        )
    return manifest


# The engine of the stage: computes and writes every unfinished chunk of the plan, returns the images it decomposed.
# Planning, the chunks' layout and the merge are the stage's own and the same for every engine: the local one
# (``compute_chunks``) and the Ray one (precompute/engine_ray.py) both call ``decompose_chunk`` and ``write_chunk``.
ComputeChunks = Callable[[LoadedModel, list[int], dict, store.ChunkStore, Path, DecomposeOptions], int]


def run_decompose(loaded: LoadedModel, opts: DecomposeOptions, compute: ComputeChunks | None = None
                  ) -> DecomposeSummary:
    run_dir = Path(opts.out)
    layers = list(parse_layers(opts.layers, loaded.info.layers))
    model = model_record(loaded)
    manifest = _check_existing(run_dir, model, layers)
    if run_dir.is_dir():
        store.sweep_temp(run_dir)  # orphans of a killed earlier write (a half-written images.parquet, say)
    root = Path(opts.images).resolve()
    found = discover(root, opts.limit)
    chunks = store.ChunkStore(run_dir, STAGE)

    plan = {
        "images_root": str(root), "limit": opts.limit, "chunk_size": opts.chunk_size, "layers": layers,
        "model": _plan_identity(model),
        "paths": [e.path for e in found.entries], "labels": [e.label for e in found.entries],
    }
    key = store.plan_key({k: v for k, v in plan.items() if k != "chunk_size"})
    stage = (manifest or {}).get("stages", {}).get(STAGE, {})
    if stage.get("done") and stage.get("key") == key:
        problems = verify.stage_problems(run_dir, manifest, STAGE)
        if not problems:
            return DecomposeSummary(run_dir, manifest["images"]["count"], manifest["images"]["skipped"],
                                    len(found.ignored), already_complete=True)
        reopen(run_dir, manifest, chunks, {**plan, "chunk_size": stage.get("chunk_size", opts.chunk_size)}, key,
                problems)
    if chunks.plan_path().is_file():
        saved = json.loads(chunks.plan_path().read_text())
        if saved.get("key") != key:
            old = saved["plan"]
            raise RunDirError(
                f"{run_dir} has an unfinished run with other inputs ({old['images_root']}, "
                f"{len(old['paths'])} images, --limit {old['limit']}); rerun that command to finish it, "
                "or pick another --out"
            )
        plan = saved["plan"]
    elif stage.get("done"):
        raise RunDirError(f"{run_dir} already holds a decompose of other images; pick another --out")
    else:
        store.write_json_atomic(chunks.plan_path(), {"key": key, "plan": plan})

    if manifest is None:
        manifest = store.new_manifest(model=model, layers=layers, heads=loaded.info.heads)
    manifest.update(model=model, layers=layers, heads=loaded.info.heads, versions=versions())
    manifest["images"] = {"root": plan["images_root"], "planned": len(plan["paths"]), "limit": opts.limit,
                          "labelled": found.labelled, "count": None, "skipped": []}
    manifest["stages"][STAGE] = {"done": False, "key": key, "started": store.now()}
    store.write_manifest(run_dir, manifest)

    t0 = time.perf_counter()
    computed = (compute or compute_chunks)(loaded, layers, plan, chunks, run_dir, opts)
    seconds = time.perf_counter() - t0
    count, skipped, files = _consolidate(run_dir, chunks, len(plan["paths"]), plan["chunk_size"])

    manifest["images"].update(count=count, skipped=skipped, ignored=[list(x) for x in found.ignored[:100]],
                              ignored_count=len(found.ignored))
    store.finish_stage(run_dir, manifest, STAGE, key, seconds, timing={
        "images": computed, "images_per_second": round(computed / seconds, 2) if seconds else None},
        files=files, chunk_size=plan["chunk_size"])
    chunks.clear()
    return DecomposeSummary(run_dir, count, skipped, len(found.ignored), seconds, computed)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset), not the machine
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """Decoding processes when none are asked for.

    On an accelerator the forward pass is fast and JPEG decoding is the bottleneck: decode on every core.
    On the CPU the workers compete with the forward pass for the same cores; one worker measured best
    on 2 cores (README, "Benchmarks").
    """
    return available_cores() if device.type != "cpu" else 1


def pending_chunks(plan: dict, chunks: store.ChunkStore) -> tuple[list[tuple[int, int]], list[int]]:
    """The plan's chunk bounds and the chunks without ``DONE``, whose leftovers are deleted now (resume)."""
    bounds = store.chunk_bounds(len(plan["paths"]), plan["chunk_size"])
    todo = [c for c in range(len(bounds)) if not chunks.is_done(c)]
    for c in todo:
        chunks.reset(c)
    return bounds, todo


def chunk_batches(bounds: tuple[int, int], batch_size: int) -> list[list[int]]:
    """The plan positions of each batch of one chunk: a batch never straddles a chunk boundary."""
    lo, hi = bounds
    return [list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size)]


def compute_chunks(loaded, layers, plan, chunks: store.ChunkStore, run_dir: Path, opts: DecomposeOptions) -> int:
    """The local engine: one DataLoader over every unfinished chunk, decoded in worker processes, decomposed
    here, each chunk written by a writer thread while the next one is decomposed."""
    paths, labels = plan["paths"], plan["labels"]
    bounds, todo = pending_chunks(plan, chunks)
    done_images = sum(hi - lo for c, (lo, hi) in enumerate(bounds) if c not in todo)
    if not todo:
        return 0
    batches = [b for c in todo for b in chunk_batches(bounds[c], opts.batch_size)]
    device = next(loaded.model.parameters()).device
    workers = default_workers(device) if opts.workers is None else opts.workers
    pixels = split_preprocess(loaded.preprocess)
    dataset = ImageFolderDataset(plan["images_root"], paths, list(range(len(paths))), pixels.to_pixels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
        worker_init_fn=_worker_init if workers else None, persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    decomposer = Decomposer(loaded.model, layers)
    bar = tqdm(total=len(paths), initial=done_images, unit="img", desc="decompose", disable=not opts.progress,
               dynamic_ncols=True)
    chunk_size = plan["chunk_size"]
    skipped = 0

    def shown(batch: Batch) -> None:
        nonlocal skipped
        skipped += sum(it.error is not None for it in batch.items)
        bar.update(len(batch.items))
        bar.set_postfix(skipped=skipped, refresh=False)

    writer = ThreadPoolExecutor(max_workers=1)
    pending: Future | None = None
    computed = 0
    try:
        for chunk, group in itertools.groupby(loader, key=lambda b: b.items[0].index // chunk_size):
            result = decompose_chunk(group, paths, labels, decomposer, pixels, device, on_batch=shown)
            computed += result.planned
            if pending is not None:
                pending.result()
            pending = writer.submit(write_chunk, run_dir, chunks, chunk, layers, result)
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)
        bar.close()
    return computed


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


@dataclass
class ChunkResult:
    """One chunk decomposed, in host memory: what ``write_chunk`` writes (and a Ray actor hands it)."""

    rows: dict[str, list]  # images.parquet's columns for the chunk's decoded images
    embeddings: np.ndarray | None  # [n, D] float32; None when every image of the chunk was skipped
    heads: np.ndarray | None  # [n, l, h, D] float32
    skipped: list[dict]  # {path, reason} of each image that could not be decoded

    @property
    def planned(self) -> int:
        """Images of the plan this chunk covers, decoded or skipped."""
        return len(self.rows["image_id"]) + len(self.skipped)


def decompose_chunk(batches: Iterable[Batch], paths: list[str], labels: list, decomposer: Decomposer,
                    pixels: PixelPipeline, device: torch.device,
                    on_batch: Callable[[Batch], None] | None = None) -> ChunkResult:
    """Decompose the decoded batches of one chunk; files that could not be decoded are listed, not raised."""
    acc = _ChunkAccumulator()
    for batch in batches:
        acc.add(batch, paths, labels, decomposer, pixels, device)
        if on_batch is not None:
            on_batch(batch)
    return acc.take()


class _ChunkAccumulator:
    """Collects one chunk's rows in memory until it is written.

    On a GPU nothing here waits for the device per batch: the results are copied to (pinned) host memory
    with ``non_blocking=True`` and read only when the chunk is taken, so the next batch's host-to-device
    copy and kernels queue behind the current one while the host does the bookkeeping.
    """

    def __init__(self):
        self.device = torch.device("cpu")
        self._reset()

    def _reset(self):
        self.rows: dict[str, list] = {"image_id": [], "path": [], "label": [], "width": [], "height": [], "thumbnail": []}
        self.embeddings: list[torch.Tensor] = []  # on the host, possibly still being copied
        self.heads: list[torch.Tensor] = []
        self.skipped: list[dict] = []

    def add(self, batch: Batch, paths, labels, decomposer: Decomposer, pixels: PixelPipeline, device) -> None:
        items = batch.items
        good = [it for it in items if it.error is None]
        for it in items:
            if it.error is not None:
                self.skipped.append({"path": paths[it.index], "reason": it.error})
        if not good:
            return
        self.device = device
        x = pixels.normalise(batch.pixels.to(device, non_blocking=True))  # [b, 3, H, W] float32, on the device
        dec = decomposer(x)
        self.embeddings.append(dec.embedding.to("cpu", non_blocking=True))  # [b, D]
        self.heads.append(dec.heads.to("cpu", non_blocking=True))  # [b, l, h, D]
        for it in good:
            self.rows["image_id"].append(it.index)
            self.rows["path"].append(paths[it.index])
            self.rows["label"].append(labels[it.index])
            self.rows["width"].append(it.width)
            self.rows["height"].append(it.height)
            self.rows["thumbnail"].append(it.thumbnail)

    def take(self) -> ChunkResult:
        _synchronize(self.device)  # the non-blocking device-to-host copies of this chunk have landed
        out = ChunkResult(self.rows, torch.cat(self.embeddings).numpy() if self.embeddings else None,
                          torch.cat(self.heads).numpy() if self.heads else None, self.skipped)
        self._reset()
        return out


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def write_chunk(run_dir: Path, chunks: store.ChunkStore, chunk: int, layers: list[int], result: ChunkResult) -> None:
    """Write one chunk in the run's layout: its head parts, its work files, ``files.json``, then ``DONE`` last."""
    rows, embeddings, heads, skipped = result.rows, result.embeddings, result.heads, result.skipped
    ids = pa.array(rows["image_id"], pa.int64())
    files = {}
    if heads is not None:
        for li, layer in enumerate(layers):
            for h in range(heads.shape[2]):
                table = pa.Table.from_arrays([ids, store.vectors_to_arrow(heads[:, li, h])],
                                             schema=schema.HEAD_VECTORS_FILE)
                path = store.head_part_path(run_dir, layer, h, chunk)
                files[store.relpath(run_dir, path)] = store.write_table_atomic(path, table, schema.VECTOR_SPLIT)
        emb = pa.Table.from_arrays([ids, store.vectors_to_arrow(embeddings)], schema=schema.IMAGE_EMBEDDINGS)
        store.write_table_atomic(chunks.chunk_dir(chunk) / schema.IMAGE_EMBEDDINGS_FILE, emb, schema.EMBEDDING_SPLIT)
    images = pa.Table.from_pydict(rows, schema=schema.IMAGES)
    store.write_table_atomic(chunks.chunk_dir(chunk) / schema.IMAGES_FILE, images)
    store.write_json_atomic(chunks.chunk_dir(chunk) / "skipped.json", skipped)
    store.write_json_atomic(chunks.chunk_dir(chunk) / store.ChunkStore.FILES, files)
    chunks.mark_done(chunk)


def _consolidate(run_dir: Path, chunks: store.ChunkStore, n: int, chunk_size: int
                 ) -> tuple[int, list[dict], dict[str, dict]]:
    """Merge the chunks' image and embedding tables into the run's final files.

    Returns the image count, the skipped files and the ``file_record`` of every file the stage wrote.
    """
    images, embeddings, skipped, files = [], [], [], {}
    for c in range(len(store.chunk_bounds(n, chunk_size))):
        d = chunks.chunk_dir(c)
        if not chunks.is_done(c):
            raise RunDirError(f"chunk {c} of {run_dir} is not finished; rerun the same command to finish it")
        images.append(pq.read_table(d / schema.IMAGES_FILE))
        if (d / schema.IMAGE_EMBEDDINGS_FILE).is_file():
            embeddings.append(pq.read_table(d / schema.IMAGE_EMBEDDINGS_FILE))
        skipped.extend(json.loads((d / "skipped.json").read_text()))
        files.update(_chunk_files(run_dir, d, c))
    image_table = pa.concat_tables(images) if images else schema.IMAGES.empty_table()
    files[schema.IMAGES_FILE] = store.write_table_atomic(run_dir / schema.IMAGES_FILE, image_table,
                                                         row_group_size=schema.IMAGES_ROW_GROUP)
    emb_table = pa.concat_tables(embeddings) if embeddings else schema.IMAGE_EMBEDDINGS.empty_table()
    files[schema.IMAGE_EMBEDDINGS_FILE] = store.write_table_atomic(run_dir / schema.IMAGE_EMBEDDINGS_FILE,
                                                                   emb_table, schema.EMBEDDING_SPLIT)
    return image_table.num_rows, skipped, files


def _chunk_files(run_dir: Path, chunk_dir: Path, chunk: int) -> dict[str, dict]:
    """A chunk's head-part records: from its files.json, or read back from its parts (a chunk finished before
    the record, resumed now)."""
    if (chunk_dir / store.ChunkStore.FILES).is_file():
        return json.loads((chunk_dir / store.ChunkStore.FILES).read_text())
    name = f"part-{chunk:05d}.parquet"
    parts = (Path(run_dir) / schema.HEAD_VECTORS_DIR).glob(f"layer=*/head=*/{name}")
    return {store.relpath(run_dir, p): store.file_record(p) for p in sorted(parts)}
