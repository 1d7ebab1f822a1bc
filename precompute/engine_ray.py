"""The Ray engine of the decompose stage (docs/design.md section 9.1): the same plan, chunks and files as the local one.

The stage plans, resumes and merges exactly as with the local engine (``stage_decompose.run_decompose``); only the
chunks' computation moves: a pool of decomposition actors, one per GPU (or per CPU slot), each loading the model and
its ``Decomposer`` once, decodes a chunk's images with the project's decoder (``images.ImageFolderDataset``),
decomposes them (``stage_decompose.decompose_chunk``) and writes the chunk in the run's layout
(``stage_decompose.write_chunk``: atomic writes, ``files.json``, ``DONE`` last). So a run killed mid-way resumes with
either engine, and both write the same tables. The driver only plans, counts and merges; the actors write to the run
folder themselves, which must therefore be a path every node of the cluster sees (a shared file system).

Two ways to drive the actors, measured side by side by ``benchmarks/ray_engine.py``: plain actors over chunks
(``ActorPool``, the default) and a Ray Data ``map_batches`` over the chunk list with the same stateful actor class.

The textspan stage's heads run here too, one task per head (``RaySession.map_heads``, docs/design.md section 9.1).

Ray is optional (``pip install -e '.[ray]'``) and imported only here, only when the Ray engine is chosen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from precompute.errors import InputError, InterpretError

MODES = ("actors", "data")
# A whole CPU per actor stalls on a 2-core machine: the actors (and Ray Data's read task) wait for a third CPU.
ACTOR_CPUS = 0.5
# A textspan head task's CPUs: four at a time on 2 cores, so a task never waits for a CPU another holds idle.
HEAD_TASK_CPUS = 0.5
INSTALL = "pip install -e '.[ray]'"


class EngineError(InterpretError):
    """Ray lost work that the driver cannot redo itself (an actor or a node died)."""


def import_ray():
    """The ``ray`` module, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--engine ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray engine runs."""

    address: str | None = None  # None: start a local instance; 'auto' or 'ray://head:10001': an existing cluster
    num_cpus: int | None = None  # CPUs of a local instance (None: every core); ignored with an address
    actors: int | None = None  # decomposition actors; None: one per GPU, else one per node (``actor_shape``)
    mode: str = "actors"  # 'actors' (an ActorPool over chunks) or 'data' (Ray Data map_batches); see the module doc
    threads: int | None = None  # torch threads per CPU actor; None: the cluster's CPUs shared among the actors


RESTORED_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # handlers ray.init installs in the driver, put back on exit


class RaySession(contextlib.AbstractContextManager):
    """A connection to Ray for one command: started (or joined) on enter, shut down on exit, whatever happened.

    Where this process is already connected (a notebook's or a test's ``ray.init``), that connection is used and
    left to its owner.
    """

    def __init__(self, opts: RayOptions = RayOptions()):
        if opts.mode not in MODES:
            raise InputError(f"unknown Ray mode {opts.mode!r}: choose one of {', '.join(MODES)}")
        self.opts = opts
        self.ray = None
        self.owned = False
        self.compute_started: float | None = None  # time.perf_counter() when compute_chunks last started
        self.first_chunk_at: float | None = None  # seconds from then to its first written chunk
        self.head_tasks = 0  # textspan head tasks submitted by map_heads in this session

    def __enter__(self) -> RaySession:
        ray = import_ray()
        import logging

        if ray.is_initialized():
            self.ray = ray
            return self

        env = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")
               if k in os.environ}  # actors set up as the CLI sets itself up (precompute/runtime.py)
        # ERROR: Ray's notices (token authentication, on every local start) would bury the command's own lines
        kwargs: dict[str, Any] = dict(logging_level=logging.ERROR, log_to_driver=False,
                                      runtime_env={"env_vars": env})
        if self.opts.address is None:
            kwargs |= dict(num_cpus=self.opts.num_cpus, include_dashboard=False)
        self._handlers = {sig: signal.getsignal(sig) for sig in RESTORED_SIGNALS}  # ray.init installs its own
        try:
            ray.init(address=self.opts.address, **kwargs)
        except ConnectionError as e:
            self._restore_handlers()
            raise InputError(f"--ray-address {self.opts.address}: cannot reach a Ray cluster there ({e}); "
                             "start one with `ray start --head`, or leave --ray-address out for a local one") from None
        self.ray, self.owned = ray, True
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            try:
                self.ray.shutdown()  # a local instance's processes go with it; a cluster keeps running
            finally:
                self._restore_handlers()
        self.ray, self.owned = None, False

    def _restore_handlers(self) -> None:
        """Put back the signal handlers ray.init replaced: after the session, SIGTERM and SIGINT do in this
        process (a notebook, a test run, the rest of a command) what they did before it."""
        for sig, handler in getattr(self, "_handlers", {}).items():
            if handler is not None:
                signal.signal(sig, handler)
        self._handlers = {}

    def resources(self) -> dict[str, float]:
        return self.ray.cluster_resources()

    def actor_shape(self, device: str) -> tuple[int, float, float, int]:
        """(actors, CPUs and GPUs each asks for, torch threads each).

        One actor per GPU where the model runs on GPUs; on CPUs, one actor per node with a torch thread per core of
        the node. On 2 cores (benchmarks/ray_engine.py) one actor of 2 threads reached its first chunk sooner than
        two actors of one thread (15 vs 20 s, one model load instead of two); their steady rates were within noise.
        """
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")] or [self.resources()]
        cpus = [int(r.get("CPU", 1)) for r in nodes]
        gpus = sum(int(r.get("GPU", 0)) for r in nodes)
        on_gpu = device in ("auto", "cuda") and gpus > 0
        actors = self.opts.actors or (gpus if on_gpu else len(nodes))
        per_node = max(1, -(-actors // len(nodes)))  # actors sharing a node share its cores
        threads = self.opts.threads or max(1, min(cpus) // per_node)
        return actors, ACTOR_CPUS, (1.0 if on_gpu else 0.0), threads

    def compute_chunks(self, loaded, layers, plan, chunks, run_dir: Path, opts) -> int:
        """``stage_decompose.ComputeChunks`` on Ray: every unfinished chunk of the plan, computed and written."""
        from tqdm.auto import tqdm

        from precompute.stage_decompose import pending_chunks

        bounds, todo = pending_chunks(plan, chunks)
        if not todo:
            return 0
        ray = self.ray
        actors, cpus, gpus, threads = self.actor_shape(loaded.spec.device)
        actors = min(actors, len(todo))
        # Decoding processes per actor, as the local engine's default_workers: none on CPUs (the actor decodes
        # between its batches), on a GPU the actor's share of its node's cores, else the GPU waits on JPEGs.
        decoders = opts.workers if opts.workers is not None else (threads if gpus else 0)
        shared = ray.put(_Shared(loaded.spec, list(layers), plan["images_root"], plan["paths"], plan["labels"],
                                 bounds, str(run_dir), opts.batch_size, threads, decoders))
        done = sum(hi - lo for c, (lo, hi) in enumerate(bounds) if c not in todo)
        bar = tqdm(total=len(plan["paths"]), initial=done, unit="img", desc="decompose (ray)",
                   disable=not opts.progress, dynamic_ncols=True)
        self.first_chunk_at = None
        t0 = self.compute_started = time.perf_counter()
        computed = skipped = 0
        try:
            runs = self._actors if self.opts.mode == "actors" else self._data
            for stats in runs(shared, todo, actors, cpus, gpus):
                if self.first_chunk_at is None:
                    self.first_chunk_at = time.perf_counter() - t0
                computed += stats["planned"]
                skipped += stats["skipped"]
                bar.update(stats["planned"])
                bar.set_postfix(skipped=skipped, refresh=False)
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        except ray.exceptions.RayError as e:  # an actor died (out of memory, a lost node): the chunks done are kept
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(f"the Ray engine lost a decomposition actor ({type(e).__name__}: {first}); "
                              f"{computed} images were written; rerun the same command to resume") from None
        finally:
            bar.close()
        return computed

    def map_heads(self, run_dir: Path, heads: list[tuple[int, int]], text_emb, opts) -> list[tuple[dict, Any]]:
        """``stage_textspan.MapHeads`` on Ray: one task per head, the pool's embeddings put in the object store once,
        the results gathered in the order of ``heads``.

        A task sets this process's torch thread count, which the Gram's products use (precompute/textspan.py), so
        each head is computed as ``local_heads`` computes it here. Each task reads only its own head's parts: the
        run folder must be a path every node sees, as for the decompose actors."""
        import torch
        from tqdm.auto import tqdm

        ray = self.ray
        task = ray.remote(_textspan_task).options(num_cpus=HEAD_TASK_CPUS)
        emb = ray.put(text_emb)
        threads = torch.get_num_threads()
        refs = [task.remote(str(run_dir), layer, head, emb, opts.k, opts.rank, threads) for layer, head in heads]
        self.head_tasks += len(refs)
        order = {ref: i for i, ref in enumerate(refs)}
        out: list = [None] * len(refs)
        bar = tqdm(total=len(refs), desc="textspan (ray)", unit="head", disable=not opts.progress, dynamic_ncols=True)
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    out[order[ref]] = ray.get(ref)
                    bar.update(1)
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        except ray.exceptions.RayError as e:  # a worker died: nothing of the stage was written
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(f"the Ray engine lost a textspan task ({type(e).__name__}: {first}); nothing of the "
                              "textspan stage was written; rerun the same command") from None
        finally:
            for ref in pending:
                ray.cancel(ref)
            bar.close()
        return out

    def _actors(self, shared, todo: list[int], actors: int, cpus: float, gpus: float) -> Iterator[dict]:
        """Plain actors over chunks: each actor takes the next chunk as soon as it is free."""
        from ray.util import ActorPool

        cls = self.ray.remote(ChunkWorker)
        workers = [cls.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy="SPREAD").remote(shared)
                   for _ in range(actors)]
        try:
            yield from ActorPool(workers).map_unordered(lambda a, c: a.run.remote(c), todo)
        finally:
            for w in workers:
                self.ray.kill(w)

    def _data(self, shared, todo: list[int], actors: int, cpus: float, gpus: float) -> Iterator[dict]:
        """Ray Data: one row per chunk, ``map_batches`` through a pool of the same stateful actors."""
        import numpy as np
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"chunk": c} for c in todo], override_num_blocks=len(todo))
        out = ds.map_batches(_DataWorker, fn_constructor_args=(shared,), batch_size=1, num_cpus=cpus,
                             num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=actors))
        for row in out.iter_rows():
            yield {k: int(v) if isinstance(v, (int, np.integer)) else v for k, v in row.items()}


@dataclass(frozen=True)
class _Shared:
    """What every actor needs, put in the object store once (the plan's paths can be millions of strings)."""

    spec: Any  # registry.ModelSpec
    layers: list[int]
    root: str
    paths: list[str]
    labels: list
    bounds: list[tuple[int, int]]
    run_dir: str
    batch_size: int
    threads: int
    decoders: int  # DataLoader worker processes per actor (0: decode in the actor, between batches)


def _textspan_task(run_dir: str, layer: int, head: int, text_emb, k: int, rank: int, threads: int):
    """One textspan head in a Ray worker, with the driver's torch thread count (``RaySession.map_heads``)."""
    import torch

    from precompute.stage_textspan import textspan_head

    torch.set_num_threads(threads)
    return textspan_head(Path(run_dir), layer, head, text_emb, k, rank)


class ChunkWorker:
    """A decomposition actor: the model and the Decomposer loaded once, then chunk after chunk decoded,
    decomposed and written in the run's layout."""

    def __init__(self, shared):
        import ray
        import torch

        from precompute import registry, store
        from precompute.decompose import Decomposer
        from precompute.images import ImageFolderDataset, split_preprocess
        from precompute.stage_decompose import STAGE

        if isinstance(shared, ray.ObjectRef):  # Ray Data passes constructor arguments through unresolved
            shared = ray.get(shared)
        torch.set_num_threads(shared.threads)
        self.shared = shared
        self.loaded = registry.load_model(shared.spec)
        self.device = next(self.loaded.model.parameters()).device
        self.pixels = split_preprocess(self.loaded.preprocess)
        self.decomposer = Decomposer(self.loaded.model, shared.layers)
        self.dataset = ImageFolderDataset(shared.root, shared.paths, list(range(len(shared.paths))),
                                          self.pixels.to_pixels)
        self.chunks = store.ChunkStore(Path(shared.run_dir), STAGE)

    def run(self, chunk: int) -> dict:
        """Decode, decompose and write one chunk; its counts for the driver's progress."""
        from precompute.images import collate
        from precompute.stage_decompose import chunk_batches, decompose_chunk, write_chunk

        s = self.shared
        if s.decoders:
            import torch

            from precompute.stage_decompose import _worker_init

            batches = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=chunk_batches(s.bounds[chunk], s.batch_size), num_workers=s.decoders,
                collate_fn=collate, worker_init_fn=_worker_init, pin_memory=self.device.type == "cuda")
        else:
            batches = (collate([self.dataset[i] for i in idx]) for idx in chunk_batches(s.bounds[chunk], s.batch_size))
        result = decompose_chunk(batches, s.paths, s.labels, self.decomposer, self.pixels, self.device)
        write_chunk(Path(s.run_dir), self.chunks, chunk, s.layers, result)
        return {"chunk": chunk, "planned": result.planned, "skipped": len(result.skipped)}


class _DataWorker(ChunkWorker):
    """``ChunkWorker`` as Ray Data's callable class: a batch of chunk ids in, their counts out."""

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        stats = [self.run(int(c)) for c in batch["chunk"]]
        return {k: np.array([st[k] for st in stats]) for k in ("chunk", "planned", "skipped")}


def _unwrap(e: Exception) -> BaseException:
    """An actor's domain or I/O error as the driver would have raised it (one line for the CLI), else as it is."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, (InterpretError, OSError)):
        return cause
    return e
