"""The head explorer's sections along the head's direction: the projection's histogram with top and bottom images,
paged; patch maps of the top images; the live test box (a text or an image against the head). Streamlit code;
``app_pages/head.py`` composes these with ``headview``'s label, texts and scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, imagesource, overlay, state, urlstate
from dashboard.widgets import RunContext, coverage_note, fail, image_link, repair_hint, thumbnail_grid
from precompute import analysis, schema
from precompute.errors import InputError, InterpretError
from precompute.labels import head_name

PER_PAGE = 24  # top and bottom images per page
MAPS = 8  # patch maps of the first MAPS top images of the page (one forward pass each)
_MAPS = "head._maps"  # session: rendered maps by (run key, head, direction, image ids)


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
