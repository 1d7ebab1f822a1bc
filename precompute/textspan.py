"""TEXTSPAN: name a head by the texts that span its outputs (docs/design.md section 4).

Gandelsman, Efros, Steinhardt, ICLR 2024 (code: ``compute_complete_text_set.py``;
docs/design.md section 4.1). For one head with vectors C [n, d] over n images and
L2-normalised text embeddings R [m, d]:

1. project the texts on the span of the top-r right singular vectors of the
   *uncentred* C: R <- R V_r^T V_r;
2. centre C;
3. k times: pick j* = argmax_j Var_i(C R_j) (R_j not renormalised), t = R_j*,
   deflate C <- C - (C t / t.t) t^T and R <- R - (R t / t.t) t^T.

Two formulations with the same picks in exact arithmetic:

- ``textspan`` / ``textspan_from_gram`` / ``textspan_from_stats`` (the product
  path): one Gram matrix per head, then the whole loop inside the r-dimensional
  span. Var_i(C t) = t^T S t with S the centred covariance, and deflation
  commutes with it: (C P)^T (C P) / n = P S P, P = I - t t^T / t.t. Cost
  2 n d^2 once + k 2 m r^2, instead of k 2 n d m.
- ``textspan_reference``: the data-matrix loop as the original code runs it
  (numpy SVD of the uncentred C, std argmax, deflation of C and R).

Two details the original code leaves to chance, made explicit here and applied
identically by both formulations:

- Rank. A direction whose singular value in the uncentred C is at most
  sigma_max x max(n, d) x eps (eps of float32, the storage type) is rounding,
  not signal: numpy.linalg.matrix_rank's floor. A head writes into a ~65-dim
  space, so r = 80 reaches into float noise; those directions are dropped, so
  the span actually used has ``result.rank <= min(rank, n, d)`` dimensions. The
  floor scales with the matrix, not with the head's variance, so a small probe
  set (n below the head's rank) keeps its small but real directions. The Gram
  path compares eigenvalues, lam = sigma^2, with lam_max x (max(n, d) x eps)^2,
  and accumulates the Gram in float64: a float32 Gram's own round-off (~0.1 eps
  of lam_max) would sit above that squared floor when n and d are small.
- Spent texts. A text whose in-span norm fell below ``DEAD_RTOL`` of its
  original norm (every picked text, and texts collinear with earlier picks) is
  never picked again. When no text is left the loop stops early, so
  ``len(result.picks) <= k``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from precompute.errors import InputError

DEFAULT_K = 20
DEFAULT_RANK = 80
RANK_EPS = float(np.finfo(np.float32).eps)  # head vectors are stored as float32
DEAD_RTOL = 1e-4
GRAM_CHUNK = 8192  # rows per float64 matmul; keeps the temporary copy at ~50 MB for d = 768


@dataclass(frozen=True, eq=False)
class TextspanResult:
    """What TEXTSPAN found for one head. Arrays are read-only."""

    picks: np.ndarray  # [k] int64, indices into the texts, in pick order
    variance_explained: np.ndarray  # [k] float64, cumulative share of the head's centred variance
    mean: np.ndarray  # [d] float64, mean head vector over the images
    basis: np.ndarray  # [k, d] float64, orthonormal basis Q of the chosen (deflated) texts
    total_variance: float  # trace of the centred covariance, sum_i ||c_i - mean||^2 / n
    rank: int  # dimension of the span the texts were projected on
    n: int  # images

    def __post_init__(self) -> None:
        for name in ("picks", "variance_explained", "mean", "basis"):
            getattr(self, name).flags.writeable = False

    @property
    def increments(self) -> np.ndarray:
        """Share of the variance each pick explains on its own: [k]."""
        return np.diff(self.variance_explained, prepend=0.0)


@dataclass(frozen=True, eq=False)
class GramStats:
    """Sufficient statistics of a head's vectors, accumulated over chunks of images.

    Rows enter as x - shift, with shift any vector near the mean (the first
    chunk's mean), so the products keep the spread when the mean is large.
    """

    n: int
    shift: np.ndarray  # [d] float64
    total: np.ndarray  # [d] float64, sum of (x - shift)
    gram: np.ndarray  # [d, d] float64, sum of (x - shift)(x - shift)^T

    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.total / self.n  # [d]

    def centred_gram(self) -> np.ndarray:
        """sum_i (x_i - mean)(x_i - mean)^T: [d, d] float64."""
        m = self.total / self.n  # [d], mean - shift
        return self.gram - self.n * np.outer(m, m)


def gram_stats(vectors: np.ndarray, shift: np.ndarray | None = None, chunk: int = GRAM_CHUNK) -> GramStats:
    """Gram statistics of one block of head vectors [n, d], in float64 (see the rank rule above)."""
    c = _matrix(vectors, "vectors")
    n, d = c.shape
    if n == 0:
        raise InputError("vectors has no rows; TEXTSPAN needs the head's vectors over at least 2 images")
    shift_in = c.mean(axis=0, dtype=np.float64) if shift is None else np.asarray(shift, dtype=np.float64)
    if shift_in.shape != (d,):
        raise InputError(f"shift has shape {shift_in.shape}; expected ({d},) to match the vectors")
    total = np.zeros(d)
    gram = np.zeros((d, d))
    for start in range(0, n, chunk):
        block = c[start : start + chunk].astype(np.float64) - shift_in  # [b, d]
        total += block.sum(axis=0)
        gram += _gram_block(block)  # [d, d]
    return GramStats(n=n, shift=shift_in, total=total, gram=gram)


def merge_gram(a: GramStats, b: GramStats) -> GramStats:
    """Statistics of the union of two blocks accumulated with the same shift."""
    if a.shift.shape != b.shift.shape or not np.array_equal(a.shift, b.shift):
        raise InputError("cannot merge Gram statistics accumulated with different shifts; pass the same shift")
    return GramStats(n=a.n + b.n, shift=a.shift, total=a.total + b.total, gram=a.gram + b.gram)


def accumulate_gram(chunks: Iterable[np.ndarray], shift: np.ndarray | None = None) -> GramStats:
    """Gram statistics over an iterable of [b, d] blocks; the shift defaults to the first block's mean."""
    stats: GramStats | None = None
    for block in chunks:
        part = gram_stats(block, shift=shift if stats is None else stats.shift)
        stats = part if stats is None else merge_gram(stats, part)
    if stats is None:
        raise InputError("no head vectors were given (the iterable of chunks was empty)")
    return stats


def textspan(
    vectors: np.ndarray, texts: np.ndarray, k: int = DEFAULT_K, rank: int = DEFAULT_RANK, rank_eps: float = RANK_EPS
) -> TextspanResult:
    """TEXTSPAN for one head, product path (docs/design.md section 4.2).

    vectors [n, d] are the head's outputs r[l,h] over n images, texts [m, d] the
    L2-normalised text embeddings. Same picks as ``textspan_reference``.
    """
    return textspan_from_stats(gram_stats(vectors), texts, k=k, rank=rank, rank_eps=rank_eps)


def textspan_from_stats(
    stats: GramStats, texts: np.ndarray, k: int = DEFAULT_K, rank: int = DEFAULT_RANK, rank_eps: float = RANK_EPS
) -> TextspanResult:
    """TEXTSPAN from chunk-accumulated statistics (see ``accumulate_gram``)."""
    centred = stats.centred_gram()
    return textspan_from_gram(centred, stats.mean, stats.n, texts, k=k, rank=rank, centred=True, rank_eps=rank_eps)


def textspan_from_gram(
    gram: np.ndarray,
    mean: np.ndarray,
    n: int,
    texts: np.ndarray,
    k: int = DEFAULT_K,
    rank: int = DEFAULT_RANK,
    centred: bool = False,
    rank_eps: float = RANK_EPS,
) -> TextspanResult:
    """TEXTSPAN from a precomputed Gram matrix, product path (docs/design.md section 4.2).

    gram [d, d] is G = C^T C (or, with ``centred=True``, sum_i (c_i - mean)(c_i - mean)^T,
    which keeps more digits when the mean is large), mean [d], n images. An uncentred
    Gram summed in float32 loses the spread to cancellation when the mean is large
    (a mean 200x the spread changed picks in a test): accumulate chunks with
    ``accumulate_gram`` and call ``textspan_from_stats`` instead.

    - V_r: top eigenvectors of the uncentred G (= right singular vectors of C);
    - S = G/n - mean mean^T; S_r = V_r S V_r^T [r, r]; texts T = R V_r^T [m, r];
    - k times: score_j = T_j S_r T_j^T (= Var_i(C R_j)); t = T_j*;
      removed variance t^T S_r t / t.t; S_r <- P S_r P, T <- T P, P = I - t t^T / t.t;
    - variance explained: cumulative removed variance / trace(S) (all d dims).
    """
    r_mat = _matrix(texts, "texts")
    d = r_mat.shape[1]
    g = np.asarray(gram, dtype=np.float64)
    mu = np.asarray(mean, dtype=np.float64)
    if g.shape != (d, d) or mu.shape != (d,):
        raise InputError(f"gram {g.shape} and mean {mu.shape} do not match texts of width d={d}; expected ({d}, {d}) and ({d},)")
    if not np.isfinite(g).all() or not np.isfinite(mu).all():
        raise InputError("the Gram matrix or mean contains NaN or inf; check the head vectors")
    _check_k(k, rank, n)
    g = (g + g.T) / 2  # float32 accumulation leaves the two triangles a few ulps apart
    gc = g if centred else g - n * np.outer(mu, mu)  # [d, d] centred sum of squares
    ss = float(np.trace(gc))
    if ss <= 0:
        raise InputError(f"the head's vectors do not vary over the n={n} images; TEXTSPAN has no variance to explain")
    with _one_thread():
        lam, vec = torch.linalg.eigh(torch.from_numpy(gc + n * np.outer(mu, mu)))  # ascending
        floor = float(lam[-1]) * (max(int(n), d) * rank_eps) ** 2  # (sigma_max max(n, d) eps)^2
        r_eff = int(min(rank, int((lam > floor).sum())))
        v = vec[:, torch.argsort(lam, descending=True)[:r_eff]].T  # [r, d] orthonormal rows
        s_r = v @ torch.from_numpy(gc / n) @ v.T  # [r, r]: V_r S V_r^T
        r64 = torch.from_numpy(r_mat.astype(np.float64))  # [m, d]
        t_r = r64 @ v.T  # [m, r]; same inner products as R V_r^T V_r in d dims
        picks, removed, unit = _greedy(s_r, t_r, r64.norm(dim=1), k)
        q = (unit @ v).numpy()  # [k, d]
    total = ss / n
    return TextspanResult(
        picks=np.array(picks, dtype=np.int64),
        variance_explained=np.cumsum(removed) / total if removed else np.zeros(0),
        mean=mu.copy(),
        basis=q,
        total_variance=total,
        rank=r_eff,
        n=int(n),
    )


def textspan_reference(
    vectors: np.ndarray, texts: np.ndarray, k: int = DEFAULT_K, rank: int = DEFAULT_RANK, rank_eps: float = RANK_EPS
) -> TextspanResult:
    """TEXTSPAN as the original code runs it: data matrix, SVD, std argmax (docs/design.md section 4.1).

    Plain and slow (k 2 n d m flops); computes in the dtype of ``vectors``
    (float32 as stored). Kept for tests and ``benchmarks/textspan_speed.py``.
    Shares the rank and spent-text rules of the module docstring.
    """
    c = _matrix(vectors, "vectors")
    r_in = _matrix(texts, "texts")
    n, d = c.shape
    if r_in.shape[1] != d:
        raise InputError(f"texts have width {r_in.shape[1]} but vectors have width {d}; both must be embeddings of one model")
    _check_k(k, rank, n)
    dtype = c.dtype
    _, s, vh = np.linalg.svd(c, full_matrices=False)  # vh [min(n, d), d]
    mu = c.mean(axis=0, dtype=np.float64)
    cc = c - mu.astype(dtype)  # [n, d]
    ss = float(np.sum(cc.astype(np.float64) ** 2))
    if ss <= 0:
        raise InputError(f"the head's vectors do not vary over the n={n} images; TEXTSPAN has no variance to explain")
    r_eff = int(min(rank, np.count_nonzero(s > s[0] * max(n, d) * rank_eps)))  # numpy's matrix_rank floor
    v = vh[:r_eff]  # [r, d]
    r_mat = r_in.astype(dtype) @ v.T @ v  # [m, d]
    norm0 = np.linalg.norm(r_in.astype(np.float64), axis=1)  # [m]
    alive = np.linalg.norm(r_mat, axis=1) > DEAD_RTOL * norm0
    picks, explained, basis = [], [], []
    for _ in range(k):
        if not alive.any():
            break
        scores = (cc @ r_mat.T).std(axis=0)  # [n, m] -> [m]
        scores[~alive] = -np.inf
        j = int(np.argmax(scores))
        t = r_mat[j].copy()  # [d]
        tt = t @ t
        cc -= np.outer(cc @ t / tt, t)  # [n, d]
        r_mat -= np.outer(r_mat @ t / tt, t)  # [m, d]
        r_mat[j] = 0.0
        alive &= np.linalg.norm(r_mat, axis=1) > DEAD_RTOL * norm0
        picks.append(j)
        explained.append(1.0 - float(np.sum(cc.astype(np.float64) ** 2)) / ss)
        basis.append(t.astype(np.float64) / np.sqrt(float(tt)))
    return TextspanResult(
        picks=np.array(picks, dtype=np.int64),
        variance_explained=np.array(explained, dtype=np.float64),
        mean=mu,
        basis=np.array(basis).reshape(len(basis), d),
        total_variance=ss / n,
        rank=r_eff,
        n=n,
    )


def reconstruct(vectors: np.ndarray, result: TextspanResult) -> np.ndarray:
    """The head's vectors rebuilt from its picks: mean + (C - mean) Q^T Q, [n, d].

    As in the reference code (docs/design.md section 4.1): the sum of the
    per-step projections of the deflated data equals mean + C_c Q Q^T with Q the
    orthonormal basis of the chosen, deflated texts.
    """
    c = _matrix(vectors, "vectors")
    if c.shape[1] != result.mean.shape[0]:
        raise InputError(f"vectors have width {c.shape[1]} but the TEXTSPAN result has width {result.mean.shape[0]}")
    q = result.basis  # [k, d]
    centred = c.astype(np.float64) - result.mean  # [n, d]
    out = result.mean + (centred @ q.T) @ q  # [n, k] -> [n, d]
    return out.astype(np.result_type(c.dtype, np.float32))


# The product path's dense algebra goes through torch (MKL), which honours
# torch.set_num_threads: the Gram uses the caller's thread count, the small rest
# (d x d eigh, the r-dim loop) one thread. On this shared 2-core machine a two-thread
# eigh of 768 x 768 took 6-12 s against 0.15 s on one thread (threads stall under
# oversubscription, numpy's OpenBLAS alike); one thread costs ~0.05 s when idle.


def _greedy(s_r: torch.Tensor, t_r: torch.Tensor, norm0: torch.Tensor, k: int) -> tuple[list[int], list[float], torch.Tensor]:
    """The TEXTSPAN loop inside the span: picks, removed variance per pick, unit picks [k, r]."""
    picks, removed, unit = [], [], []
    alive = t_r.norm(dim=1) > DEAD_RTOL * norm0  # [m]
    for _ in range(k):
        if not bool(alive.any()):
            break
        scores = ((t_r @ s_r) * t_r).sum(dim=1)  # [m]: T_j S_r T_j^T
        scores[~alive] = -torch.inf
        j = int(torch.argmax(scores))  # first index on ties, as numpy
        t = t_r[j].clone()  # [r]
        tt = float(t @ t)
        removed.append(float(t @ s_r @ t) / tt)
        picks.append(j)
        unit.append(t / tt**0.5)
        p = torch.eye(len(t), dtype=t.dtype) - torch.outer(t, t) / tt  # [r, r]
        s_r = p @ s_r @ p
        t_r = t_r - torch.outer(t_r @ t / tt, t)  # [m, r]
        t_r[j] = 0.0
        alive &= t_r.norm(dim=1) > DEAD_RTOL * norm0
    return picks, removed, torch.stack(unit) if unit else torch.zeros((0, t_r.shape[1]), dtype=t_r.dtype)


def _gram_block(block: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(block))  # [b, d], no copy
    return (t.T @ t).numpy()  # [d, d]


@contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array [rows, d]; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or inf")
    return a


def _check_k(k: int, rank: int, n: int) -> None:
    if int(k) < 1:
        raise InputError(f"k={k}: TEXTSPAN needs at least 1 pick")
    if int(rank) < 1:
        raise InputError(f"rank={rank}: the text projection needs a rank of at least 1")
    if k > rank:
        raise InputError(f"k={k} picks but rank={rank}: after `rank` picks every text is deflated to zero; choose k <= rank")
    if int(n) < 2:
        raise InputError(f"n={n} images: TEXTSPAN measures variance over images and needs at least 2")
