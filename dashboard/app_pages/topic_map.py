"""Analysis 2 · Topic segmentation: where in the image a head (or a set of heads) writes along a text."""

import streamlit as st

from dashboard import imagesource, overlay, state, urlstate, widgets
from precompute import analysis

ctx = widgets.run_page("2 · Topic map", needs="decompose")
bundle = imagesource.require_model(ctx, "a spatial map")

left, right = st.columns(2, gap="large")
with right:  # the controls first: a page stopped for want of an upload must not drop them (and their state)
    text = urlstate.text_input("Text", key="topic.t", param="t", placeholder="e.g. a dog")
    heads, described = widgets.head_set_picker(ctx, "topic", default_mode="one")
with left:
    q = imagesource.image_picker(ctx, "topic")
if not text:
    st.info("Type a text to map.")
    st.stop()

li = imagesource.live_image(ctx, bundle, q)
grid = analysis.summed_map(analysis.head_maps(li, state.text_embedding(bundle, text)), li.layers, heads)  # [g, g]
scale = overlay.symmetric_scale(grid)
png = overlay.render_png([(f"“{text}” · sum over {described}", li.view, grid)], scale,
                         "patch term · text embedding (red: toward the text)")
st.image(png)
st.caption(f"Each patch's terms of the chosen heads (the {li.grid}x{li.grid} patch grid, upsampled) dotted with "
           f"the normalised embedding of “{text}”, summed over {described}. Colour scale symmetric around 0: "
           f"±{scale:.3g}; red writes toward the text, blue away from it. Shown on the crop the model saw.")
stem = widgets.file_stem("topic-map", ctx.name, q.name, text, described)
st.download_button("Download PNG", png, file_name=f"{stem}.png", mime="image/png", key="topic.png",
                   on_click="ignore")
widgets.download_csv(analysis.map_frame(grid), "Download map values (CSV)", f"{stem}.csv", key="topic.csv")
