"""The head explorer's sections: label with provenance, ground truth and correction history; the permalink and
links into every analysis; TEXTSPAN texts; scores; the projection's histogram with top and bottom images, paged;
patch maps of the top images; a live test box; the form that corrects a label. Streamlit code; the page composes
these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, data, glossary, imagesource, overlay, state, urlstate
from dashboard.widgets import (PAGES, RunContext, coverage_note, download_csv, fail, image_link, repair_hint,
                               stage_hint, thumbnail_grid)
from precompute import analysis, overrides, schema
from precompute.errors import InputError, InterpretError
from precompute.labels import MIXED, head_name

SAVED = "head.saved"  # a message to show once after a correction was written
PER_PAGE = 24  # top and bottom images per page
MAPS = 8  # patch maps of the first MAPS top images of the page (one forward pass each)
_MAPS = "head._maps"  # session: rendered maps by (run key, head, direction, image ids)


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


# --------------------------------------------------------------------------- the head's direction


@dataclass(frozen=True)
class Direction:
    """What the head's images are ranked by: a unit direction [D] and every image's projection on it."""

    how: str  # 'text' | 'pc'
    unit: np.ndarray  # [D]
    centred: bool  # projections of r - mean (the principal direction) or of r itself (a text)
    values: np.ndarray  # [n] projection of each row of ``m``
    title: str  # the histogram's axis
    caption: str

    def project(self, vector: np.ndarray, mean: np.ndarray) -> float:
        """Where one head vector [D] (an upload's, say) lands on the same axis."""
        v = np.asarray(vector, np.float32) - (np.asarray(mean, np.float32) if self.centred else 0.0)
        return float(v @ self.unit)


def direction(ctx: RunContext, m: state.HeadMatrix, layer: int, head: int, picks: pd.DataFrame) -> Direction:
    options = {"text": "its top TEXTSPAN text", "pc": "its first principal direction"}
    if picks.empty:
        options.pop("text")
    urlstate.seed("head.dir", "dir", valid=lambda v: v in options)
    how = st.radio("Rank images by the projection of the head's vector onto", list(options), key="head.dir",
                   format_func=options.get, horizontal=True)
    urlstate.publish("dir", how)
    if how == "text":
        frame, emb = state.text_table(ctx.cat, ctx.name)
        top = picks.iloc[0]
        found = frame.index[frame["text_id"] == top["text_id"]]
        if not len(found):
            fail(InterpretError(f"run {ctx.name!r}: text {top['text_id']} of {head_name(layer, head)}'s picks is "
                                f"not in {schema.TEXTS_FILE} ({len(frame):,} texts). "
                                + repair_hint(ctx.cat.health.get(ctx.name), ctx.path, schema.TEXTS_FILE)))
        unit = _unit(emb[found[0]])  # [D]
        return Direction("text", unit, False, analysis.matvec(m.vectors, unit),
                         f"r[{layer},{head}] · “{top['text']}”",
                         f"Images whose r[{layer},{head}] points furthest along the text **“{top['text']}”** (dot "
                         "product with its normalised embedding): what this head adds toward that text.")
    unit = _unit(state.principal_direction(ctx.cat, ctx.name, layer, head))  # [D]
    values = analysis.matvec(m.vectors, unit) - float(m.mean @ unit)  # [n], centred
    return Direction("pc", unit, True, values, f"(r[{layer},{head}] − mean) · principal direction",
                     "Images with the largest projection of the centred r[l,h] onto the head's first principal "
                     "direction (the direction of most variance; its sign is chosen so the longer tail is "
                     "positive).")


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def histogram(d: Direction, marks: pd.DataFrame | None = None):
    return charts.projection_histogram(d.values, marks, title=d.title)


def images_section(ctx: RunContext, m: state.HeadMatrix, d: Direction, layer: int, head: int) -> list[int]:
    """Top and bottom images along the direction, PER_PAGE a page; returns the ids of the page's top images."""
    n = len(m.ids)
    pages = max(1, -(-n // PER_PAGE))
    page = int(st.number_input(f"Page (of {pages:,}; {PER_PAGE} images each way)", 1, pages, 1,
                               key="head.page")) if pages > 1 else 1
    order = np.argsort(-d.values, kind="stable")  # [n], largest first
    lo, hi = (page - 1) * PER_PAGE, min(page * PER_PAGE, n)
    top, bottom = order[lo:hi], order[::-1][lo:hi]
    st.caption(d.caption)
    st.markdown(f"#### Top images, ranks {lo + 1}–{hi} of {n:,}")
    thumbnail_grid(ctx, m.ids[top], [f"#{i} · {p:.3g}" for i, p in zip(m.ids[top], d.values[top])])
    st.markdown(f"#### Bottom images, ranks {lo + 1}–{hi} from the end")
    thumbnail_grid(ctx, m.ids[bottom], [f"#{i} · {p:.3g}" for i, p in zip(m.ids[bottom], d.values[bottom])])
    with st.expander("These images as a table (each id opens its image page)"):
        meta = state.image_table(ctx.cat, ctx.name).set_index("image_id")
        rows = [("top", lo + 1 + k, r) for k, r in enumerate(top)] + \
               [("bottom", lo + 1 + k, r) for k, r in enumerate(bottom)]
        ids = [int(m.ids[r]) for _, _, r in rows]
        table = pd.DataFrame({"end": [e for e, _, _ in rows], "rank": [k for _, k, _ in rows], "image_id": ids,
                              "label": [meta["label"].get(i) for i in ids],
                              "projection": [float(d.values[r]) for _, _, r in rows],
                              "open": [image_link(ctx.name, i) for i in ids]})
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={"open": st.column_config.LinkColumn("image page", display_text="open")})
    return [int(i) for i in m.ids[top]]


# --------------------------------------------------------------------------- patch maps and the test box

class LiveModel:
    """The run's live model for one script run (``imagesource.live_model``), asked for once however many sections
    need it, so its notes (why it is off; that a toy model knows only toy scenes) show once."""

    def __init__(self, ctx: RunContext):
        self.ctx, self.asked, self.bundle = ctx, False, None

    def get(self, purpose: str) -> state.ModelBundle | None:
        if not self.asked:
            self.asked, self.bundle = True, imagesource.live_model(self.ctx, purpose)
        return self.bundle


def _head_map(ctx: RunContext, bundle: state.ModelBundle, q: imagesource.QueryImage, unit: np.ndarray,
              layer: int, head: int):
    """(the crop the model saw, this head's [g, g] patch map along ``unit``) of one image, decomposed live."""
    li = imagesource.live_image(ctx, bundle, q)
    return li, analysis.head_maps(li, unit)[li.layers.index(layer), head]  # [g, g]


def maps_section(ctx: RunContext, live: LiveModel, d: Direction, layer: int, head: int, top_ids: list[int]) -> None:
    """On demand: where in each of the page's first top images the head writes along the direction."""
    st.markdown("#### Patch maps of the top images")
    urlstate.seed("head.maps", "maps", parse=lambda v: v == "1")
    shown = st.toggle(f"Show this head's patch maps on the first {min(MAPS, len(top_ids))} top images",
                      key="head.maps", help="A forward pass per image through the run's model.")
    urlstate.publish("maps", "1" if shown else None)
    if not shown:
        return
    bundle = live.get("a patch map")
    if bundle is None:
        return
    ids = tuple(top_ids[:MAPS])
    key = (ctx.cat.keys[ctx.name], layer, head, d.how, ids)
    done = st.session_state.setdefault(_MAPS, {})
    if key not in done:
        with st.spinner(f"Decomposing {len(ids)} images ..."):
            found = [_head_map(ctx, bundle, imagesource.QueryImage("dataset", f"image {i}", image_id=i), d.unit,
                               layer, head) for i in ids]
        scale = overlay.symmetric_scale(*(g for _, g in found))
        done.clear()  # one head's maps per session: they are PNGs of a few kB each, but pages add up
        done[key] = ([overlay.overlay(li.view, g, scale) for li, g in found], scale)
    shown, scale = done[key]
    st.image(shown, caption=[f"#{i}" for i in ids], width=100)
    st.image(overlay.colour_bar(520, scale, "patch term · direction (red: along it)"))
    st.caption(f"Each patch's term of {head_name(layer, head)} dotted with the ranking direction, on one scale "
               f"(±{scale:.3g}) for all the images; the patches' sum plus the class token's term is the projection "
               "the images are ranked by (uncentred).")


def test_section(ctx: RunContext, live: LiveModel, m: state.HeadMatrix, d: Direction, layer: int, head: int,
                 hist) -> None:
    """Type a text or pick an image (a dataset image or an upload) and see where it lands in the histogram."""
    st.markdown("#### Test the head")
    marks = []
    text = urlstate.text_input("A text", key="head.t", param="t", placeholder="e.g. a red shape")
    bundle = live.get("the test box") if text else None
    if text and bundle is not None:
        t = state.text_embedding(bundle, text)  # [D], normalised
        near = analysis.top_k(analysis.similarities(t, m.vectors), 8)[0]  # analysis 5: r . t, best first
        where = float(np.median(d.values[near]))
        pct = float(np.mean(d.values <= where)) * 100
        marks.append({"what": f"“{text}”", "value": where})
        st.markdown(f"“{text}” · cosine with the ranking direction **{float(t @ d.unit):+.3f}**. The 8 images "
                    f"{head_name(layer, head)} writes most toward it (analysis 5) sit at a median projection of "
                    f"**{where:.3g}**, the **{_ordinal(pct)} percentile** of the probe set (the red rule).")
        thumbnail_grid(ctx, m.ids[near], [f"#{i}" for i in m.ids[near]], width=70)
    q = imagesource.image_picker(ctx, "headtest")
    value = None
    if q.is_dataset:
        row = m.row_of(q.image_id)
        if row is None:
            st.warning(f"{head_name(layer, head)} has no vector for image {q.image_id}.")
        else:
            value = float(d.values[row])  # the run's own vector: no model needed
    show_map = not q.is_dataset or st.toggle("Show its patch map", key="head.test.map")
    bundle = live.get("a map of the test image") if show_map else None
    if bundle is not None:
        li, grid = _head_map(ctx, bundle, q, d.unit, layer, head)
        if not q.is_dataset:
            value = d.project(li.head_vector(layer, head), m.mean)  # decomposed live, on the same axis
        scale = overlay.symmetric_scale(grid)
        st.image(overlay.render_png([(f"{head_name(layer, head)} on {q.name}", li.view, grid)], scale,
                                    "patch term · direction (red: along it)"))
    if value is not None:
        marks.append({"what": q.name, "value": value})
        pct = float(np.mean(d.values <= value)) * 100
        st.markdown(f"{q.name} · projection **{value:.3g}**, the **{_ordinal(pct)} percentile** of the probe set "
                    "(the red rule).")
    if marks:
        hist.altair_chart(histogram(d, pd.DataFrame(marks)), width="stretch")


def _ordinal(pct: float) -> str:
    n = int(round(pct))
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def head_matrix(ctx: RunContext, layer: int, head: int) -> state.HeadMatrix:
    try:
        m = state.head_matrix(ctx.cat, ctx.name, layer, head)
    except InterpretError as e:
        fail(e)
    coverage_note(ctx, m, head_name(layer, head))
    if not len(m.ids):
        fail(InputError(f"run {ctx.name!r}: {head_name(layer, head)} has no vectors"))
    return m
