"""All heads' maps (CLIP-InterpreT's view): one image and one text, and every decomposed head's patch map of
the text on the image, a small map per head, layers by heads."""

import streamlit as st

from dashboard import data, imagesource, overlay, state, urlstate, widgets
from precompute import analysis
from precompute.labels import head_name

ctx = widgets.run_page("All heads' maps", needs="decompose")
bundle = imagesource.require_model(ctx, "the maps")

left, right = st.columns(2, gap="large")
with left:
    q = imagesource.image_picker(ctx, "grid")
with right:
    text = urlstate.text_input("Text", key="grid.t", param="t", placeholder="e.g. a red shape")
    scales = {"shared": "one scale for every head", "own": "each head on its own scale"}
    urlstate.seed("grid.scale", "scale", valid=lambda v: v in scales)
    per = st.radio("Colour scale", list(scales), key="grid.scale", format_func=scales.get, horizontal=True,
                   help="One scale compares heads: a faint map writes little along the text. Each head's own "
                        "scale shows where every head looks, however little it writes.")
    urlstate.publish("scale", None if per == "shared" else per)
if not text:
    st.info("Type a text to map it through every head.")
    st.stop()

li = imagesource.live_image(ctx, bundle, q)
maps = analysis.head_maps(li, state.text_embedding(bundle, text))  # [l, h, g, g]
labels = data.head_labels(ctx.con, ctx.name).to_pandas()
label_of = {(int(r.layer), int(r.head)): r.property for r in labels.itertuples()}
widgets.stale_labels_note(ctx.name, labels)
scale = overlay.symmetric_scale(maps)
st.caption(f"Each map: one head's patch terms dotted with the normalised embedding of “{text}” (the "
           f"{li.grid}x{li.grid} patch grid, upsampled, on the crop the model saw); red writes toward the text, blue "
           "away. " + (f"One scale for all, ±{scale:.3g}." if per == "shared" else "Each map on its own scale."))
if per == "shared":
    st.image(overlay.colour_bar(520, scale, "patch term · text embedding (red: toward the text)"))
for i, layer in enumerate(li.layers):
    cols = st.columns(maps.shape[1])
    for h, col in enumerate(cols):
        grid = maps[i, h]  # [g, g]
        s = scale if per == "shared" else overlay.symmetric_scale(grid)
        name = head_name(layer, h) + (f" · {label_of[(layer, h)]}" if (layer, h) in label_of else "")
        col.image(overlay.overlay(li.view, grid, s), caption=name, width="stretch")

strength = [(float(abs(maps[i, h]).sum()), layer, h) for i, layer in enumerate(li.layers)
            for h in range(maps.shape[1])]
best = sorted(strength, reverse=True)[:5]
st.caption("Most active along the text (sum of |map|): "
           + ", ".join(f"{head_name(l, h)} ({v:.3g})" for v, l, h in best) + ".")
