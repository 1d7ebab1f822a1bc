"""Finding heads: by property, by the words of their TEXTSPAN texts, or by meaning. Pure pandas/numpy.

Words match token by token after a small suffix stemmer (``stem``), so "stripes" finds "striped" and "red"
never matches "checkered"; meaning ranks a head by its top texts weighted by pick order (``RANK_WEIGHT``),
and ``far_from_pool`` says when a query is unlike every text the pool knows (docs/design.md section 5.4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------- words

_SPELLING = {"colour": "color", "coloured": "colored", "colours": "colors", "grey": "gray", "centre": "center",
             "centred": "centered"}
# Query words that say nothing on their own: dropped from a query unless it has nothing else.
STOP_WORDS = frozenset("a an the of with on in at is are and or to some".split())
_VOWELS = set("aeiou")


def stem(word: str) -> str:
    """A small suffix stemmer: plural, -ing, -ed, a doubled final consonant and a final -e go.

    stripes, striped, striping -> strip; dotted -> dot; crosses -> cross; colours -> color; red stays red
    (a suffix is only removed when at least three letters remain).
    """
    w = _SPELLING.get(word.lower(), word.lower())
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("es") and (w[-3] in "sxz" or w[-4:-2] in ("ch", "sh")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and set(w[:-len(suffix)]) & _VOWELS:
            w = w[:-len(suffix)]
            if len(w) > 3 and w[-1] == w[-2] and w[-1] not in _VOWELS | {"l", "s", "z"}:
                w = w[:-1]  # dotted -> dott -> dot
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def tokens(text: str) -> list[str]:
    """The stems of the words of ``text`` (letters and digits; punctuation and case ignored)."""
    return [stem(t) for t in re.findall(r"[a-z0-9]+", text.lower())]


def query_tokens(query: str) -> set[str]:
    """The stems a text must contain to match ``query``: its words without STOP_WORDS (all, if only those)."""
    words = re.findall(r"[a-z0-9]+", query.lower())
    kept = [w for w in words if w not in STOP_WORDS] or words
    return {stem(w) for w in kept}


def match_words(texts, query: str) -> np.ndarray:
    """Boolean [m]: which of ``texts`` contain every word of ``query`` (as stems, in any order)."""
    wanted = query_tokens(query)
    if not wanted:
        return np.zeros(len(texts), bool)
    return np.array([wanted <= set(tokens(t)) for t in texts], bool)


def by_words(picks: pd.DataFrame, query: str, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Heads whose TEXTSPAN texts contain the query's words (``match_words``): ``group_hits`` of the matches."""
    return group_hits(picks[match_words(picks["text"].tolist(), query)] if len(picks) else picks, labels)


def group_hits(hits: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Matching picks -> one row per head, best-ranked hit first: layer, head, label (with ``labels``),
    best_rank, matches, texts (the matching texts, in pick order)."""
    if hits.empty:
        return with_labels(pd.DataFrame(columns=["layer", "head", "best_rank", "matches", "texts"]), labels)
    grouped = hits.sort_values("rank").groupby(["layer", "head"], as_index=False).agg(
        best_rank=("rank", "min"), matches=("text", "size"), texts=("text", lambda t: " | ".join(t)))
    grouped = grouped.sort_values(["best_rank", "matches", "layer", "head"], ascending=[True, False, True, True])
    return with_labels(grouped.reset_index(drop=True), labels)


def with_labels(frame: pd.DataFrame, labels: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with each head's label (the ``property`` of ``labels``) as a ``label`` column after layer, head."""
    if labels is None:
        return frame
    named = labels[["layer", "head", "property"]].rename(columns={"property": "label"})
    out = frame.merge(named.astype({"layer": "int64", "head": "int64"}),
                      on=["layer", "head"], how="left") if len(frame) else frame.assign(label=pd.Series(dtype=str))
    columns = ["layer", "head", "label"] + [c for c in out.columns if c not in ("layer", "head", "label")]
    return out[columns]


# --------------------------------------------------------------------------- property


def by_property(overview: pd.DataFrame, prop: str) -> pd.DataFrame:
    """Heads labelled ``prop`` (from ``data.head_overview``), most associated first."""
    hit = overview[overview["property"] == prop]
    return hit.sort_values(["association", "layer", "head"], ascending=[False, True, True], na_position="last")


# --------------------------------------------------------------------------- meaning


def rank_weight(rank) -> np.ndarray:
    """RANK_WEIGHT: pick r counts 1/r (TEXTSPAN's first pick explains most of the head, so it counts most)."""
    return 1.0 / np.asarray(rank, np.float64)


RANK_WEIGHT = "texts weighted 1/rank, so a head's first pick counts as much as its next two together"


def by_meaning(query: np.ndarray, picks: pd.DataFrame, text_ids: np.ndarray, text_emb: np.ndarray,
               top_rank: int | None = None, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Heads ranked by the 1/rank-weighted mean cosine between the query text and their TEXTSPAN texts.

    similarity = sum_r cos(q, t_r) / r  /  sum_r 1 / r over the head's picks t_1, t_2, ... (``rank_weight``),
    so one close text far down a head's list cannot put it first. query [D] and text_emb [m, D] are
    normalised (a dot product is a cosine); ``picks`` holds layer, head, rank, text_id, text
    (``data.all_head_texts``); ``top_rank`` keeps ranks <= it. Columns: layer, head, label (with ``labels``),
    similarity, best_text (the text that adds most to the sum), rank (its pick order).
    """
    if top_rank is not None:
        picks = picks[picks["rank"] <= top_rank]
    if picks.empty:
        return with_labels(pd.DataFrame(columns=["layer", "head", "similarity", "best_text", "rank"]), labels)
    row_of = {int(t): i for i, t in enumerate(text_ids)}
    rows = np.array([row_of.get(int(t), -1) for t in picks["text_id"]])  # [p]
    known = rows >= 0
    picks = picks[known]
    cos = text_emb[rows[known]] @ np.asarray(query, np.float32)  # [p]
    w = rank_weight(picks["rank"].to_numpy())  # [p]
    scored = picks.assign(_wc=w * cos, _w=w, _cos=cos)
    keys = ["layer", "head"]
    sums = scored.groupby(keys, as_index=False)[["_wc", "_w"]].sum()
    best = scored.loc[scored.groupby(keys)["_wc"].idxmax(), keys + ["text", "rank"]]
    out = sums.assign(similarity=sums["_wc"] / sums["_w"]).merge(best, on=keys)
    out = out.rename(columns={"text": "best_text"})[["layer", "head", "similarity", "best_text", "rank"]]
    out = out.sort_values(["similarity", "layer", "head"], ascending=[False, True, True]).reset_index(drop=True)
    return with_labels(out, labels)


# A query is "far from the pool" when its closest pool text stands out from its cosines to the whole pool by
# fewer than FAR_Z standard deviations. Calibrated on the three toy models and their toyworld pool
# (docs/design.md section 5.4): nonsense ("colour", "a dog", "night", "a car", ...) scores 2.0-2.7, texts of
# the toy vocabulary ("a red shape", "blue", "a circle", "two objects", ...) 2.7-4.3.
FAR_Z = 2.8


@dataclass(frozen=True)
class PoolDistance:
    """How a query text relates to a run's text pool."""

    best: float  # the largest cosine to any pool text
    best_text: str
    z: float  # (best - mean cosine over the pool) / their standard deviation
    far: bool  # z < FAR_Z

    def message(self, query: str) -> str:
        return (f"“{query}” is far from every text this run's pool knows: its closest pool text, "
                f"“{self.best_text}” (cosine {self.best:.2f}), stands out by only {self.z:.1f} standard deviations "
                f"from its similarity to the pool at large (below {FAR_Z}), so the ranking by meaning is "
                "probably noise. Try words of the pool's vocabulary.")


def far_from_pool(query: np.ndarray, texts, text_emb: np.ndarray, threshold: float = FAR_Z) -> PoolDistance:
    """Whether ``query`` [D] (normalised) is unlike every text of the pool (``texts`` [m], ``text_emb`` [m, D]).

    A raw best cosine does not tell: a toy model maps words it never saw to a generic embedding that is
    close (0.9 and more) to many pool texts, while a known text is close to a few and far from the rest.
    """
    cos = np.asarray(text_emb, np.float32) @ np.asarray(query, np.float32)  # [m]
    if len(cos) < 2:
        return PoolDistance(float(cos.max()) if len(cos) else 0.0, texts[0] if len(cos) else "", 0.0, False)
    j = int(np.argmax(cos))
    z = float((cos[j] - cos.mean()) / max(float(cos.std()), 1e-12))
    return PoolDistance(float(cos[j]), str(list(texts)[j]), z, z < threshold)
