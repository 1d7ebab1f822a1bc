"""UI pieces the pages share: the current run, head pickers, k, result grids, downloads, errors.

Streamlit code, but no caching (that is ``state``), no SQL (queries come from ``data``) and no math
(``analysis``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from dashboard import data, exports, hints, settings, state, urlstate
from precompute import verify
from precompute.errors import InterpretError
from precompute.labels import head_name

RUN_KEY = "run"  # the sidebar's run picker (app.py): shared by every page
PAGES = Path(__file__).resolve().parent / "app_pages"


def data_dir() -> str:
    """``--data-dir`` after ``--``, else $CLIP_INTERPRET_DATA_DIR, else ./runs."""
    return str(settings.resolve_data_dir(sys.argv[1:], os.environ))


def fail(error: Exception) -> None:
    """Show a domain error as the page's message and stop the page (never a stack trace).

    A damaged file's message also names the command that repairs its run.
    """
    text = str(error)
    if isinstance(error, data.DamagedFileError):
        cat = _catalog_or_none()
        text += ". " + repair_hint(cat.health.get(error.run) if cat else None, error.run_dir, error.file)
    st.error(text)
    st.stop()


def _catalog_or_none() -> state.Catalog | None:
    try:
        return state.catalog(data_dir())
    except InterpretError:
        return None


def repair_hint(health: verify.Health | None, run_dir: str, file: str | None = None) -> str:
    """'Repair the run with `...`': the health check's command, else the one that redoes ``file``'s stage."""
    command = health.repair_command() if health is not None else ""
    if not command:
        manifest = (health.manifest if health is not None else None) or {}
        command = verify.repair_command(Path(run_dir), manifest, [verify.stage_of(file)] if file else [])
    return f"Repair the run with `{command}` (it redoes only what is damaged and what was computed from it)."


def health_line(cat: state.Catalog, name: str) -> None:
    """The run's health: a caption when the cheap check passes, else a warning naming the damaged files and the
    command that repairs them."""
    health = cat.health.get(name)
    if health is None:
        return
    if health.ok:
        st.caption(f"Health: {health.summary()}")
        return
    lines = "\n".join(f"- `{p.path}` {p.detail}" for p in health.problems[:8])
    more = f"\n- ... and {len(health.problems) - 8:,} more" if len(health.problems) > 8 else ""
    st.warning(f"**Run {name} is damaged**: {health.summary()}.\n\n{lines}{more}\n\n"
               + repair_hint(health, str(health.run_dir)), icon=":material/report:")


def runs_health(cat: state.Catalog) -> None:
    """The sidebar's health line: every run checks out, or which runs are damaged and which were skipped."""
    damaged, skipped = cat.damaged(), sorted(cat.skipped)
    if not damaged and not skipped:
        st.sidebar.caption(f"Health: all {len(cat.runs)} run{'s' if len(cat.runs) != 1 else ''} check out "
                           "(sizes, footers, coverage).")
        return
    lines = [f"- **{n}**: {cat.health[n].summary()}" for n in damaged]
    lines += [f"- **{n}** (not shown): {cat.skipped[n]}" for n in skipped]
    fine = len(cat.runs) - len(damaged)
    st.sidebar.warning("Damaged runs:\n" + "\n".join(lines) + (f"\n\n{fine:,} other run{'s' if fine != 1 else ''} "
                       "check out." if fine else ""), icon=":material/report:")


def linked_run_missing(cat: state.Catalog) -> str | None:
    """The run a just-opened link names when there is no such run to show (call before ``run_picker``)."""
    asked = st.query_params.get("run")
    if asked is None or asked in cat.runs or not urlstate.is_new("run", asked):
        return None
    return asked


def refuse_run_link(cat: state.Catalog, asked: str) -> None:
    """Say why the link's run cannot be shown, instead of silently showing another one, and stop the page."""
    if asked in cat.skipped:
        why = f"it was skipped: {cat.skipped[asked]}"
    else:
        why = f"there is no run of that name under `{cat.data_dir}` (runs: {', '.join(sorted(cat.runs))})"
    st.error(f"The link names run **{asked}**, which cannot be shown: {why}. Choose a run in the sidebar.")
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
    damaged = set(cat.damaged())
    return urlstate.selectbox("Run", names, key=RUN_KEY, param="run", container=st.sidebar,
                              format_func=lambda n: f"{n}  ({cat.runs[n]['architecture']})"
                                                    + ("  · damaged" if n in damaged else ""),
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
    health_line(ctx.cat, ctx.name)
    need_stage(ctx, needs)
    return ctx


def head_picker(ctx: RunContext, prefix: str, container=st) -> tuple[int, int]:
    """Layer and head selectors (permalink ``layer``, ``head``)."""
    if not ctx.layers or not ctx.heads:
        fail(InterpretError(f"run {ctx.name!r} lists no analysed layers or heads in its manifest"))
    left, right = container.columns(2)
    layer = urlstate.selectbox("Layer", ctx.layers, key=f"{prefix}.layer", param="layer", parse=int, container=left)
    named = head_labels_of(ctx)
    head = urlstate.selectbox("Head", list(range(ctx.heads)), key=f"{prefix}.head", param="head", parse=int,
                              container=right, format_func=lambda h: head_choice(int(layer), h, named))
    return int(layer), int(head)


def head_labels_of(ctx: RunContext) -> dict[tuple[int, int], str]:
    """(layer, head) -> property label, corrections applied; {} for a run not labelled yet (or unreadable)."""
    if "label" not in ctx.stages:
        return {}
    try:
        frame = data.head_labels(ctx.con, ctx.name).to_pandas()
    except InterpretError:
        return {}
    return {(int(l), int(h)): str(p) for l, h, p in zip(frame["layer"], frame["head"], frame["property"])}


def head_choice(layer: int, head: int, named: dict[tuple[int, int], str]) -> str:
    """How a head reads in a picker: 'L7.H0 · pattern' (its label, where it has one)."""
    label = named.get((int(layer), int(head)))
    return head_name(layer, head) + (f" · {label}" if label else "")


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


def similarity_choice(prefix: str) -> str:
    """The neighbour similarity (``analysis.SIMILARITIES``: centred, the default; cosine; dot), permalink ``sim``."""
    from precompute.analysis import DEFAULT_SIMILARITY, SIMILARITIES

    urlstate.seed(f"{prefix}.sim", "sim", valid=lambda v: v in SIMILARITIES)
    value = st.radio("Similarity", list(SIMILARITIES), key=f"{prefix}.sim", horizontal=True,  # the first: centred
                     help="\n".join(f"- **{k}**: {v}" for k, v in SIMILARITIES.items()))
    urlstate.publish("sim", None if value == DEFAULT_SIMILARITY else value)
    return value


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


def file_stem(*parts: object) -> str:
    """A download's file name (no extension) that says what it holds: the analysis, run, image, text, heads.

    ``file_stem("topic-map", "toy-l", "image 42", "a red shape", "L7.H0")`` ->
    ``topic-map_toy-l_image-42_a-red-shape_L7.H0``; characters a file system or a shell dislikes become '-'.
    """
    cleaned = [re.sub(r"[^A-Za-z0-9.+=]+", "-", str(p)).strip("-.") for p in parts if p not in (None, "")]
    return "_".join(c for c in cleaned if c)[:150] or "download"


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


def each_run(cat: state.Catalog, read) -> dict:
    """run name -> ``read(con, run)`` for every run, in name order; a run whose file is damaged gets a warning
    naming it (and the repair command) and is left out, so one damaged run does not stop a page about all runs."""
    out = {}
    for name in sorted(cat.runs):
        try:
            out[name] = read(cat.con, name)
        except data.DamagedFileError as e:
            st.warning(f"{e}. " + repair_hint(cat.health.get(name), e.run_dir, e.file), icon=":material/report:")
    return out


def coverage_note(ctx: RunContext, m: state.HeadMatrix, what: str) -> None:
    """A warning where neighbours are shown when ``what`` (a head, or a property's heads) covers fewer images than
    the run has: the search runs over those only."""
    total = len(state.image_table(ctx.cat, ctx.name))
    if len(m.ids) >= total:
        return
    st.warning(f"{what} covers {len(m.ids):,} of {total:,} images (a head vector file is missing or unreadable): "
               "neighbours are searched among those only. " + repair_hint(ctx.cat.health.get(ctx.name), ctx.path),
               icon=":material/report:")


def covered_row(ctx: RunContext, m: state.HeadMatrix, image_id: int, what: str) -> int:
    """The row of a dataset image in ``m``; stops the page when ``what`` does not cover that image."""
    row = m.row_of(image_id)
    if row is None:
        fail(InterpretError(f"run {ctx.name!r}: {what} has no vector for image {image_id} (it covers "
                            f"{len(m.ids):,} of the run's images); choose another image. "
                            + repair_hint(ctx.cat.health.get(ctx.name), ctx.path)))
    return row


def show_neighbours(ctx: RunContext, frame: pd.DataFrame, file_stem: str, key: str) -> None:
    """Result thumbnails, the table (with the probe set's ground truth and a link to each image's page), and
    its CSV download."""
    captions = [f"#{r.image_id} · {r.label or ''} · {r.score:.3g}" for r in frame.itertuples()]
    thumbnail_grid(ctx, frame["image_id"], captions)
    shown = frame.assign(image=[image_link(ctx.name, i) for i in frame["image_id"]])
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "image": st.column_config.LinkColumn("image", display_text="open", help="the image's page"),
        "score": st.column_config.NumberColumn("score", format="%.4g")})
    download_csv(frame, "Download CSV", f"{file_stem}.csv", key=f"{key}.csv")


def image_link(run: str, image_id: int) -> str:
    """A relative link to the image page of one dataset image (for ``st.column_config.LinkColumn``)."""
    return f"image?{urlencode({'run': run, 'img': int(image_id)})}"


def stale_labels_note(name: str, labels: pd.DataFrame) -> None:
    """A caption naming the heads whose label was corrected since the score stage ran: their scores are of the
    old label until ``clip-interpret label`` and ``score`` rerun (``precompute.overrides.apply_to_labels``)."""
    if "stale" not in labels or not labels["stale"].any():
        return
    stale = labels[labels["stale"].astype(bool)]
    heads = ", ".join(f"{head_name(int(r.layer), int(r.head))} → {r.property}" for r in stale.itertuples())
    st.caption(f"Run **{name}**: corrected label{'s' if len(stale) > 1 else ''} {heads}, shown at once; "
               "association, CCS and the model scores are of the old label until `clip-interpret label` and "
               "`clip-interpret score` rerun.")
