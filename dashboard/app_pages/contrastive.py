"""Analysis 3 · Contrastive map: map(t1) - map(t2) over the same chosen heads, on one symmetric scale."""

import streamlit as st

from dashboard import imagesource, overlay, state, urlstate, widgets
from precompute import analysis

ctx = widgets.run_page("3 · Contrastive map", needs="decompose")
bundle = imagesource.require_model(ctx, "a spatial map")

left, right = st.columns(2, gap="large")
with right:  # the controls first: a page stopped for want of an upload must not drop them (and their state)
    t1 = urlstate.text_input("Text 1 (red)", key="con.t1", param="t1", placeholder="e.g. a dog")
    t2 = urlstate.text_input("Text 2 (blue)", key="con.t2", param="t2", placeholder="e.g. grass")
    heads, described = widgets.head_set_picker(ctx, "con", default_mode="layers")
with left:
    q = imagesource.image_picker(ctx, "con")
if not (t1 and t2):
    st.info("Type two texts to contrast.")
    st.stop()

li = imagesource.live_image(ctx, bundle, q)
m1, m2, diff = analysis.contrastive_map(analysis.head_maps(li, state.text_embedding(bundle, t1)),
                                        analysis.head_maps(li, state.text_embedding(bundle, t2)), li.layers, heads)
scale = overlay.symmetric_scale(diff)
png = overlay.render_png([(f"“{t1}” - “{t2}” · sum over {described}", li.view, diff)], scale,
                         f"map(t1) - map(t2)   red: “{t1}”   blue: “{t2}”")
st.image(png)
st.caption(f"Both maps use the same {len(heads)} head{'s' if len(heads) != 1 else ''} ({described}); the difference "
           f"is shown on one colour scale symmetric around 0 (±{scale:.3g}): red where the heads write more toward "
           f"“{t1}”, blue where more toward “{t2}”.")
stem = widgets.file_stem("contrastive-map", ctx.name, q.name, f"{t1} vs {t2}", described)
st.download_button("Download PNG", png, file_name=f"{stem}.png", mime="image/png", key="con.png", on_click="ignore")
widgets.download_csv(analysis.map_frame(diff), "Download map values (CSV)", f"{stem}.csv", key="con.csv")
with st.expander("The two maps, on their own shared scale"):
    both = overlay.symmetric_scale(m1, m2)
    st.image(overlay.render_png([(f"“{t1}”", li.view, m1), (f"“{t2}”", li.view, m2)], both,
                                "patch term · text embedding (shared by both maps)"))
