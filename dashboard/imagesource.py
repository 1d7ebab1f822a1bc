"""The query image of an analysis (a dataset image by id, with thumbnails, or an upload) and the live model.

Streamlit code shared by the analysis pages. An upload is kept in the session
(``_upload``) so it follows the user from one analysis to the next; it is never
part of a permalink, a dataset image is (``img``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
from PIL import Image

from dashboard import data, live, state, upload, urlstate
from dashboard.widgets import RunContext, fail, thumbnail_grid
from precompute.errors import InputError

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"]
UPLOAD_MB = upload.MAX_UPLOAD_BYTES // 2**20
_UPLOAD = "_upload"  # session: {"name", "data", "digest"} of the last upload
BROWSE_PAGE = 24


@dataclass(frozen=True)
class QueryImage:
    kind: str  # 'dataset' | 'upload'
    name: str
    image_id: int | None = None  # dataset images only
    data: bytes | None = None  # upload bytes
    notes: list[str] = field(default_factory=list)

    @property
    def is_dataset(self) -> bool:
        return self.kind == "dataset"


def _use_image(key: str, image_id: int) -> None:
    st.session_state[key] = image_id


def _browse(ctx: RunContext, prefix: str, meta) -> None:
    """A page of thumbnails with a button under each that picks it."""
    pages = max(1, -(-len(meta) // BROWSE_PAGE))
    page = st.number_input("Page", 1, pages, 1, key=f"{prefix}.browse") if pages > 1 else 1
    rows = meta.iloc[(page - 1) * BROWSE_PAGE: page * BROWSE_PAGE]
    thumbs = data.thumbnails(ctx.con, ctx.name, rows["image_id"].tolist())
    cols = st.columns(6)
    for i, (row, thumb) in enumerate(zip(rows.itertuples(), thumbs)):
        with cols[i % 6]:
            if thumb is not None:
                st.image(thumb, width=90)
            st.button(f"#{row.image_id}", key=f"{prefix}.pick.{row.image_id}", on_click=_use_image,
                      args=(f"{prefix}.img", int(row.image_id)), help=f"{row.label or ''} {row.path}")


def _dataset_image(ctx: RunContext, prefix: str) -> QueryImage:
    meta = state.image_table(ctx.cat, ctx.name)
    if meta.empty:
        fail(InputError(f"run {ctx.name!r} has no images"))
    ids = set(int(i) for i in meta["image_id"])
    key = f"{prefix}.img"
    urlstate.seed(key, "img", int, valid=lambda v: v in ids)
    st.session_state.setdefault(key, int(meta["image_id"].iloc[0]))
    left, right = st.columns([1, 3])
    with left:
        image_id = int(st.number_input("Image id", int(meta["image_id"].min()), int(meta["image_id"].max()),
                                       key=key, step=1))
    if image_id not in ids:
        st.error(f"run {ctx.name!r} has no image {image_id}; ids run from {min(ids)} to {max(ids)} with gaps "
                 "where files were skipped")
        st.stop()
    urlstate.publish("img", image_id)
    row = meta[meta["image_id"] == image_id].iloc[0]
    with right:
        thumbnail_grid(ctx, [image_id], [f"#{image_id} · {row['label'] or ''} · {row['path']}"], width=140)
    with st.expander("Browse the run's images"):
        _browse(ctx, prefix, meta)
    return QueryImage("dataset", f"image {image_id}", image_id=image_id)


def _forget_upload() -> None:
    st.session_state.pop(_UPLOAD, None)


def _upload(prefix: str) -> QueryImage | None:
    got = st.file_uploader(f"Upload an image (up to {UPLOAD_MB} MB)", type=UPLOAD_TYPES, key=f"{prefix}.file",
                           max_upload_size=UPLOAD_MB)
    if got is not None:
        raw = got.getvalue()
        st.session_state[_UPLOAD] = {"name": got.name, "data": raw, "digest": hashlib.sha256(raw).hexdigest()}
    kept = st.session_state.get(_UPLOAD)
    if kept is None:
        st.info("Upload an image to analyse it, or switch to a dataset image.")
        st.stop()
    try:
        img, notes = upload.load_upload_with_notes(kept["data"])
    except InputError as e:
        st.session_state.pop(_UPLOAD, None)
        fail(InputError(f"{kept['name']}: {e}"))
    left, right = st.columns([1, 3])
    left.image(img, width=140)
    right.caption(f"Your upload **{kept['name']}** ({img.width}x{img.height}). Uploads stay in this browser "
                  "session and are not part of the page's link.")
    for note in notes:
        right.caption(note)
    if got is None:  # kept from an earlier page
        right.button("Forget this upload", key=f"{prefix}.forget", on_click=_forget_upload)
    return QueryImage("upload", kept["name"], data=kept["data"], notes=notes)


def image_picker(ctx: RunContext, prefix: str) -> QueryImage:
    """A dataset image (permalink ``img``) or an upload (permalink ``src=upload``)."""
    sources = {"dataset": "Dataset image", "upload": "Upload"}
    urlstate.seed(f"{prefix}.src", "src", valid=lambda v: v in sources)
    src = st.radio("Query image", list(sources), key=f"{prefix}.src", format_func=sources.get, horizontal=True)
    urlstate.publish("src", None if src == "dataset" else src)
    if src == "dataset":
        return _dataset_image(ctx, prefix)
    urlstate.publish("img", None)
    return _upload(prefix)


def live_model(ctx: RunContext, purpose: str, text_only: bool = False) -> state.ModelBundle | None:
    """The run's model, or None after an st.info saying why live analyses are off (browsing still works).

    A toy model gets a note of what it knows: images or, for a page that only embeds texts (``text_only``), words.
    """
    spec, why = state.model_spec(ctx.row)
    bundle = None
    if spec is not None:
        bundle, why = state.model_bundle(spec)
    if bundle is None:
        st.info(f"Live analyses are off for run **{ctx.name}** ({purpose} needs the model): {why}. "
                "Everything precomputed still works: rankings, the head explorer, search by words, and "
                "analyses 1 and 4 on dataset images.")
    elif toy_model(ctx):
        size = ctx.manifest.get("model", {}).get("image_size", 64)
        known = (f"was trained on the toy world's {size}-pixel synthetic scenes (shapes, colours, patterns, "
                 "backgrounds) and their captions, and knows nothing else.")
        beyond = ("A text outside that vocabulary gives it nothing it was trained to read: expect a ranking by "
                  "meaning to say little about it." if text_only else
                  "A real photo gives it nothing it was trained to read: expect its maps and neighbours to say "
                  "little about such an image.")
        st.caption(f":material/info: **{ctx.row.get('architecture')}** is a toy model: it {known} {beyond}")
    return bundle


def toy_model(ctx: RunContext) -> bool:
    """Whether the run's model is one of the toy world's (it knows only the generated scenes)."""
    from precompute.catalogue import TOY_WORLD, model_defaults

    return model_defaults(str(ctx.row.get("architecture") or "")).probe == TOY_WORLD.probe


def require_model(ctx: RunContext, purpose: str, text_only: bool = False) -> state.ModelBundle:
    bundle = live_model(ctx, purpose, text_only)
    if bundle is None:
        st.stop()
    return bundle


def pil_image(ctx: RunContext, q: QueryImage) -> tuple[Image.Image, str, list[str]]:
    """(RGB image, cache digest, notes) of the query: the upload, or the dataset image's original file.

    A dataset image whose file is gone (a run made elsewhere) falls back to its stored thumbnail.
    """
    if not q.is_dataset:
        img, notes = upload.load_upload_with_notes(q.data)
        return img, hashlib.sha256(q.data).hexdigest(), notes
    meta = state.image_table(ctx.cat, ctx.name)
    rel = meta.loc[meta["image_id"] == q.image_id, "path"].iloc[0]
    root = (ctx.manifest.get("images") or {}).get("root") or ""
    path = Path(root) / rel
    if root and path.is_file():
        raw = path.read_bytes()
        img, notes = upload.load_upload_with_notes(raw)
        return img, hashlib.sha256(raw).hexdigest(), notes
    thumb = data.thumbnails(ctx.con, ctx.name, [q.image_id])[0]
    img, _ = upload.load_upload_with_notes(thumb)
    return img, hashlib.sha256(thumb).hexdigest(), [f"the original file {path} is not on this machine: "
                                                    "the stored thumbnail is used (lower resolution)"]


def live_image(ctx: RunContext, bundle: state.ModelBundle, q: QueryImage) -> live.LiveImage:
    """The query decomposed by the live model over the run's layers, per-token terms included."""
    try:
        img, digest, notes = pil_image(ctx, q)
    except InputError as e:
        fail(e)
    for note in notes:
        if q.is_dataset:
            st.caption(note)
    return state.live_image(bundle, digest, tuple(ctx.layers), img)
