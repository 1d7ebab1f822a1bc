"""UI pieces the pages share: the current run, head pickers, k, result grids, downloads, errors.

Streamlit code, but no caching (that is ``state``), no SQL (queries come from ``data``) and no math
(``analysis``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import data, exports, hints, settings, state, urlstate
from precompute.errors import InterpretError
from precompute.labels import head_name

RUN_KEY = "run"  # the sidebar's run picker (app.py): shared by every page
PAGES = Path(__file__).resolve().parent / "app_pages"


def data_dir() -> str:
    """``--data-dir`` after ``--``, else $CLIP_INTERPRET_DATA_DIR, else ./runs."""
    return str(settings.resolve_data_dir(sys.argv[1:], os.environ))


def fail(error: Exception) -> None:
    """Show a domain error as the page's message and stop the page (never a stack trace)."""
    st.error(str(error))
    st.stop()


def open_head(run: str, layer: int, head: int) -> None:
    """Go to the head explorer, showing this head of this run."""
    st.switch_page(PAGES / "head.py", query_params={"run": run, "layer": str(layer), "head": str(head)})


@dataclass(frozen=True)
class RunContext:
    """The run the sidebar has chosen, with its manifest facts."""

    cat: state.Catalog
    name: str

    @property
    def row(self) -> dict:
        return self.cat.runs[self.name]

    @cached_property
    def manifest(self) -> dict:
        return json.loads(self.row["manifest"])

    @property
    def path(self) -> str:
        return self.row["path"]

    @property
    def layers(self) -> list[int]:
        return list(self.row["layers"] or [])

    @property
    def heads(self) -> int:
        return int(self.row["heads"] or 0)

    @property
    def stages(self) -> list[str]:
        return list(self.row["stages"] or [])

    @property
    def con(self):
        return self.cat.con

    def describe(self) -> str:
        return f"{self.row['architecture']} · {self.row['pretrained']}"


def run_picker(cat: state.Catalog) -> str:
    """The sidebar's run selector (permalink ``run``)."""
    names = sorted(cat.runs)
    return urlstate.selectbox("Run", names, key=RUN_KEY, param="run", container=st.sidebar,
                              format_func=lambda n: f"{n}  ({cat.runs[n]['architecture']})",
                              help="Every run found under the data folder; one model each.")


def current_run() -> RunContext:
    """The chosen run; stops the page with the error when the runs cannot be read."""
    try:
        cat = state.catalog(data_dir())
    except InterpretError as e:
        fail(e)
    name = st.session_state.get(RUN_KEY)
    if name not in cat.runs:
        name = sorted(cat.runs)[0]
    return RunContext(cat, name)


def stage_hint(ctx: RunContext, stage: str) -> str | None:
    return hints.stage_hint(ctx.name, ctx.manifest, ctx.path, ctx.stages, stage)


def need_stage(ctx: RunContext, stage: str) -> None:
    """Stop the page with the command that adds ``stage`` when the run lacks it."""
    hint = stage_hint(ctx, stage)
    if hint:
        st.info(hint)
        st.stop()


def run_page(title: str, needs: str) -> RunContext:
    """The common top of a run's page: title, which run, and a stop with the command when ``needs`` is missing."""
    ctx = current_run()
    st.title(title)
    st.caption(f"Run **{ctx.name}** · {ctx.describe()}")
    need_stage(ctx, needs)
    return ctx


def head_picker(ctx: RunContext, prefix: str, container=st) -> tuple[int, int]:
    """Layer and head selectors (permalink ``layer``, ``head``)."""
    if not ctx.layers or not ctx.heads:
        fail(InterpretError(f"run {ctx.name!r} lists no analysed layers or heads in its manifest"))
    left, right = container.columns(2)
    layer = urlstate.selectbox("Layer", ctx.layers, key=f"{prefix}.layer", param="layer", parse=int, container=left)
    head = urlstate.selectbox("Head", list(range(ctx.heads)), key=f"{prefix}.head", param="head", parse=int,
                              container=right)
    return int(layer), int(head)


def head_set_picker(ctx: RunContext, prefix: str, default_mode: str = "one") -> tuple[list[tuple[int, int]], str]:
    """One head, or every head of chosen layers (permalink ``heads``, ``layer``/``head`` or ``layers``)."""
    modes = {"one": "One head", "layers": "All heads of chosen layers"}
    urlstate.seed(f"{prefix}.mode", "heads", valid=lambda v: v in modes)
    st.session_state.setdefault(f"{prefix}.mode", default_mode)
    mode = st.radio("Heads", list(modes), key=f"{prefix}.mode", format_func=modes.get, horizontal=True)
    urlstate.publish("heads", mode)
    if mode == "one":
        layer, head = head_picker(ctx, prefix)
        return [(layer, head)], head_name(layer, head)
    layers = urlstate.multiselect("Layers", ctx.layers, key=f"{prefix}.layers", param="layers",
                                  default=ctx.layers)
    if not layers:
        st.info("Choose at least one layer.")
        st.stop()
    chosen = [(layer, h) for layer in sorted(layers) for h in range(ctx.heads)]
    return chosen, f"all {len(chosen)} heads of layer{'s' if len(layers) > 1 else ''} " \
                   f"{', '.join(map(str, sorted(layers)))}"


def k_slider(prefix: str, default: int = 8, hi: int = 64) -> int:
    return urlstate.number("k (results)", key=f"{prefix}.k", param="k", lo=1, hi=hi, default=default)


def cosine_choice(prefix: str) -> bool:
    """Dot product (the paper's score: how much the head writes along the query) or cosine."""
    options = {"dot": "dot product", "cosine": "cosine"}
    urlstate.seed(f"{prefix}.sim", "sim", valid=lambda v: v in options)
    value = st.radio("Similarity", list(options), key=f"{prefix}.sim", format_func=options.get, horizontal=True,
                     help="Dot product ranks by how strongly the head writes along the query; cosine ignores "
                          "how strongly, only the direction.")
    urlstate.publish("sim", None if value == "dot" else value)
    return value == "cosine"


def thumbnail_grid(ctx: RunContext, image_ids, captions, per_row: int = 8, width: int = 110) -> None:
    """Thumbnails of dataset images, in rows, with captions."""
    ids = [int(i) for i in image_ids]
    if not ids:
        return
    try:
        thumbs = data.thumbnails(ctx.con, ctx.name, ids)
    except InterpretError as e:
        fail(e)
    shown = [(t, c) for t, c in zip(thumbs, captions) if t is not None]
    for start in range(0, len(shown), per_row):
        chunk = shown[start:start + per_row]
        st.image([t for t, _ in chunk], caption=[c for _, c in chunk], width=width)


def download_csv(frame, label: str, file_name: str, key: str) -> None:
    """A CSV of ``frame`` (a DataFrame or an Arrow table), built only when clicked (``dashboard.exports``)."""
    st.download_button(label, lambda: exports.to_csv(frame), file_name=file_name, mime="text/csv",
                       key=key, on_click="ignore")


def download_table(table, file_stem: str, key: str) -> None:
    """CSV and Parquet downloads of a result, each built only when clicked; a CSV too big for the server to
    format is refused in favour of Parquet (``exports.MAX_CSV_BYTES``)."""
    table = exports.as_table(table)
    csv_ok = exports.csv_allowed(table)
    left, right = st.columns(2)
    left.download_button("Download CSV", lambda: exports.to_csv(table), file_name=f"{file_stem}.csv",
                         mime="text/csv", key=f"{key}.csv", on_click="ignore", disabled=not csv_ok,
                         help=None if csv_ok else f"about {exports.estimated_csv_bytes(table) / 2**20:,.0f} MiB as "
                         f"CSV, over the {exports.MAX_CSV_BYTES // 2**20} MiB limit: download Parquet")
    right.download_button("Download Parquet", lambda: exports.to_parquet(table), file_name=f"{file_stem}.parquet",
                          mime="application/vnd.apache.parquet", key=f"{key}.parquet", on_click="ignore")


def show_neighbours(ctx: RunContext, frame: pd.DataFrame, file_stem: str, key: str) -> None:
    """Result thumbnails, the table, and its CSV download."""
    captions = [f"#{r.image_id} · {r.label or ''} · {r.score:.3g}" for r in frame.itertuples()]
    thumbnail_grid(ctx, frame["image_id"], captions)
    st.dataframe(frame, hide_index=True, width="stretch")
    download_csv(frame, "Download CSV", f"{file_stem}.csv", key=f"{key}.csv")
