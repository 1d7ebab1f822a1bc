"""All heads' maps (CLIP-InterpreT's view): one image and one text, and every decomposed head's patch map of
the text on the image, a small map per head, layers by heads."""

import streamlit as st

from dashboard import data, imagesource, overlay, state, urlstate, widgets
from precompute import analysis
from precompute.labels import head_name

ctx = widgets.run_page("All heads' maps", needs="decompose")
bundle = imagesource.require_model(ctx, "the maps")

left, right = st.columns(2, gap="large")
with right:  # the controls first: a page stopped for want of an upload must not drop them (and their state)
    text = urlstate.text_input("Text", key="grid.t", param="t", placeholder="e.g. a red shape")
    scales = {"shared": "one scale for every head", "own": "each head on its own scale"}
    urlstate.seed("grid.scale", "scale", valid=lambda v: v in scales)
    per = st.radio("Colour scale", list(scales), key="grid.scale", format_func=scales.get, horizontal=True,
                   help="One scale compares heads: a faint map writes little along the text. Each head's own "
                        "scale shows where every head looks, however little it writes.")
    urlstate.publish("scale", None if per == "shared" else per)
with left:
    q = imagesource.image_picker(ctx, "grid")
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

st.markdown(f"#### Which heads respond most to “{text}” in this image")
means = state.head_means(ctx.cat, ctx.name, tuple(li.layers))
ranked = analysis.heads_for_text(li.heads, li.layers, state.text_embedding(bundle, text), means=means,
                                 tokens=li.tokens)
ranked.insert(3, "label", [label_of.get((int(l), int(h)), "") for l, h in zip(ranked["layer"], ranked["head"])])
st.caption(("Ranked by **centred**: (r − mean) · text, how much more than usual the head writes toward the text in "
            "this image. " if means is not None else "Ranked by **projection** (this run has no head means: run "
            "`clip-interpret textspan`). ")
           + "projection: r · text, the head's share of the image-text score; map_total: the sum of its map above "
             "(the patches' share, the class token left out).")
st.dataframe(ranked.head(12), hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(c, format="%.4g")
                            for c in ("projection", "centred", "map_total") if c in ranked})
widgets.download_csv(ranked, "Download the ranking (CSV)",
                     widgets.file_stem("heads-for-text", ctx.name, q.name, text) + ".csv", key="grid.csv")
