"""Interpretability scores of heads and models (docs/design.md section 6.2).

The association and entanglement scores come from Madasu et al., "Quantifying
and Enabling the Interpretability of CLIP-like Models" (arXiv 2409.06579). The
paper's exact formulas could not be read (docs/design.md section 6.3): the
functions below are *our documented reading* of its definitions, kept small so
they can be swapped, and every head's own value is returned, not only the mean.

- association: consistency within a head, share of its top-k texts whose
  property is the head's property (higher = more interpretable);
- CCS: the same count over the top 5, 0..5 (Concept Consistency Score, arXiv 2503.11103);
- entanglement: across heads, share of labelled heads whose property another
  head of the same model also has (lower = more disentangled).

Heads labelled ``mixed`` are not labelled: they get None and are left out of
the means of association, CCS and entanglement.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

from precompute.errors import InputError
from precompute.labels import MIXED


def association(property: str, top_properties: Sequence[str | None], k: int = 5) -> float | None:
    """Association of one head: #{i <= k : p_i == p} / min(k, #texts); None when p is mixed.

    p is the head's property, p_i the property of its i-th TEXTSPAN text.
    """
    count = ccs(property, top_properties, k)
    if count is None:
        return None
    considered = min(k, len(top_properties))
    return count / considered if considered else None


def ccs(property: str, top_properties: Sequence[str | None], k: int = 5) -> int | None:
    """Concept Consistency Score: #{i <= k : p_i == p}, 0..k; None when p is mixed."""
    if k < 1:
        raise InputError(f"k={k}: the scores need at least the top 1 text")
    if property is None or property == MIXED:
        return None
    return sum(1 for p in top_properties[:k] if p == property)


def entanglement(properties: Sequence[str | None]) -> tuple[list[bool | None], float | None]:
    """Per-head entanglement and the model's score over all heads of one model.

    A labelled head (property not mixed) is entangled when another labelled head
    has the same property. score = #entangled / #labelled; None with no labelled head.
    """
    counts = Counter(p for p in properties if p is not None and p != MIXED)
    per_head = [None if p is None or p == MIXED else counts[p] > 1 for p in properties]
    labelled = [e for e in per_head if e is not None]
    return per_head, (sum(labelled) / len(labelled) if labelled else None)


def variance_at(variance_explained: Sequence[float], k: int) -> float | None:
    """Cumulative share of the head's variance explained by its first k texts (all it has if fewer)."""
    if len(variance_explained) == 0:
        return None
    return float(variance_explained[min(k, len(variance_explained)) - 1])


def attribute_r2(vectors: np.ndarray, values: Sequence[Hashable]) -> float:
    """Share of a head's variance explained by an image attribute's class means.

    R^2 = sum_c n_c ||mean_c - mean||^2 / sum_i ||x_i - mean||^2, summed over all d
    dims (between-class over total sum of squares). Images whose value is None or
    NaN are left out. NaN when fewer than 2 images remain or the head does not vary.
    R^2 grows with the number of classes: compare attributes of similar cardinality.
    """
    x = np.asarray(vectors, dtype=np.float64)
    vals = np.asarray(values, dtype=object)
    if x.ndim != 2 or vals.shape != (x.shape[0],):
        raise InputError(f"vectors {x.shape} and values {vals.shape} must be [n, d] and [n]")
    keep = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) for v in vals], dtype=bool)
    x, vals = x[keep], vals[keep]
    if len(x) < 2:
        return float("nan")
    _, codes = np.unique(vals.astype(str), return_inverse=True)  # [n]
    mean = x.mean(axis=0)  # [d]
    total = float(np.sum((x - mean) ** 2))
    if total <= 0:
        return float("nan")
    counts = np.bincount(codes).astype(np.float64)  # [c]
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    class_means = np.add.reduceat(x[order], starts, axis=0) / counts[:, None]  # [c, d]
    between = float(np.sum(counts * np.sum((class_means - mean) ** 2, axis=1)))
    return between / total


def best_attribute(vectors: np.ndarray, attributes: Mapping[str, Sequence[Hashable]]) -> tuple[str | None, float]:
    """The attribute with the highest ``attribute_r2`` (first on ties); (None, nan) when none is defined."""
    best: tuple[str | None, float] = (None, float("nan"))
    for name, values in attributes.items():
        r2 = attribute_r2(vectors, values)
        if not np.isnan(r2) and (best[0] is None or r2 > best[1]):
            best = (name, r2)
    return best


def zero_shot_accuracy(image_embeddings: np.ndarray, class_embeddings: np.ndarray, labels: Sequence[int]) -> float:
    """Share of images whose argmax_c <e_i, w_c> is their label (e [n, D], w [c, D])."""
    e = np.asarray(image_embeddings)
    w = np.asarray(class_embeddings)
    y = np.asarray(labels)
    if e.ndim != 2 or w.ndim != 2 or e.shape[1] != w.shape[1] or y.shape != (e.shape[0],):
        raise InputError(f"image embeddings {e.shape}, class embeddings {w.shape}, labels {y.shape}: expected [n, D], [c, D], [n]")
    if len(y) == 0:
        raise InputError("zero-shot accuracy needs at least one labelled image")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(w):
        raise InputError(f"labels must be integers in 0..{len(w) - 1} (one per class embedding)")
    predicted = np.argmax(e @ w.T, axis=1)  # [n, c] -> [n]
    return float(np.mean(predicted == y))


# ------------------------------------------------------------ per head, per model


@dataclass(frozen=True)
class HeadInput:
    """What the scores need to know about one head."""

    layer: int
    head: int
    property: str
    top_properties: tuple[str | None, ...]  # properties of the TEXTSPAN picks, in rank order
    variance_explained: tuple[float, ...]  # cumulative, one per pick
    head_variance: float | None = None  # trace of the head's covariance
    best_attribute: str | None = None  # ground truth where the probe set has attributes (toy world)
    best_attribute_r2: float | None = None


@dataclass(frozen=True)
class HeadScore:
    """One row of HEAD_SCORES (schema.py)."""

    layer: int
    head: int
    property: str
    association: float | None
    ccs5: int | None
    entangled: bool | None
    variance_top5: float | None
    variance_topk: float | None
    head_variance: float | None
    best_attribute: str | None
    best_attribute_r2: float | None
    label_agrees: bool | None  # property == best_attribute (case-insensitive); None when mixed or no ground truth


@dataclass(frozen=True)
class ModelScores:
    """The model-level means (the score columns of MODEL_SCORES)."""

    n_heads: int
    n_labelled: int
    n_properties: int
    association: float | None  # mean over labelled heads
    entanglement: float | None
    ccs5_mean: float | None  # mean over labelled heads
    variance_top5: float | None  # mean over heads
    variance_topk: float | None
    zeroshot_intact: float | None
    zeroshot_replaced: float | None
    label_agreement: float | None  # share of labelled heads with ground truth whose label agrees


def score_heads(heads: Sequence[HeadInput], k: int = 5) -> list[HeadScore]:
    """Per-head scores of the heads of one model (entanglement is relative to these heads)."""
    keys = [(h.layer, h.head) for h in heads]
    if len(set(keys)) != len(keys):
        raise InputError(f"duplicate (layer, head) among the heads: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    entangled, _ = entanglement([h.property for h in heads])
    out = []
    for h, tangled in zip(heads, entangled):
        labelled = h.property != MIXED
        agrees = None if not labelled or h.best_attribute is None else h.property.casefold() == h.best_attribute.casefold()
        out.append(
            HeadScore(
                layer=h.layer,
                head=h.head,
                property=h.property,
                association=association(h.property, h.top_properties, k),
                ccs5=ccs(h.property, h.top_properties, k),
                entangled=tangled,
                variance_top5=variance_at(h.variance_explained, k),
                variance_topk=variance_at(h.variance_explained, len(h.variance_explained)),
                head_variance=h.head_variance,
                best_attribute=h.best_attribute,
                best_attribute_r2=h.best_attribute_r2,
                label_agrees=agrees,
            )
        )
    return out


def model_scores(
    scores: Sequence[HeadScore], zeroshot_intact: float | None = None, zeroshot_replaced: float | None = None
) -> ModelScores:
    """Means over one model's heads; see the field comments of ``ModelScores`` for each population."""
    labelled = [s for s in scores if s.property != MIXED]
    _, tangle = entanglement([s.property for s in scores])
    return ModelScores(
        n_heads=len(scores),
        n_labelled=len(labelled),
        n_properties=len({s.property for s in labelled}),
        association=_mean(s.association for s in labelled),
        entanglement=tangle,
        ccs5_mean=_mean(s.ccs5 for s in labelled),
        variance_top5=_mean(s.variance_top5 for s in scores),
        variance_topk=_mean(s.variance_topk for s in scores),
        zeroshot_intact=zeroshot_intact,
        zeroshot_replaced=zeroshot_replaced,
        label_agreement=_mean(None if s.label_agrees is None else float(s.label_agrees) for s in labelled),
    )


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
