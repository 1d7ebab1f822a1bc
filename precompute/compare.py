"""Cross-model head matching: linear CKA of every head of one run against every head of another
(docs/design.md section 6.5).

Two runs over the same probe images live in different output spaces (D_a and D_b), so a head is compared
through what it does to the images: linear CKA of the centred vectors X [n, D_a] and Y [n, D_b],

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

which equals the CKA of the n x n Gram matrices X X^T and Y Y^T, without forming them (the feature-space
form). A head writes into at most head-width directions of output space (section 4.3), so each head is first
reduced to coordinates in an orthonormal basis of its span, Z = X Q [n, r], which leaves every Frobenius norm
above unchanged when the span has at most r directions. The basis comes from the centred Gram of a seeded
sample of rows; the share of each head's variance the reduction keeps is recorded (1.0 up to round-off for a
real model's heads). Then one product of the stacked coordinates, Z_a^T Z_b, holds every pair's Y^T X block.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precompute import paths, schema, store, verify
from precompute.errors import InputError
from precompute.labels import head_name

BASIS_ROWS = 4096  # rows of the sample a head's basis is taken from


@dataclass(frozen=True)
class Reduced:
    """Every head of one run in span coordinates over the shared images."""

    heads: list[tuple[int, int]]
    z: np.ndarray  # [n, sum r_h] float32: each head's centred vectors in its basis, side by side
    slices: list[slice]  # head -> its columns of z
    self_norm: np.ndarray  # [H] ||Z_h^T Z_h||_F
    retained: np.ndarray  # [H] share of the head's centred variance the basis keeps


def reduce_head(x: np.ndarray, rank: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """(Z [n, r], retained): centred x [n, D] in the top-r eigenbasis of a sample's centred Gram."""
    x = np.asarray(x, np.float32)
    n, d = x.shape
    mean = x.mean(0, dtype=np.float64).astype(np.float32)  # [D]
    rows = np.sort(np.random.default_rng([seed, n]).choice(n, BASIS_ROWS, replace=False)) if n > BASIS_ROWS \
        else slice(None)
    sample = (x[rows] - mean).astype(np.float64)  # [s, D]
    values, vectors = np.linalg.eigh(sample.T @ sample)  # ascending
    # matrix_rank's floor on singular values, squared for the Gram's eigenvalues (docs/design.md section 4.3)
    floor = values[-1] * (max(n, d) * np.finfo(np.float32).eps) ** 2 if values[-1] > 0 else np.inf
    keep = min(rank, int(np.sum(values > floor)))
    basis = vectors[:, ::-1][:, :max(keep, 1)].astype(np.float32)  # [D, r]
    z = np.empty((n, basis.shape[1]), np.float32)  # [n, r]
    total = kept = 0.0
    for s in range(0, n, BASIS_ROWS):  # centred block by block: no [n, D] copy, sums in float64
        block = x[s:s + BASIS_ROWS] - mean  # [b, D]
        z[s:s + BASIS_ROWS] = block @ basis
        total += float(np.sum(block.astype(np.float64) ** 2))
        kept += float(np.sum(z[s:s + BASIS_ROWS].astype(np.float64) ** 2))
    return z, (kept / total if total > 0 else 1.0)


def reduce_run(run_dir: Path, heads: list[tuple[int, int]], rows: np.ndarray, rank: int) -> Reduced:
    """Each head's vectors at image positions ``rows`` (of images.parquet's order), reduced (``reduce_head``).

    The next head's files are read while one is reduced (pyarrow reads without the GIL).
    """
    parts, slices, norms, kept, start = [], [], [], [], 0
    ids = pq.read_table(Path(run_dir) / schema.IMAGES_FILE, columns=["image_id"]).column("image_id").to_numpy()
    every = np.array_equal(rows, np.arange(len(ids)))

    def load(h: tuple[int, int]) -> np.ndarray:
        head_ids, vectors = store.read_head(run_dir, *h)
        if not np.array_equal(head_ids, ids):  # the decompose stage writes both in image order
            order = {int(i): p for p, i in enumerate(head_ids)}
            vectors = vectors[[order[int(i)] for i in ids]]
        return vectors if every else vectors[rows]

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(load, heads[0]) if heads else None
        for i in range(len(heads)):
            vectors = pending.result()
            pending = reader.submit(load, heads[i + 1]) if i + 1 < len(heads) else None
            z, retained = reduce_head(vectors, rank)
            del vectors
            parts.append(z)
            slices.append(slice(start, start + z.shape[1]))
            start += z.shape[1]
            norms.append(float(np.linalg.norm(z.T.astype(np.float64) @ z)))  # ||Z^T Z||_F
            kept.append(retained)
    return Reduced(heads, np.concatenate(parts, 1), slices, np.array(norms), np.array(kept))


def cka_matrix(a: Reduced, b: Reduced) -> np.ndarray:
    """[H_a, H_b] linear CKA of every pair of heads (the module docstring)."""
    cross = a.z.T @ b.z  # [sum r_a, sum r_b]: every pair's Y^T X block at once
    out = np.zeros((len(a.heads), len(b.heads)))
    for i, si in enumerate(a.slices):
        for j, sj in enumerate(b.slices):
            block = cross[si, sj].astype(np.float64)
            denom = a.self_norm[i] * b.self_norm[j]
            out[i, j] = float(np.sum(block * block)) / denom if denom > 0 else 0.0
    return out


def ranks(matrix: np.ndarray, axis: int) -> np.ndarray:
    """1-based rank of each entry along ``axis``, highest first (1 = best match)."""
    order = np.argsort(-matrix, axis=axis, kind="stable")
    return np.argsort(order, axis=axis, kind="stable") + 1


def shared_rows(run_a: Path, run_b: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions in each run's images.parquet of the images both hold (matched by path), in run A's order."""
    pa_ = pq.read_table(Path(run_a) / schema.IMAGES_FILE, columns=["path"]).column("path").to_pylist()
    pb = pq.read_table(Path(run_b) / schema.IMAGES_FILE, columns=["path"]).column("path").to_pylist()
    where_b = {p: i for i, p in enumerate(pb)}
    rows_a = [i for i, p in enumerate(pa_) if p in where_b]
    if len(rows_a) < 3:
        raise InputError(f"{run_a} and {run_b} share {len(rows_a)} images (by path); CKA needs runs over the "
                         "same probe images")
    return np.array(rows_a), np.array([where_b[pa_[i]] for i in rows_a])


def run_heads(manifest: dict) -> list[tuple[int, int]]:
    return [(int(layer), h) for layer in manifest.get("layers") or [] for h in range(int(manifest.get("heads") or 0))]


def default_out(run_a: Path, run_b: Path) -> Path:
    """_compare/ in the work folder when both runs are under it, else beside the first run."""
    data = paths.runs_dir().resolve()
    if all(data in Path(r).resolve().parents for r in (run_a, run_b)):
        return data / schema.COMPARE_DIR
    return Path(run_a).resolve().parent / schema.COMPARE_DIR


def run_name(run_dir: Path, data_dir: Path) -> str:
    """The run's name as the dashboard gives it: its path relative to the data folder ('/' separated)."""
    try:
        return Path(os.path.relpath(Path(run_dir).resolve(), data_dir.resolve())).as_posix()
    except ValueError:
        return Path(run_dir).name


def matches_path(out: Path, name_a: str, name_b: str) -> Path:
    digest = hashlib.sha256(f"{name_a}\0{name_b}".encode()).hexdigest()[:12]
    return Path(out) / f"head_matches-{digest}.parquet"


@dataclass(frozen=True)
class CompareResult:
    path: Path
    rows: int
    images: int
    seconds: float
    cka: np.ndarray  # [H_a, H_b]
    heads_a: list[tuple[int, int]]
    heads_b: list[tuple[int, int]]
    retained: float  # the smallest share of a head's variance kept by the reduction

    def summary(self) -> list[str]:
        best_a, best_b = self.cka.max(1), self.cka.max(0)
        i = int(np.argmax(best_a))
        j = int(np.argmax(self.cka[i]))
        return [f"best-match CKA: mean {best_a.mean():.3f} over the first run's heads, {best_b.mean():.3f} over "
                f"the second's; closest pair {head_name(*self.heads_a[i])} ~ {head_name(*self.heads_b[j])} "
                f"({self.cka[i, j]:.3f})",
                f"span reduction kept at least {self.retained:.6f} of every head's variance"]


def compare_runs(run_a: Path, run_b: Path, out: Path | None = None, rank: int = 64) -> CompareResult:
    """Write ``<out>/head_matches-<hash>.parquet`` (HEAD_MATCHES) for every head of A x every head of B."""
    if rank < 1:
        raise InputError(f"--rank must be at least 1, got {rank}")
    t0 = time.perf_counter()
    manifests = [verify.require(Path(r), "decompose", f"clip-interpret decompose --out {r}") for r in (run_a, run_b)]
    rows_a, rows_b = shared_rows(run_a, run_b)
    heads = [run_heads(m) for m in manifests]
    reduced_a = reduce_run(Path(run_a), heads[0], rows_a, rank)
    reduced_b = reduced_a if Path(run_a).resolve() == Path(run_b).resolve() else \
        reduce_run(Path(run_b), heads[1], rows_b, rank)
    cka = cka_matrix(reduced_a, reduced_b)  # [H_a, H_b]
    out = Path(out) if out is not None else default_out(run_a, run_b)
    data_dir = out.parent
    names = [run_name(r, data_dir) for r in (run_a, run_b)]
    rank_a, rank_b = ranks(cka, 1), ranks(cka, 0)
    ia, ib = np.meshgrid(np.arange(len(heads[0])), np.arange(len(heads[1])), indexing="ij")
    ia, ib = ia.ravel(), ib.ravel()
    table = pa.table({
        "run_a": [names[0]] * len(ia), "run_b": [names[1]] * len(ia),
        "layer_a": [heads[0][i][0] for i in ia], "head_a": [heads[0][i][1] for i in ia],
        "layer_b": [heads[1][j][0] for j in ib], "head_b": [heads[1][j][1] for j in ib],
        "cka": cka[ia, ib].astype(np.float32), "rank_a": rank_a[ia, ib].astype(np.int32),
        "rank_b": rank_b[ia, ib].astype(np.int32), "images": [len(rows_a)] * len(ia),
    }, schema=schema.HEAD_MATCHES)
    path = matches_path(out, *names)
    store.write_table_atomic(path, table)
    retained = float(min(reduced_a.retained.min(), reduced_b.retained.min()))
    return CompareResult(path, table.num_rows, len(rows_a), time.perf_counter() - t0, cka, heads[0], heads[1],
                         retained)


def read_matches(data_dir: Path, run_a: str, run_b: str) -> pa.Table | None:
    """The stored HEAD_MATCHES of two runs by their names, seen from A (columns swapped when stored as B, A)."""
    folder = Path(data_dir) / schema.COMPARE_DIR
    for a, b, swap in ((run_a, run_b, False), (run_b, run_a, True)):
        path = matches_path(folder, a, b)
        if path.is_file():
            table = pq.read_table(path)
            if not swap:
                return table
            cols = {"run_a": "run_b", "run_b": "run_a", "layer_a": "layer_b", "head_a": "head_b",
                    "layer_b": "layer_a", "head_b": "head_a", "rank_a": "rank_b", "rank_b": "rank_a"}
            return pa.table({f.name: table.column(cols.get(f.name, f.name)) for f in schema.HEAD_MATCHES},
                            schema=schema.HEAD_MATCHES)
    return None


def match_files(data_dir: Path) -> list[Path]:
    """Every head_matches file of a data folder (finished files only: never a temp file of a write)."""
    folder = Path(data_dir) / schema.COMPARE_DIR
    return sorted(p for p in folder.glob("head_matches-*.parquet") if not p.name.startswith(".")) \
        if folder.is_dir() else []
