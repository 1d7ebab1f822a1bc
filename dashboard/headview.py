"""The head explorer's sections: label with provenance, ground truth and correction history; the permalink and
links into every analysis; TEXTSPAN texts; scores; the form that corrects a label. Streamlit code; the page
composes these with ``headprobe``'s sections along the head's direction (histogram, images, maps, test box).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, data, glossary, urlstate
from dashboard.widgets import PAGES, RunContext, download_csv, fail, stage_hint
from precompute import overrides, schema
from precompute.errors import InterpretError
from precompute.labels import MIXED, head_name

SAVED = "head.saved"  # a message to show once after a correction was written


def all_heads(ctx: RunContext) -> list[tuple[int, int]]:
    return [(layer, h) for layer in ctx.layers for h in range(ctx.heads)]


def step(ctx: RunContext, prefix: str, layer: int, head: int, delta: int) -> None:
    """Button callback: select the previous (-1) or next (+1) head, wrapping around."""
    heads = all_heads(ctx)
    layer, head = heads[(heads.index((layer, head)) + delta) % len(heads)]
    st.session_state[f"{prefix}.layer"], st.session_state[f"{prefix}.head"] = layer, head


def history_file(ctx: RunContext) -> Path:
    return Path(ctx.path) / schema.LABEL_OVERRIDES_FILE


def head_label(ctx: RunContext, layer: int, head: int) -> tuple[pd.DataFrame, dict | None]:
    """(every head's label, corrections applied; this head's row or None)."""
    labels = data.head_labels(ctx.con, ctx.name).to_pandas()
    row = labels[(labels["layer"] == layer) & (labels["head"] == head)]
    return labels, (row.iloc[0].to_dict() if not row.empty else None)


def score_row(ctx: RunContext, layer: int, head: int) -> dict | None:
    scores = data.head_scores(ctx.con, ctx.name).to_pandas()
    row = scores[(scores["layer"] == layer) & (scores["head"] == head)]
    return row.iloc[0].to_dict() if not row.empty else None


def _present(value) -> bool:
    return value is not None and not (not isinstance(value, str) and pd.isna(value))


# --------------------------------------------------------------------------- label, provenance, history


def label_section(ctx: RunContext, label: dict | None, scores: dict | None, layer: int, head: int) -> None:
    if label is None:
        st.subheader(head_name(layer, head))
        st.info(stage_hint(ctx, "label") or f"{head_name(layer, head)} has no label in this run.")
        return
    st.subheader(f"{head_name(layer, head)} · {label['property']}")
    assoc = label.get("association")
    st.markdown(f"Labelled **{label['property']}** by the **{label['labeller']}** labeller"
                + (f"; association {assoc:.2f} ({int(label['ccs5'])} of its top 5 texts carry it)."
                   if _present(assoc) else "."))
    if label.get("stale"):
        st.warning(f"**Corrected** from **{label['stored_property']}** to **{label['property']}**, shown on every "
                   "page at once. The association, CCS and scores are of the old label until "
                   f"`clip-interpret label --out {ctx.path}` and `clip-interpret score --out {ctx.path}` rerun.",
                   icon=":material/history:")
    elif label.get("label_source") == overrides.SOURCE_OVERRIDE:
        st.caption(f"Confirmed by a correction in `{schema.LABEL_OVERRIDES_FILE}` (the same property as the "
                   "labeller's, so the scores stand).")
    elif label["labeller"] == "manual":
        st.caption(f"This label comes from a correction the label stage applied (`{schema.LABEL_OVERRIDES_FILE}`).")
    ground_truth(label, scores)
    with st.expander("Provenance (who or what made this label)"):
        try:
            st.json(json.loads(label["provenance"]))
        except (TypeError, ValueError):
            st.code(str(label["provenance"]))


def ground_truth(label: dict, scores: dict | None) -> None:
    """The probe set's verdict where it has attributes: the attribute that best separates the head's vectors."""
    if scores is None or not _present(scores.get("best_attribute")):
        return
    best, r2 = scores["best_attribute"], scores.get("best_attribute_r2")
    if label["property"] == MIXED:
        verdict = "the head is labelled mixed, so there is nothing to compare"
    elif label["property"].strip().lower() == str(best).strip().lower():
        verdict = "the label **agrees**"
    else:
        verdict = "the label **disagrees**"
    st.markdown(f"Ground truth (the probe set's attributes): the attribute whose values best separate this head's "
                f"vectors is **{best}**" + (f" (R² {r2:.2f})" if _present(r2) else "") + f"; {verdict}.")


def history_section(ctx: RunContext, layer: int, head: int) -> None:
    """Every correction of this head, newest first (the latest is the one shown)."""
    try:
        rows = overrides.head_history(overrides.read_history(history_file(ctx)), layer, head)
    except (InterpretError, OSError) as e:
        st.warning(f"The corrections file cannot be read: {e}")
        return
    st.markdown("#### Correction history")
    if not rows:
        st.caption(f"No correction of {head_name(layer, head)} yet.")
        return
    st.dataframe(pd.DataFrame({"time (UTC)": [c.time or "(before the history)" for c in rows],
                               "property": [c.property for c in rows], "author": [c.author or "" for c in rows],
                               "note": [c.note or "" for c in rows]}), hide_index=True, width="stretch")
    st.caption("Newest first; the newest is the head's label. Every correction is kept "
               f"(`{schema.LABEL_OVERRIDES_FILE}` in the run folder).")


def override_form(ctx: RunContext, label: dict | None, layer: int, head: int, properties: list[str]) -> None:
    """Correct this head's label: one more row of the run's correction history, shown at once on every page."""
    with st.expander("Correct this label"), st.form("head.override", clear_on_submit=True):
        choices = sorted(set(properties) - {MIXED}) + [MIXED]
        current = label["property"] if label else None
        how = st.radio("New label", ["existing", "new"], key="head.override.how", horizontal=True,
                       format_func={"existing": "a property from the list", "new": "a new property name"}.get)
        prop = st.selectbox("Property from the list", choices,
                            index=choices.index(current) if current in choices else 0)
        new = st.text_input("New property name", help="Used only when 'a new property name' is chosen above.")
        author = st.text_input("Your name")
        note = st.text_input("Why (optional)")
        if st.form_submit_button("Save correction"):
            if how == "new" and not new.strip():
                st.error("Type the new property name, or choose 'a property from the list'.")
                return
            chosen = new.strip() if how == "new" else prop
            try:
                overrides.append_correction(history_file(ctx), layer, head, chosen, author.strip() or None,
                                            note.strip() or None)
            except (InterpretError, OSError) as e:
                fail(InterpretError(f"could not save the correction: {e}"))
            st.session_state[SAVED] = f"Saved: {head_name(layer, head)} → {chosen}."
            st.rerun()


# --------------------------------------------------------------------------- permalink and analyses


def permalink(ctx: RunContext, layer: int, head: int) -> str:
    """This head's URL: the page's address in the browser with run, layer and head (nothing else)."""
    url = st.context.url or "http://localhost:8501/head"
    parts = urlsplit(url)
    path = parts.path if parts.path.endswith("/head") else parts.path.rstrip("/") + "/head"
    query = urlencode({"run": ctx.name, "layer": layer, "head": head})
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def links_section(ctx: RunContext, label: dict | None, layer: int, head: int) -> None:
    """One permalink, and a link that opens each analysis on this head."""
    st.caption("Permalink to this head (copy it with the button at its right):")
    st.code(permalink(ctx, layer, head), language=None)
    one = {"run": ctx.name, "layer": str(layer), "head": str(head)}
    links = [("image_nn.py", "4 · Image neighbours", one), ("text_nn.py", "5 · Text neighbours", one),
             ("topic_map.py", "2 · Topic map", {**one, "heads": "one"}),
             ("contrastive.py", "3 · Contrastive map", {**one, "heads": "one"}),
             ("head_grid.py", "All heads' maps", {"run": ctx.name})]
    if label is not None and label["property"] != MIXED:
        links.insert(0, ("property_nn.py", f"1 · Property neighbours ({label['property']})",
                         {"run": ctx.name, "prop": label["property"]}))
    per_row = 3  # labels stay whole in the main column's width
    for start in range(0, len(links), per_row):
        for col, (page, title, params) in zip(st.columns(per_row), links[start:start + per_row]):
            col.page_link(PAGES / page, label=title, query_params=params, icon=":material/open_in_new:")


# --------------------------------------------------------------------------- texts and scores


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


def scores_section(ctx: RunContext, label: dict | None, scores: dict | None) -> None:
    st.markdown("#### Scores")
    if scores is None:
        st.info(stage_hint(ctx, "score") or "No scores for this head.")
        return
    values = {k: v for k, v in scores.items() if k not in ("layer", "head")}
    table = pd.DataFrame({"score": [glossary.title(k) for k in values], "value": [_fmt(v) for v in values.values()],
                          "meaning": [glossary.help_text(k) or "" for k in values]})
    st.dataframe(table, hide_index=True, width="stretch")
    if label is not None and scores.get("property") != label["property"]:
        st.caption(f"**Stale:** these scores are of the label **{scores.get('property')}**; the head is now "
                   f"labelled **{label['property']}**. Rerun `clip-interpret label --out {ctx.path}` and "
                   f"`clip-interpret score --out {ctx.path}`.")


def _fmt(value) -> str:
    if not _present(value):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)
