"""The head explorer's sections: label and provenance, a pending override, TEXTSPAN texts, scores,
top dataset images, and the form that corrects a label. Streamlit code; the page composes these."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, data, state, urlstate
from precompute import analysis
from dashboard.widgets import (RunContext, coverage_note, download_csv, fail, repair_hint, stage_hint,
                               thumbnail_grid)
from precompute import schema
from precompute.errors import InterpretError
from precompute.labels import MIXED, head_name, load_overrides, write_override

SAVED = "head.saved"  # a message to show once after an override was written


def all_heads(ctx: RunContext) -> list[tuple[int, int]]:
    return [(layer, h) for layer in ctx.layers for h in range(ctx.heads)]


def step(ctx: RunContext, prefix: str, layer: int, head: int, delta: int) -> None:
    """Button callback: select the previous (-1) or next (+1) head, wrapping around."""
    heads = all_heads(ctx)
    layer, head = heads[(heads.index((layer, head)) + delta) % len(heads)]
    st.session_state[f"{prefix}.layer"], st.session_state[f"{prefix}.head"] = layer, head


def label_section(ctx: RunContext, label: dict | None, layer: int, head: int) -> None:
    if label is None:
        st.subheader(head_name(layer, head))
        st.info(stage_hint(ctx, "label") or f"{head_name(layer, head)} has no label in this run.")
        return
    st.subheader(f"{head_name(layer, head)} · {label['property']}")
    assoc = label.get("association")
    st.markdown(f"Labelled **{label['property']}** by the **{label['labeller']}** labeller"
                + (f"; association {assoc:.2f} ({label.get('ccs5')} of its top 5 texts carry it)."
                   if assoc is not None and pd.notna(assoc) else "."))
    with st.expander("Provenance (who or what made this label)"):
        try:
            st.json(json.loads(label["provenance"]))
        except (TypeError, ValueError):
            st.code(str(label["provenance"]))


def pending_override(ctx: RunContext, label: dict | None, layer: int, head: int) -> None:
    """A correction written from here (or by hand) that the next `clip-interpret label` run will apply."""
    path = Path(ctx.path) / schema.LABEL_OVERRIDES_FILE
    try:
        found = load_overrides(path, missing_ok=True).get((layer, head))
    except InterpretError as e:
        st.warning(f"The overrides file cannot be read: {e}")
        return
    if found is None:
        return
    applied = label is not None and label["labeller"] == "manual" and label["property"] == found.property
    if applied:
        st.caption(f"This label comes from the override in `{path.name}`.")
        return
    who = f" by {found.author}" if found.author else ""
    note = f' ("{found.note}")' if found.note else ""
    st.warning(f"**Pending override:** {head_name(layer, head)} → **{found.property}**{who}{note}. It takes effect "
               f"at the next `clip-interpret label --out {ctx.path}` (then `clip-interpret score --out {ctx.path}` "
               "to update the scores).")


def texts_section(ctx: RunContext, layer: int, head: int) -> pd.DataFrame:
    """The head's TEXTSPAN texts: 5 by default, up to all stored. Returns every stored pick."""
    picks = data.head_texts(ctx.con, ctx.name, layer, head).to_pandas()
    st.markdown("#### TEXTSPAN texts")
    if picks.empty:
        st.info(stage_hint(ctx, "textspan") or "No TEXTSPAN texts for this head.")
        return picks
    n = urlstate.number("Texts shown", key="head.n", param="n", lo=1, hi=len(picks), default=5)
    shown = picks.head(n)
    st.altair_chart(charts.variance_bars(shown), width="stretch")
    st.caption("Texts in TEXTSPAN pick order; the bar is the share of the head's variance (over the probe images) "
               "explained by that text and all texts above it.")
    download_csv(picks.drop(columns=["text_id"]), "Download all texts (CSV)",
                 f"{ctx.name.replace('/', '_')}_{head_name(layer, head)}_texts.csv", key="head.texts.csv")
    return picks


def scores_section(ctx: RunContext, layer: int, head: int) -> None:
    scores = data.head_scores(ctx.con, ctx.name).to_pandas()
    row = scores[(scores["layer"] == layer) & (scores["head"] == head)]
    st.markdown("#### Scores")
    if row.empty:
        st.info(stage_hint(ctx, "score") or "No scores for this head.")
        return
    values = row.drop(columns=["layer", "head"]).iloc[0]
    table = pd.DataFrame({"score": values.index, "value": [_fmt(v) for v in values]})
    st.dataframe(table, hide_index=True, width="stretch")


def _fmt(value) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)


def top_images_section(ctx: RunContext, layer: int, head: int, picks: pd.DataFrame) -> None:
    st.markdown("#### Top dataset images")
    options = {"text": "its top TEXTSPAN text", "pc": "its first principal direction"}
    if picks.empty:
        options.pop("text")
    urlstate.seed("head.dir", "dir", valid=lambda v: v in options)
    how = st.radio("Rank images by the projection of the head's vector onto", list(options), key="head.dir",
                   format_func=options.get, horizontal=True)
    urlstate.publish("dir", how)
    try:
        m = state.head_matrix(ctx.cat, ctx.name, layer, head)
    except InterpretError as e:
        fail(e)
    coverage_note(ctx, m, head_name(layer, head))
    if how == "text":
        frame, emb = state.text_table(ctx.cat, ctx.name)
        top = picks.iloc[0]
        found = frame.index[frame["text_id"] == top["text_id"]]
        if not len(found):
            fail(InterpretError(f"run {ctx.name!r}: text {top['text_id']} of {head_name(layer, head)}'s picks is "
                                f"not in {schema.TEXTS_FILE} ({len(frame):,} texts). "
                                + repair_hint(ctx.cat.health.get(ctx.name), ctx.path, schema.TEXTS_FILE)))
        direction = emb[found[0]]  # [D]
        rows, proj = analysis.top_along(m.vectors, direction, 12)
        st.caption(f"Images whose r[{layer},{head}] points furthest along the text **“{top['text']}”** "
                   "(dot product with its normalised embedding): what this head adds toward that text.")
    else:
        direction = state.principal_direction(ctx.cat, ctx.name, layer, head)
        rows, proj = analysis.top_along(m.vectors, direction, 12, centred=True, mean=m.mean)
        st.caption("Images with the largest projection of the centred r[l,h] onto the head's first principal "
                   "direction (the direction of most variance; its sign is chosen so the longer tail is positive).")
    thumbnail_grid(ctx, m.ids[rows], [f"#{i} · {p:.3g}" for i, p in zip(m.ids[rows], proj)])


def override_form(ctx: RunContext, label: dict | None, layer: int, head: int, properties: list[str]) -> None:
    """Correct this head's label: written to the run's overrides file, honoured by `clip-interpret label`."""
    with st.expander("Correct this label"), st.form("head.override", clear_on_submit=True):
        choices = sorted(set(properties) - {MIXED}) + [MIXED]
        current = label["property"] if label else None
        prop = st.selectbox("Property", choices, index=choices.index(current) if current in choices else 0)
        new = st.text_input("…or a new property name")
        author = st.text_input("Your name")
        note = st.text_input("Why (optional)")
        if st.form_submit_button("Save override"):
            chosen = new.strip() or prop
            try:
                write_override(Path(ctx.path) / schema.LABEL_OVERRIDES_FILE, layer, head, chosen,
                               author.strip() or None, note.strip() or None)
            except (InterpretError, OSError) as e:
                fail(InterpretError(f"could not save the override: {e}"))
            st.session_state[SAVED] = f"Saved: {head_name(layer, head)} → {chosen}."
            st.rerun()
