"""Head ablations from the exact decomposition: pure maths, no forward pass (docs/design.md section 6.4).

The terms of the decomposition sum to the normalised embedding (section 3.3), so mean-ablating a set G of
heads in their direct effect is

    e'_i = e_i - sum_{h in G} (r_h,i - mu_h)          mu_h = mean_i r_h,i over the probe set

with each image's LayerNorm scale held fixed. A zero-shot classifier scores ``e' W^T`` (W [c, D], the
normalised class embeddings); since it is linear, the ablated scores are ``e W^T - sum_h c_h W^T`` with
``c_h = r_h - mu_h``, so one product per head ([H, b, c]) serves every group that contains it. The cosine
of e' to e needs only ``e . c_h`` [H, b] and the heads' Gram ``c_h . c_g`` [b, H, H]:

    e'.e = |e|^2 - sum_G e.c_h          |e'|^2 = |e|^2 - 2 sum_G e.c_h + sum_{h,g in G} c_h.c_g

Everything here works on one block of images and returns sums, so the stage streams any number of images
through bounded memory (``block_rows``). Dimension letters: b images of the block, H heads, G groups,
T targets, c classes of all targets together, D output width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from precompute.errors import InputError

SCORE_BYTES = 256 * 2**20  # the [H, b, c] block of per-head score changes is kept under this


@dataclass(frozen=True)
class Target:
    """One zero-shot task: an attribute of the probe set (toy world) or the class label."""

    name: str  # attribute name, or 'label'
    classes: tuple[str, ...]
    weights: np.ndarray  # [c, D] normalised class embeddings
    labels: np.ndarray  # [n] int class index per image, -1 where the image has no value

    def __post_init__(self):
        if self.weights.ndim != 2 or len(self.weights) != len(self.classes):
            raise InputError(f"target {self.name}: {len(self.classes)} classes but weights {self.weights.shape}")


@dataclass
class Totals:
    """Sums over the images seen so far: correct predictions per target and cosines, for each ablation."""

    correct: np.ndarray  # [A, T] int64: images classified right after ablation a, per target
    cosine: np.ndarray  # [A] float64: sum over images of cos(e', e)
    intact: np.ndarray  # [T] int64: images classified right with nothing ablated
    scored: np.ndarray  # [T] int64: images with a value for the target
    images: int = 0

    @classmethod
    def zeros(cls, ablations: int, targets: int) -> "Totals":
        return cls(np.zeros((ablations, targets), np.int64), np.zeros(ablations), np.zeros(targets, np.int64),
                   np.zeros(targets, np.int64))

    def add(self, other: "Totals") -> None:
        self.correct += other.correct
        self.cosine += other.cosine
        self.intact += other.intact
        self.scored += other.scored
        self.images += other.images

    def accuracy(self) -> tuple[np.ndarray, np.ndarray]:
        """(intact [T], ablated [A, T]) accuracies; NaN for a target no image has."""
        with np.errstate(invalid="ignore", divide="ignore"):
            scored = np.where(self.scored > 0, self.scored, np.nan)
            return self.intact / scored, self.correct / scored[None, :]

    def mean_cosine(self) -> np.ndarray:
        return self.cosine / max(self.images, 1)


@dataclass(frozen=True)
class Classifier:
    """Every target's class embeddings side by side: W [c, D] and the slice of each target's classes."""

    weights: np.ndarray  # [c, D] float32
    slices: tuple[slice, ...]  # one per target, into the c columns
    labels: np.ndarray  # [T, n] int, -1 where an image has no value
    names: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, targets: Sequence[Target]) -> "Classifier":
        if not targets:
            raise InputError("no zero-shot target: the probe set has neither attributes nor class labels")
        n = {len(t.labels) for t in targets}
        if len(n) != 1:
            raise InputError(f"targets label different numbers of images: {sorted(n)}")
        bounds = np.cumsum([0] + [len(t.classes) for t in targets])
        return cls(np.concatenate([t.weights for t in targets]).astype(np.float32),
                   tuple(slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])),
                   np.stack([t.labels for t in targets]).astype(np.int64), tuple(t.name for t in targets))

    def correct(self, scores: np.ndarray, rows: slice) -> np.ndarray:
        """[T] images of the block whose argmax within each target's classes is their label."""
        out = np.empty(len(self.slices), np.int64)
        for t, cols in enumerate(self.slices):
            y = self.labels[t, rows]  # [b]
            out[t] = int(np.sum((scores[:, cols].argmax(1) == y) & (y >= 0)))
        return out


def block_rows(heads: int, classes: int, width: int, limit: int = SCORE_BYTES) -> int:
    """Images per block so that one block's arrays (score changes [H, b, c], vectors [H, b, D], Gram
    [b, H, H] in float64) stay under about ``limit`` bytes."""
    return max(64, limit // max(1, 4 * heads * classes + 4 * heads * width + 8 * heads * heads))


def block_totals(embeddings: np.ndarray, centred: np.ndarray, clf: Classifier, rows: slice,
                 groups: Sequence[Sequence[int]]) -> Totals:
    """Ablation totals of one block: each head alone (the first H ablations), then each group.

    embeddings [b, D]: the intact normalised embeddings; centred [H, b, D]: c_h = r_h - mu_h of the block's
    images; ``rows``: the block's images in the targets' label arrays; groups: head indices into H.
    """
    e = np.asarray(embeddings, np.float32)
    c = np.asarray(centred, np.float32)
    heads, b, _ = c.shape
    if e.shape != c.shape[1:]:
        raise InputError(f"embeddings {e.shape} and head vectors {c.shape} do not match")
    base = e @ clf.weights.T  # [b, c]
    delta = np.einsum("hbd,cd->hbc", c, clf.weights, optimize=True)  # [H, b, c]: what each head adds
    dots = np.einsum("hbd,bd->hb", c, e).astype(np.float64)  # [H, b]: e . c_h
    gram = np.matmul(c.transpose(1, 0, 2), c.transpose(1, 2, 0)).astype(np.float64)  # [b, H, H]: c_h . c_g
    norm2 = np.einsum("bd,bd->b", e, e).astype(np.float64)  # [b]

    ablations = [[h] for h in range(heads)] + [list(g) for g in groups]
    out = Totals.zeros(len(ablations), len(clf.slices))
    out.images = b
    out.intact = clf.correct(base, rows)
    out.scored = (clf.labels[:, rows] >= 0).sum(1)
    scores = np.empty_like(base)
    held: set[int] = set()  # the heads ``scores`` has subtracted: a group that contains them only adds the rest
    for a, members in enumerate(ablations):
        if not held <= set(members):
            held = set()
        if not held:
            scores[:] = base
        for h in members:
            if h not in held:
                scores -= delta[h]  # [b, c]: e' W^T = e W^T - sum_G c_h W^T
        held = set(members)
        out.correct[a] = clf.correct(scores, rows)
        mask = np.zeros(heads)  # [H]: 1 on the group's heads
        mask[list(members)] = 1.0
        shift = mask @ dots  # [b]: e . sum_G c_h
        along = norm2 - shift  # [b]: e'.e
        length2 = norm2 - 2 * shift + (gram @ mask) @ mask  # [b]: |e'|^2
        out.cosine[a] = float(np.sum(along / np.sqrt(np.maximum(length2 * norm2, 1e-30))))
    return out


def ablated(embeddings: np.ndarray, vectors: np.ndarray, means: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """The mean-ablated embeddings e - sum_G (r_h - mu_h) [n, D], written out (tests, the forward comparison).

    vectors [H, n, D], means [H, D].
    """
    idx = list(members)
    return np.asarray(embeddings, np.float64) - (np.asarray(vectors, np.float64)[idx]
                                                 - np.asarray(means, np.float64)[idx][:, None]).sum(0)


def random_groups(heads: int, sizes: Sequence[int], repeats: int, seed: int) -> list[list[list[int]]]:
    """For each of ``repeats`` seeded random orders of the heads, its first k heads for every k in ``sizes``.

    Each set is a uniform random set of its size; the sets of one repeat are nested (a random pruning curve),
    so ablating them in order costs only the heads each adds. Repeat r depends only on (seed, heads, r).
    """
    if any(not 0 < k <= heads for k in sizes):
        raise InputError(f"random groups of {sorted(sizes)} heads out of {heads}: every size must be in 1..{heads}")
    out = []
    for r in range(repeats):
        order = np.random.default_rng([seed, heads, r]).permutation(heads)
        out.append([sorted(int(h) for h in order[:k]) for k in sorted(sizes)])
    return out


def consistency_order(ccs: Sequence[float | None], seed: int) -> list[int]:
    """Head indices from most to least concept-consistent; ties (and nulls, ranked last) in a seeded order.

    Ties are broken at random rather than by layer or variance, which would confound the comparison with
    random sets (later and larger heads change the embedding more).
    """
    tie = np.random.default_rng([seed, len(ccs)]).permutation(len(ccs))
    key = [(-(v if v is not None else -1.0), int(tie[i])) for i, v in enumerate(ccs)]
    return sorted(range(len(ccs)), key=lambda i: key[i])


def group_sizes(heads: int, fractions: Sequence[float]) -> list[int]:
    """k = round(f * H) for each fraction, at least 1 and at most H, without repeats, ascending."""
    return sorted({min(heads, max(1, int(round(f * heads)))) for f in fractions})


def causal_attribute(drops: dict[str, float], min_drop: float = 0.0) -> str | None:
    """The target whose accuracy drops most when a head is ablated (first on ties); None when no drop exceeds
    ``min_drop``: the check is inconclusive for a head whose ablation changes (almost) nothing."""
    best = max(drops.items(), key=lambda kv: kv[1], default=(None, 0.0))
    return best[0] if best[1] is not None and best[1] > min_drop else None
