"""Everything the dashboard caches, and the only ``st.cache_*`` code.

- the catalog: a DuckDB connection over the runs (``data.connect``) and each run's cheap
  health check (``precompute.verify.check_run``: sizes, footers, coverage), cached per data
  folder and rebuilt when the runs on disk change (a manifest rewritten, a file added,
  removed or truncated: every file's size and mtime are in the fingerprint);
- per-(run, layer, head) matrices of head vectors and property means, in float16, in one
  cache capped in bytes ($CLIP_INTERPRET_CACHE_MB, see ``dashboard.memcache``), and each
  head's principal direction (stored by the precompute in ``head_summary.parquet`` when
  the run has it), all keyed by the run's manifest stamp so a rewritten run is read again;
- the model of a run, loaded once per process per ``ModelSpec`` and shared by every
  session; ``ModelBundle.lock`` is held for the whole of every forward pass (image or
  text): hooks and the model are not safe to share between concurrent passes;
- live decompositions of uploads and dataset images, and text embeddings.

Cached objects are shared between sessions: treat the arrays as read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import streamlit as st
from PIL import Image

from dashboard import data, live, memcache
from precompute import analysis
from dashboard.rundirs import Discovery, discover_runs
from precompute import registry, store, verify
from precompute.decompose import Decomposer
from precompute.errors import InterpretError
from precompute.labels import head_name
from precompute.textenc import encode_texts

MODEL_RETRY_S = 60.0  # a model that failed to load is tried again after this long


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Catalog:
    """The runs under one data folder, the connection whose views read them, and each run's health."""

    data_dir: str
    con: duckdb.DuckDBPyConnection
    runs: dict[str, dict]  # run name -> its row of the ``runs`` view
    keys: dict[str, str]  # run name -> cache key: path + manifest stamp
    problems: list[str]
    health: dict[str, verify.Health] = field(default_factory=dict)  # run name -> the cheap check
    skipped: dict[str, str] = field(default_factory=dict)  # folder with an unusable manifest -> why

    def damaged(self) -> list[str]:
        """Names of the runs whose cheap check found a problem."""
        return [name for name, h in self.health.items() if not h.ok]


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st_ = os.stat(path)
    except OSError:
        return None
    return st_.st_mtime_ns, st_.st_size


def _fingerprint(found: Discovery) -> str:
    """Changes when a manifest or any file of a run changes on disk (added, removed, truncated, rewritten)."""
    parts = [(r.name, r.stamp, sorted((t, [(f, _stat(f)) for f in files]) for t, files in r.tables.items()))
             for r in found.runs]
    return hashlib.sha1(repr((parts, found.problems)).encode()).hexdigest()


def _health(path: str) -> verify.Health:
    try:
        return verify.check_run(Path(path))
    except (InterpretError, OSError) as e:  # a run removed while it was checked, say
        return verify.Health(Path(path), False, (verify.Problem(".", "unreadable", str(e)),))


@st.cache_resource(max_entries=4, show_spinner="Checking the runs ...")
def _catalog(data_dir: str, fingerprint: str, _found: Discovery) -> Catalog:
    con = data.connect(data_dir)
    rows = {r["run"]: r for r in data.runs(con).to_pylist()}
    keys = {r.name: f"{r.path}@{r.stamp[0]}:{r.stamp[1]}" for r in _found.runs}
    health = {r.name: _health(r.path) for r in _found.runs}
    return Catalog(data_dir, con, rows, keys, data.run_problems(con), health, dict(_found.skipped))


def catalog(data_dir: str) -> Catalog:
    """The runs under ``data_dir`` (InputError when the folder is missing), rebuilt when they change on disk."""
    found = discover_runs(data_dir)
    return _catalog(found.data_dir, _fingerprint(found), found)


# --------------------------------------------------------------------------- matrices
#
# Head matrices (and property means) live in one ByteCache per server, capped in bytes
# ($CLIP_INTERPRET_CACHE_MB, ``memcache.capacity_from``): at 50,000 images an entry is
# 51 MB, and entry counts alone let a user browsing heads grow the server past 3.5 GB.


@dataclass(frozen=True)
class HeadMatrix:
    """Vectors of every dataset image for one head (or a mean over heads), rows sorted by image id.

    ``vectors`` are float16 (half the memory; ``analysis.matvec`` scores them within 1e-3 |v| |q| of
    float32), float32 only when a value would overflow float16. ``norms`` and ``mean`` come from
    the float32 vectors, so cosines and centring are exact up to the rounding of the rows.
    """

    ids: np.ndarray  # [n] int64, ascending
    vectors: np.ndarray  # [n, D] float16 (float32 beyond float16's range)
    norms: np.ndarray  # [n] float32
    mean: np.ndarray  # [D] float32
    centred: np.ndarray  # [n] float32, |v - mean|: the centred similarity is then one half-precision matvec

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.vectors.nbytes + self.norms.nbytes + self.mean.nbytes + self.centred.nbytes

    def row_of(self, image_id: int) -> int | None:
        i = int(np.searchsorted(self.ids, image_id))
        return i if i < len(self.ids) and self.ids[i] == image_id else None


HALF_MAX = 60_000.0  # float16 holds up to 65,504; a larger value keeps its matrix in float32


def _frozen(ids: np.ndarray, vectors: np.ndarray) -> HeadMatrix:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [n, D]
    mean = vectors.mean(0, dtype=np.float64).astype(np.float32)  # [D]
    fits = not vectors.size or max(float(vectors.max()), -float(vectors.min())) < HALF_MAX  # no [n, D] temporary
    m = HeadMatrix(ids, vectors.astype(np.float16) if fits else vectors, analysis.row_norms(vectors), mean,
                   analysis.centred_norms(vectors, mean))
    for a in (m.ids, m.vectors, m.norms, m.mean, m.centred):
        a.flags.writeable = False  # shared between sessions
    return m


@st.cache_resource(show_spinner=False)
def _matrices() -> memcache.ByteCache:
    return memcache.ByteCache(memcache.capacity_from(os.environ))


def matrix_cache() -> memcache.ByteCache:
    """The server's byte-capped cache of head and property matrices (shared by every session)."""
    return _matrices()


_LOADER = "matrix-loader"


@st.cache_resource(show_spinner=False)
def _loader() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=_LOADER)


def _in_loader(fn, *args):
    """``fn(*args)`` on the one loader thread of the server.

    Streamlit runs every script run in a new thread, and the allocators keep per-thread heaps: the
    ~300 MB a head's read passes through (Arrow buffers, float32 rows) stayed in each thread's heap,
    measured +200 to +400 MB of RSS over 30 heads. Reading on one thread reuses one heap.
    """
    if threading.current_thread().name.startswith(_LOADER):
        return fn(*args)
    return _loader().submit(fn, *args).result()


def _read_head(cat: Catalog, run: str, layer: int, head: int) -> HeadMatrix:
    return _frozen(*data.head_vectors(cat.con, run, layer, head))


def head_matrix(cat: Catalog, run: str, layer: int, head: int) -> HeadMatrix:
    """One head's vectors over the run's images, read once and kept while the cache has room."""
    def load() -> HeadMatrix:
        with st.spinner(f"Reading the vectors of {head_name(layer, head)} ..."):
            return _in_loader(_read_head, cat, run, layer, head)

    return matrix_cache().get(("head", cat.keys[run], int(layer), int(head)), load)


def _float32_rows(cat: Catalog, run: str, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) of a head: widened from the cache when it holds the head, else read (not cached)."""
    found = matrix_cache().peek(("head", cat.keys[run], int(layer), int(head)))
    if found is not None:
        return found.ids, found.vectors.astype(np.float32)
    return data.head_vectors(cat.con, run, layer, head)


def _mean_of(cat: Catalog, run: str, heads: tuple[tuple[int, int], ...]) -> HeadMatrix:
    first, total = None, None
    for layer, head in heads:
        ids, vectors = _float32_rows(cat, run, layer, head)  # [n], [n, D]
        if first is None:
            first, total = ids, vectors.astype(np.float32, copy=True)
            continue
        if not np.array_equal(ids, first):  # a head lacks a part: the mean over the images every head covers
            common = np.intersect1d(first, ids, assume_unique=True)
            keep = np.isin(first, common)
            first, total = first[keep], total[keep]
            vectors = vectors[np.isin(ids, common)]
        total += vectors
    total /= len(heads)  # in place: one [n, D] float32 less at the peak
    return _frozen(first, total)


def mean_matrix(cat: Catalog, run: str, heads: list[tuple[int, int]]) -> HeadMatrix:
    """Mean of r[l,h] over ``heads`` for every dataset image (the property vector of analysis 1).

    The heads are summed one at a time and not cached themselves, so a property of many heads
    does not push the heads a user is browsing out of the cache. When a head lacks a part, the
    mean covers the images every head has (the page says how many).
    """
    heads = tuple(sorted((int(l), int(h)) for l, h in heads))

    def load() -> HeadMatrix:
        with st.spinner(f"Averaging the property's {len(heads)} heads ..."):
            return _in_loader(_mean_of, cat, run, heads)

    return matrix_cache().get(("mean", cat.keys[run], heads), load)


@st.cache_resource(max_entries=16, show_spinner=False)
def _summaries(_cat: Catalog, run_key: str, run: str) -> dict:
    return data.head_summaries(_cat.con, run)


@st.cache_resource(max_entries=512, show_spinner="Finding the head's principal direction ...")
def _principal(_cat: Catalog, run_key: str, run: str, layer: int, head: int) -> np.ndarray:
    stored = _summaries(_cat, run_key, run).get((layer, head))
    m = head_matrix(_cat, run, layer, head)
    if stored is not None and stored["n"] == len(m.ids):
        v = analysis.orient(stored["principal"], m.vectors, m.mean)  # [D]; the sign needs the vectors
    else:  # a run without head_summary.parquet: ~1 s per head at 50,000 x 512, once per server
        v = _in_loader(lambda: analysis.principal_direction(data.head_vectors(_cat.con, run, layer, head)[1]))
    v.flags.writeable = False
    return v


def principal_direction(cat: Catalog, run: str, layer: int, head: int) -> np.ndarray:
    """The head's first principal direction [D], oriented along the longer tail (``analysis.principal_direction``)."""
    return _principal(cat, cat.keys[run], run, int(layer), int(head))


@st.cache_resource(max_entries=8, show_spinner=False)
def _text_table(_cat: Catalog, run_key: str, run: str):
    table = data.texts(_cat.con, run)
    return table.drop_columns(["embedding"]).to_pandas(), store.arrow_to_vectors(table.column("embedding"))  # [m, D]


def text_table(cat: Catalog, run: str):
    """(the run's text pool as a frame without embeddings, embeddings [m, D])."""
    return _text_table(cat, cat.keys[run], run)


# --------------------------------------------------------------------------- the live model


@dataclass
class ModelBundle:
    """A loaded model shared by every session; hold ``lock`` for every forward pass."""

    loaded: registry.LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)
    decomposers: dict = field(default_factory=dict)  # (layers, spatial) -> Decomposer

    def decomposer(self, layers: tuple[int, ...], spatial: bool = True) -> Decomposer:
        """The Decomposer for these layers (built once; call with the lock held)."""
        key = (tuple(layers), spatial)
        if key not in self.decomposers:
            self.decomposers[key] = Decomposer(self.loaded.model, layers, spatial=spatial)
        return self.decomposers[key]


@st.cache_resource(max_entries=64, show_spinner=False)
def _spec(manifest_json: str) -> tuple[registry.ModelSpec | None, str | None]:
    return registry.spec_from_manifest(json.loads(manifest_json).get("model") or {}, device="auto")


def model_spec(run_row: dict) -> tuple[registry.ModelSpec | None, str | None]:
    """The run's ModelSpec from its manifest, or why its weights are not available here."""
    return _spec(run_row["manifest"])


@st.cache_resource(max_entries=2, show_spinner="Loading the model (once per server) ...")
def _bundle(spec: registry.ModelSpec) -> ModelBundle:
    return ModelBundle(registry.load_model(spec))


@st.cache_resource(show_spinner=False)
def _failures() -> dict:
    return {}  # spec -> (time, message): recent load failures, not retried on every click


def model_bundle(spec: registry.ModelSpec) -> tuple[ModelBundle | None, str | None]:
    """(bundle, None), or (None, why the model could not be loaded)."""
    failed = _failures().get(spec)
    if failed and time.monotonic() - failed[0] < MODEL_RETRY_S:
        return None, failed[1]
    try:
        return _bundle(spec), None
    except InterpretError as e:
        _failures()[spec] = (time.monotonic(), str(e))
        return None, str(e)


@st.cache_resource(max_entries=8, show_spinner="Decomposing the image ...")
def _live_image(_bundle: ModelBundle, spec: registry.ModelSpec, digest: str, layers: tuple[int, ...],
                _image: Image.Image) -> live.LiveImage:
    with _bundle.lock:  # the whole forward pass, hooks included
        return live.decompose_image(_bundle.loaded, _bundle.decomposer(layers), _image)


def live_image(bundle: ModelBundle, digest: str, layers: tuple[int, ...], image: Image.Image) -> live.LiveImage:
    """Spatial decomposition of ``image`` (identified by ``digest``) over ``layers``, cached."""
    return _live_image(bundle, bundle.loaded.spec, digest, tuple(layers), image)


@st.cache_resource(max_entries=512, show_spinner=False)
def _text_embedding(_bundle: ModelBundle, spec: registry.ModelSpec, text: str) -> np.ndarray:
    with _bundle.lock:
        emb = encode_texts(_bundle.loaded, [text])[0]  # [D]
    emb.flags.writeable = False
    return emb


def text_embedding(bundle: ModelBundle, text: str) -> np.ndarray:
    """Normalised text embedding [D] by the run's model (the same function as the textspan stage)."""
    return _text_embedding(bundle, bundle.loaded.spec, text)


@st.cache_resource(max_entries=8, show_spinner=False)
def _image_table(_cat: Catalog, run_key: str, run: str):
    return data.image_meta(_cat.con, run).to_pandas()


def image_table(cat: Catalog, run: str):
    """image_id, path, label, width, height of every image of the run (a frame; do not modify)."""
    return _image_table(cat, cat.keys[run], run)


@st.cache_resource(max_entries=8, show_spinner=False)
def _attribute_table(_cat: Catalog, run_key: str, run: str):
    return data.image_attributes(_cat.con, run)


def attribute_table(cat: Catalog, run: str):
    """image_id and ground-truth attributes of every image of the run (a frame; do not modify), or None."""
    return _attribute_table(cat, cat.keys[run], run)


@st.cache_resource(max_entries=8, show_spinner=False)
def _head_means(_cat: Catalog, run_key: str, run: str, layers: tuple[int, ...]):
    from precompute import rundata, schema

    path = Path(_cat.runs[run]["path"])
    if not (path / schema.HEAD_SPANS_FILE).is_file():
        return None
    means = rundata.open_run(path).head_means(list(layers))  # [l, h, D]
    means.flags.writeable = False
    return means


def head_means(cat: Catalog, run: str, layers: tuple[int, ...]) -> np.ndarray | None:
    """[l, h, D] every head's mean over the probe set, from the textspan stage's head_spans.parquet (the
    record ``precompute.rundata`` reads); None for a run without it (the means would cost a read of every head)."""
    return _head_means(cat, cat.keys[run], run, tuple(layers))
