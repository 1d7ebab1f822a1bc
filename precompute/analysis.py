"""The maths of the five analyses (docs/design.md section 5), as pure functions over numpy arrays.

No streamlit, no model: the live decomposition of an upload is ``dashboard.live``; these functions take its
terms, or a run's head vectors, and return maps, scores, rankings and frames for the pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from precompute.decompose import spatial_maps
from precompute.errors import InputError
from precompute.labels import head_name

if TYPE_CHECKING:
    from dashboard.live import LiveImage

# --------------------------------------------------------------------------- spatial maps (analyses 2 and 3)


def head_maps(live: LiveImage, query: np.ndarray) -> np.ndarray:
    """Every decomposed head's spatial map for a query direction: [l, h, grid, grid] (``spatial_maps``)."""
    if live.tokens is None:
        raise InputError("this decomposition has no per-token terms; decompose with spatial=True for maps")
    query = torch.tensor(np.asarray(query, dtype=np.float32))  # a copy: cached embeddings are read-only
    maps = spatial_maps(torch.from_numpy(live.tokens), query, live.grid)
    return maps.numpy()  # [l, h, g, g]


def summed_map(maps: np.ndarray, layers: Sequence[int], chosen: Sequence[tuple[int, int]]) -> np.ndarray:
    """Sum of the chosen heads' maps, [grid, grid]; InputError for a head that was not decomposed."""
    if not chosen:
        raise InputError("choose at least one head")
    missing = [(l, h) for l, h in chosen if l not in layers or not 0 <= h < maps.shape[1]]
    if missing:
        raise InputError(f"heads {', '.join(head_name(l, h) for l, h in missing)} were not decomposed; "
                         f"layers available: {', '.join(map(str, layers))}, heads 0..{maps.shape[1] - 1}")
    return sum(maps[layers.index(l), h] for l, h in chosen)  # [g, g]


def contrastive_map(maps1: np.ndarray, maps2: np.ndarray, layers: Sequence[int],
                    chosen: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map(t1), map(t2), map(t1) - map(t2)), each summed over the SAME chosen heads: [grid, grid] each."""
    m1, m2 = summed_map(maps1, layers, chosen), summed_map(maps2, layers, chosen)
    return m1, m2, m1 - m2


def map_frame(grid_map: np.ndarray):
    """A [g, g] map as a long table (row, col, value) for CSV download."""
    import pandas as pd

    g_rows, g_cols = grid_map.shape
    rows, cols = np.divmod(np.arange(g_rows * g_cols), g_cols)  # [g*g] each
    return pd.DataFrame({"row": rows, "col": cols, "value": grid_map.reshape(-1)})  # [g, g] -> [g*g]


# --------------------------------------------------------------------------- nearest neighbours (1, 4, 5)


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """||v_i|| for each row, float32 [n] (float16 rows are widened in blocks, never all at once)."""
    if vectors.dtype == np.float16:
        return np.concatenate([row_norms(vectors[i:i + _BLOCK].astype(np.float32))
                               for i in range(0, len(vectors), _BLOCK)] or [np.zeros(0, np.float32)])
    return np.sqrt(np.einsum("nd,nd->n", vectors, vectors, dtype=np.float32))  # [n]; no [n, D] temporary


_BLOCK = 8192  # rows widened to float32 at a time


def matvec(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """vectors [n, d] @ query [d] as float32 [n]; float16 vectors through torch's half kernel.

    NumPy has no BLAS for float16 (a 50,000 x 512 product takes ~70 ms); torch's takes ~8 ms, as float32
    does in NumPy. Its scores are within 1e-3 |v| |q| of the float32 product (rounding of v, q and the result).
    """
    query = np.asarray(query, dtype=np.float32).reshape(-1)  # [d]
    if vectors.dtype != np.float16:
        return vectors @ query  # [n]
    tv = torch.from_dlpack(np.ascontiguousarray(vectors))  # no copy; DLPack accepts the read-only cached arrays
    return (tv @ torch.from_numpy(query.astype(np.float16))).float().numpy()  # [n]


def similarities(query: np.ndarray, vectors: np.ndarray, norms: np.ndarray | None = None,
                 cosine: bool = False) -> np.ndarray:
    """Dot products of every row of ``vectors`` [n, d] with ``query`` [d], or cosines: ``neighbour_scores``."""
    return neighbour_scores(query, vectors, "cosine" if cosine else "dot", norms=norms)


# The three similarities of the neighbour analyses (1, 4, 5): one home for their names and one-line meanings.
SIMILARITIES: dict[str, str] = {
    "centred": "cosine after subtracting the head's mean over the probe set: what this image's vector has that the "
               "head's usual output does not (the default)",
    "cosine": "cosine of the vectors as stored: direction only, the head's constant part included",
    "dot": "the paper's raw dot product: direction and strength, so the images the head writes most on (its "
           "hubs) come first for almost any query",
}
DEFAULT_SIMILARITY = "centred"


def check_similarity(name: str) -> str:
    """``name`` when it is one of SIMILARITIES, else InputError naming the choices."""
    if name not in SIMILARITIES:
        raise InputError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")
    return name


def products(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """vectors [n, d] @ queries.T for queries [c, d], float32 [n, c], accumulated in float32.

    float16 rows are widened _PRODUCT_BLOCK at a time into one reused float32 buffer (never all at once):
    unlike ``matvec``'s half kernel, whose result is rounded to float16, this keeps the cancellation in
    |v - mu| harmless. benchmarks/analysis_quality.py --speed measures it (no growth of the peak RSS).
    """
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32).T  # [d, c]
    if vectors.dtype != np.float16:
        return np.asarray(vectors, np.float32) @ queries  # [n, c]
    out = np.empty((len(vectors), queries.shape[1]), np.float32)  # [n, c]
    buf = np.empty((min(_PRODUCT_BLOCK, len(vectors)), vectors.shape[1]), np.float32)  # [block, d]
    for i in range(0, len(vectors), _PRODUCT_BLOCK):
        block = buf[:min(_PRODUCT_BLOCK, len(vectors) - i)]
        block[...] = vectors[i:i + len(block)]  # widened in place
        np.matmul(block, queries, out=out[i:i + len(block)])
    return out


_PRODUCT_BLOCK = 4096  # rows widened to float32 at a time: [4096, d] float32 is 8 MB at d = 512


def centred_norms(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """|v_i - mu| for each row, float32 [n], exact up to float32 (rows widened and centred in blocks)."""
    mean = np.asarray(mean, np.float32).reshape(-1)  # [D]
    out = np.empty(len(vectors), np.float32)  # [n]
    buf = np.empty((min(_PRODUCT_BLOCK, len(vectors)), vectors.shape[1]), np.float32)  # [block, D]
    for i in range(0, len(vectors), _PRODUCT_BLOCK):
        block = buf[:min(_PRODUCT_BLOCK, len(vectors) - i)]
        np.subtract(vectors[i:i + len(block)], mean, out=block)  # [block, D]
        out[i:i + len(block)] = np.sqrt(np.einsum("nd,nd->n", block, block))
    return out


def neighbour_scores(query: np.ndarray, vectors: np.ndarray, similarity: str = DEFAULT_SIMILARITY, *,
                     norms: np.ndarray | None = None, mean: np.ndarray | None = None,
                     centred: np.ndarray | None = None, text: bool = False) -> np.ndarray:
    """Scores [n] of every row v of ``vectors`` [n, D] against ``query`` q [D] (docs/design.md section 5.2).

    - ``dot``: v . q (the paper's score);
    - ``cosine``: v . q / (|v| |q|);
    - ``centred``, image query: cos(v - mu, q - mu), mu = ``mean`` [D], the rows' mean over the probe set;
      text query (``text``): cos(v - mu, q): the images are centred, the text is not (a text embedding is
      a direction, not a draw from the head's outputs: subtracting the head's mean from it would not remove
      a constant part it never had).

    ``norms`` [n] are |v| (``row_norms``) and ``centred`` [n] are |v - mu| (``centred_norms``), computed once
    per matrix. Then every similarity costs one ``matvec`` (float16 rows: torch's half kernel, scores within
    1e-3 |v| |q| of float32; centred scores within 1e-3 |v| / |v - mu| of the exact cosine). Without
    ``centred``, v . (q - mu) and v . mu come from one float32 pass (``products``) and the centred norms from
    |v - mu|^2 = |v|^2 - 2 v.mu + |mu|^2; no [n, D] float32 temporary either way.
    """
    check_similarity(similarity)
    query = np.asarray(query, dtype=np.float32).reshape(-1)  # [D]
    if vectors.ndim != 2 or query.shape[0] != vectors.shape[1]:
        raise InputError(f"a query of width {query.shape[0]} cannot be compared with vectors of shape "
                         f"{vectors.shape}; the run and the model must have the same output width")
    if similarity == "dot":
        return matvec(vectors, query)  # [n]
    if similarity == "cosine":
        norms = row_norms(vectors) if norms is None else np.asarray(norms, np.float32)  # [n]
        return matvec(vectors, query) / np.maximum(norms * np.linalg.norm(query), 1e-12)
    mean = vectors.mean(0, dtype=np.float32) if mean is None else np.asarray(mean, np.float32).reshape(-1)  # [D]
    q = query if text else query - mean  # [D]
    if centred is not None:
        vq = matvec(vectors, q)  # [n]
    else:
        norms = row_norms(vectors) if norms is None else np.asarray(norms, np.float32)  # [n]
        vq, vmu = products(vectors, np.stack([q, mean])).T  # [n] each
        centred = np.sqrt(np.maximum(norms.astype(np.float64) ** 2 - 2.0 * vmu + float(mean.astype(np.float64) @ mean),
                                     0.0))  # [n]; exact to ~1e-7 (|v| / |v - mu|)^2 relative (float32 norms)
    dots = vq - float(mean @ q)  # (v - mu) . q
    return np.clip(dots / np.maximum(centred * np.linalg.norm(q), 1e-12), -1.0, 1.0).astype(np.float32)


def neighbours(m, query: np.ndarray, k: int, similarity: str = DEFAULT_SIMILARITY, *, exclude: int | None = None,
               text: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image ids [k], scores [k]) of the k rows of ``m`` closest to ``query``, best first (analyses 1, 4, 5).

    ``m`` holds ``ids`` [n], ``vectors`` [n, D], ``norms`` [n] and ``mean`` [D], and ``centred`` [n] where it
    keeps them (``HeadVectors``, or the dashboard's cached ``HeadMatrix``); ``exclude`` is a row left out
    (the query image itself).
    """
    scores = neighbour_scores(query, m.vectors, similarity, norms=m.norms, mean=m.mean,
                              centred=getattr(m, "centred", None), text=text)  # [n]
    rows, best = top_k(scores, k, exclude)
    return m.ids[rows], best


@dataclass(frozen=True)
class HeadVectors:
    """One head's (or a property's mean) vectors over a run's images, rows sorted by image id."""

    ids: np.ndarray  # [n] int64, ascending
    vectors: np.ndarray  # [n, D]
    norms: np.ndarray  # [n] float32, |v|
    mean: np.ndarray  # [D] float32
    centred: np.ndarray  # [n] float32, |v - mean|

    def row_of(self, image_id: int) -> int | None:
        i = int(np.searchsorted(self.ids, image_id))
        return i if i < len(self.ids) and self.ids[i] == image_id else None


def head_vectors(ids: np.ndarray, vectors: np.ndarray, mean: np.ndarray | None = None) -> HeadVectors:
    """HeadVectors with norms, centred norms and (unless given, e.g. head_spans' float64 mean) the mean."""
    mean = (vectors.mean(0, dtype=np.float64) if mean is None else np.asarray(mean, np.float64)).astype(np.float32)
    return HeadVectors(np.asarray(ids, np.int64), vectors, row_norms(vectors), mean, centred_norms(vectors, mean))


def top_k(scores: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row indices [k], scores [k]) of the k largest scores, best first; row ``exclude`` left out."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if exclude is not None:
        scores = scores.copy()
        scores[exclude] = -np.inf
    n = len(scores) - (exclude is not None)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, scores.dtype)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))  # [k], unordered
    top = top[np.argsort(-scores[top], kind="stable")][:k]
    return top, scores[top]


def heads_with_property(labels, prop: str) -> list[tuple[int, int]]:
    """(layer, head) of every head labelled ``prop``, from a head_labels table or frame."""
    frame = labels.to_pandas() if hasattr(labels, "to_pandas") else labels
    hit = frame[frame["property"] == prop]
    return [(int(l), int(h)) for l, h in zip(hit["layer"], hit["head"])]


def mean_vector(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of r[l,h] over a property's heads: the property's query vector (analysis 1). [.., D] each."""
    if not vectors:
        raise InputError("no heads carry this property")
    return np.mean(np.stack(vectors), axis=0)  # [heads, ..., D] -> [..., D]


def principal_direction(vectors: np.ndarray) -> np.ndarray:
    """First principal direction of the centred rows of ``vectors`` [n, D]: top eigenvector of the covariance, [D].

    The sign is chosen so that the projections' third moment is positive (the longer tail points along +v),
    so "largest projection" names the images the direction stands out in.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    mean = vectors.mean(0)  # [D]
    centred = vectors - mean  # [n, D]
    cov = (centred.T @ centred).astype(np.float64)  # [D, D]; one BLAS call, exact (no iteration to converge)
    v = np.linalg.eigh(cov)[1][:, -1].astype(np.float32)  # [D], eigenvalues ascending
    return orient(v, vectors, mean)


def orient(direction: np.ndarray, vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``direction`` [D] or its negative, whichever gives the centred projections a positive third moment."""
    direction = np.asarray(direction, dtype=np.float32)
    proj = (matvec(vectors, direction) - float(np.asarray(mean, np.float32) @ direction)).astype(np.float64)  # [n]
    return direction if np.sum(proj ** 3) >= 0 else -direction


def neighbours_frame(image_ids: np.ndarray, scores: np.ndarray, meta, attributes=None, **context):
    """Ranked neighbour table: rank, image_id, path, label, score, the ground-truth columns of ``attributes``
    (a frame keyed by image_id, when the probe set has one), then ``context`` columns (run, layer, ...).

    ``meta`` is the run's image table (image_id, path, label, ...), joined on image_id.
    """
    import pandas as pd

    frame = meta.to_pandas() if hasattr(meta, "to_pandas") else meta
    out = pd.DataFrame({"rank": np.arange(1, len(image_ids) + 1), "image_id": np.asarray(image_ids, np.int64),
                        "score": np.asarray(scores, dtype=np.float64)})
    out = out.merge(frame[["image_id", "path", "label"]], on="image_id", how="left")
    out = out[["rank", "image_id", "path", "label", "score"]]
    if attributes is not None:
        out = out.merge(attributes, on="image_id", how="left")
    for key, value in context.items():
        out[key] = value
    return out


def top_along(vectors: np.ndarray, direction: np.ndarray, k: int, centred: bool = False,
              mean: np.ndarray | None = None):
    """(rows [k], projections [k]) of the rows with the largest projection on unit(direction), best first.

    ``centred`` subtracts the mean row first (for a principal direction, defined on centred data);
    ``mean`` [D] is that mean when the caller has it (float16 rows are not averaged here).
    """
    unit = np.asarray(direction, np.float32) / max(float(np.linalg.norm(direction)), 1e-12)  # [D]
    scores = matvec(vectors, unit)  # [n]
    if centred:
        mean = vectors.mean(0, dtype=np.float32) if mean is None else np.asarray(mean, np.float32)  # [D]
        scores = scores - float(mean @ unit)
    return top_k(scores, k)


# --------------------------------------------------------------------------- heads for a text in one image


def heads_for_text(heads: np.ndarray, layers: Sequence[int], text: np.ndarray, means: np.ndarray | None = None,
                   tokens: np.ndarray | None = None, by: str | None = None):
    """Which heads respond most to a text in one image: one row per head (layer, head, scores), strongest first.

    heads [l, h, D] are the image's r[l,h]; text [D] a normalised text embedding. Columns:
    ``projection`` r . t (the head's share of the image-text score, which the heads' sum plus the rest make
    up); ``centred`` (r - mu) . t with ``means`` [l, h, D] the heads' means over the probe set (how much more
    than usual the head writes toward the text here); ``map_total`` the sum of the head's spatial map (the
    patch tokens' share of the projection, the class token's left out) when ``tokens`` [l, h, t, D] are given.
    ``by`` names the column to rank by: default ``centred`` when means are given, else ``projection``.
    """
    import pandas as pd

    text = np.asarray(text, np.float32).reshape(-1)  # [D]
    heads = np.asarray(heads, np.float32)  # [l, h, D]
    n_l, n_h = heads.shape[:2]
    out = pd.DataFrame({"layer": np.repeat(np.asarray(layers, np.int64), n_h), "head": np.tile(np.arange(n_h), n_l),
                        "projection": (heads @ text).reshape(-1)})  # [l, h] -> [l*h]
    if means is not None:
        out["centred"] = ((heads - np.asarray(means, np.float32)) @ text).reshape(-1)  # [l*h]
    if tokens is not None:
        out["map_total"] = (np.asarray(tokens, np.float32)[:, :, 1:] @ text).sum(-1).reshape(-1)  # [l, h, t-1] -> [l*h]
    by = by or ("centred" if means is not None else "projection")
    if by not in out.columns[2:]:
        raise InputError(f"cannot rank heads by {by!r}; available: {', '.join(out.columns[2:])}")
    out = out.sort_values([by, "layer", "head"], ascending=[False, True, True], kind="stable")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)
