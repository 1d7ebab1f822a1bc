"""Analysis 5 · Per-head nearest neighbours of a text: the images whose head vector points most along the text."""

import streamlit as st

from dashboard import imagesource, state, urlstate, widgets
from precompute import analysis
from precompute.labels import head_name

ctx = widgets.run_page("5 · Text neighbours, per head", needs="decompose")
bundle = imagesource.require_model(ctx, "embedding a text")

left, right = st.columns(2, gap="large")
with left:
    text = urlstate.text_input("Text", key="tnn.t", param="t", placeholder="e.g. a red object")
    layer, head = widgets.head_picker(ctx, "tnn")
with right:
    k = widgets.k_slider("tnn")
    cosine = widgets.cosine_choice("tnn")
if not text:
    st.info("Type a text: the dataset images whose r[l,h] has the largest dot product with its normalised "
            "embedding are shown.")
    st.stop()

query = state.text_embedding(bundle, text)  # [D], normalised
m = state.head_matrix(ctx.cat, ctx.name, layer, head)
widgets.coverage_note(ctx, m, head_name(layer, head))
rows, scores = analysis.top_k(analysis.similarities(query, m.vectors, m.norms, cosine), k)
frame = analysis.neighbours_frame(m.ids[rows], scores, state.image_table(ctx.cat, ctx.name), run=ctx.name,
                              layer=layer, head=head, text=text, similarity="cosine" if cosine else "dot")
st.markdown(f"#### {len(frame)} images {head_name(layer, head)} writes most toward “{text}”")
widgets.show_neighbours(ctx, frame, f"text-neighbours_{head_name(layer, head)}", key="tnn")
