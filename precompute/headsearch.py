"""Finding heads: by property, by the words of their TEXTSPAN texts, or by meaning. Pure pandas/numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd


def by_property(overview: pd.DataFrame, prop: str) -> pd.DataFrame:
    """Heads labelled ``prop`` (from ``data.head_overview``), most associated first."""
    hit = overview[overview["property"] == prop]
    return hit.sort_values(["association", "layer", "head"], ascending=[False, True, True], na_position="last")


def by_words(matches: pd.DataFrame) -> pd.DataFrame:
    """ILIKE hits (one row per matching pick) -> one row per head: its best-ranked hit and how many texts match."""
    if matches.empty:
        return pd.DataFrame(columns=["layer", "head", "best_rank", "matches", "texts"])
    grouped = matches.sort_values("rank").groupby(["layer", "head"], as_index=False).agg(
        best_rank=("rank", "min"), matches=("text", "size"), texts=("text", lambda t: " | ".join(t)))
    return grouped.sort_values(["best_rank", "matches", "layer", "head"], ascending=[True, False, True, True])


def by_meaning(query: np.ndarray, picks: pd.DataFrame, text_ids: np.ndarray, text_emb: np.ndarray,
               top_rank: int | None = None) -> pd.DataFrame:
    """Heads ranked by the best cosine between the query text and any of their TEXTSPAN texts.

    query [D] and text_emb [m, D] are normalised embeddings (so a dot product is a cosine); ``picks``
    holds layer, head, rank, text_id, text (``data.all_head_texts``); ``top_rank`` keeps ranks <= it.
    """
    if top_rank is not None:
        picks = picks[picks["rank"] <= top_rank]
    if picks.empty:
        return pd.DataFrame(columns=["layer", "head", "similarity", "best_text", "rank"])
    row_of = {int(t): i for i, t in enumerate(text_ids)}
    rows = np.array([row_of.get(int(t), -1) for t in picks["text_id"]])  # [p]
    sims = np.where(rows >= 0, text_emb[np.maximum(rows, 0)] @ np.asarray(query, np.float32), -np.inf)  # [p]
    scored = picks.assign(similarity=sims)
    best = scored.loc[scored.groupby(["layer", "head"])["similarity"].idxmax()]
    out = best.rename(columns={"text": "best_text"})[["layer", "head", "similarity", "best_text", "rank"]]
    return out.sort_values("similarity", ascending=False).reset_index(drop=True)
