"""Image: one image (a dataset image or an upload), its ground-truth attributes, the heads that respond to it most
strongly, and those heads' patch maps."""

from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import data, imagesource, overlay, state, urlstate, widgets
from precompute import analysis, store
from precompute.labels import head_name

ctx = widgets.run_page("Image", needs="decompose")
q = imagesource.image_picker(ctx, "image")
SHOWN = 8  # strongest heads whose maps are drawn

if q.is_dataset:
    meta = state.image_table(ctx.cat, ctx.name)
    row = meta[meta["image_id"] == q.image_id].iloc[0]
    facts = {"image id": str(q.image_id), "path": row["path"], "folder label": row["label"] or "–",
             "file size (px)": f"{row['width']}x{row['height']}"}
    truth = state.attribute_table(ctx.cat, ctx.name)  # cached per run: read once, not on every rerun
    found = truth[truth["image_id"] == q.image_id] if truth is not None else None
    attrs = found.iloc[0].drop("image_id").to_dict() if found is not None and not found.empty else {}
    attrs_file = store.probe_attributes_file(ctx.manifest)
    st.markdown("#### Attributes")
    st.dataframe(pd.DataFrame({"attribute": list(facts) + list(attrs),
                               "value": list(facts.values()) + [str(v) for v in attrs.values()]}),
                 hide_index=True, width=560, height=36 * (len(facts) + len(attrs) + 1) + 4)
    st.caption(f"Ground truth from `{attrs_file}`." if attrs else
               "The probe set has no attributes.parquet: only the folder label is known.")

bundle = None if q.is_dataset else imagesource.require_model(ctx, "an uploaded image")
li = imagesource.live_image(ctx, bundle, q) if bundle is not None else None
labels = data.head_labels(ctx.con, ctx.name).to_pandas()
label_of = {(int(r.layer), int(r.head)): r.property for r in labels.itertuples()}
widgets.stale_labels_note(ctx.name, labels)
rows = []
with st.spinner("Reading every head's vectors ..."):
    for layer, head in [(l, h) for l in ctx.layers for h in range(ctx.heads)]:
        m = state.head_matrix(ctx.cat, ctx.name, layer, head)
        at = m.row_of(q.image_id) if q.is_dataset else None
        if q.is_dataset and at is None:
            continue
        r = m.vectors[at].astype(np.float32) if q.is_dataset else li.head_vector(layer, head)  # [D]
        spread = float(np.sqrt(max(np.mean(m.norms.astype(np.float64) ** 2) - float(m.mean @ m.mean), 1e-24)))
        u = state.principal_direction(ctx.cat, ctx.name, layer, head)  # [D]
        proj = analysis.matvec(m.vectors, u) - float(m.mean @ u)  # [n]
        mine = float((r - m.mean) @ u)
        rows.append({"head": head_name(layer, head), "label": label_of.get((layer, head), ""),
                     "strength": float(np.linalg.norm(r - m.mean)) / spread,
                     "principal": mine / max(float(proj.std()), 1e-12),
                     "percentile": float(np.mean(proj <= mine)) * 100, "layer": layer, "h": head,
                     "open": f"head?{urlencode({'run': ctx.name, 'layer': layer, 'head': head})}"})
table = pd.DataFrame(rows).sort_values("strength", ascending=False)
st.markdown("#### Its strongest heads")
st.caption("strength: the distance of this image's r[l,h] from the head's mean, in units of the head's spread "
           "(root mean square distance over the probe set; 1 is typical). principal: its centred projection on "
           "the head's first principal direction, in standard deviations, and that projection's percentile.")
st.dataframe(table.drop(columns=["layer", "h"]), hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.2f") for c in ("strength", "principal")}
             | {"percentile": st.column_config.NumberColumn(format="%.0f"),
                "open": st.column_config.LinkColumn("head page", display_text="open")})

st.markdown("#### Their maps")
urlstate.seed("image.maps", "maps", parse=lambda v: v == "1")
show = not q.is_dataset or st.toggle(f"Show the maps of its {SHOWN} strongest heads", key="image.maps")
urlstate.publish("maps", "1" if show and q.is_dataset else None)
if show:
    bundle = bundle or imagesource.require_model(ctx, "the maps")
    li = li or imagesource.live_image(ctx, bundle, q)
    shown, grids = table.head(SHOWN), []
    for r in shown.itertuples():
        u = state.principal_direction(ctx.cat, ctx.name, r.layer, r.h)
        grids.append(analysis.head_maps(li, u)[li.layers.index(r.layer), r.h])  # [g, g]
    scale = overlay.symmetric_scale(*grids)
    st.image([overlay.overlay(li.view, g, scale) for g in grids],
             caption=[f"{r.head} · {r.label}" for r in shown.itertuples()], width=100)
    st.image(overlay.colour_bar(520, scale, "patch term · principal direction (red: along it)"))
    st.caption("Each head's patch terms dotted with its first principal direction, one scale for all.")
