"""Analysis 4 · Per-head nearest neighbours of an image: the images one head sees as closest to the query."""

import streamlit as st

from dashboard import imagesource, state, widgets
from precompute import analysis
from precompute.labels import head_name

ctx = widgets.run_page("4 · Image neighbours, per head", needs="decompose")

left, right = st.columns(2, gap="large")
with right:
    layer, head = widgets.head_picker(ctx, "inn")
    k = widgets.k_slider("inn")
    sim = widgets.similarity_choice("inn")
    st.caption(f"Score: the head's vector for the query against its vector for every dataset image, by **{sim}**: "
               f"{analysis.SIMILARITIES[sim]}. A dataset image's vector comes from the run; an upload is "
               "decomposed by the live model.")
with left:
    q = imagesource.image_picker(ctx, "inn")

m = state.head_matrix(ctx.cat, ctx.name, layer, head)
widgets.coverage_note(ctx, m, head_name(layer, head))
exclude = None
if q.is_dataset:
    exclude = widgets.covered_row(ctx, m, q.image_id, head_name(layer, head))
    query = m.vectors[exclude]  # [D], straight from the run: no model needed
else:
    bundle = imagesource.require_model(ctx, "an uploaded image")
    query = imagesource.live_image(ctx, bundle, q).head_vector(layer, head)  # [D]
ids, scores = analysis.neighbours(m, query, k, sim, exclude=exclude)
frame = analysis.neighbours_frame(ids, scores, state.image_table(ctx.cat, ctx.name),
                                  state.attribute_table(ctx.cat, ctx.name), run=ctx.name,
                                  layer=layer, head=head, query=q.name, similarity=sim)
st.markdown(f"#### {len(frame)} nearest images by {head_name(layer, head)}"
            + (" (the query image itself left out)" if exclude is not None else ""))
widgets.show_neighbours(ctx, frame, f"image-neighbours_{head_name(layer, head)}", key="inn")
