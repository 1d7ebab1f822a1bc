"""Analysis 5 · Per-head nearest neighbours of a text: the images whose head vector points most along the text."""

import streamlit as st

from dashboard import imagesource, state, urlstate, widgets
from precompute import analysis
from precompute.labels import head_name

ctx = widgets.run_page("5 · Text neighbours, per head", needs="decompose")
bundle = imagesource.require_model(ctx, "embedding a text", text_only=True)

left, right = st.columns(2, gap="large")
with left:
    text = urlstate.text_input("Text", key="tnn.t", param="t", placeholder="e.g. a red object")
    layer, head = widgets.head_picker(ctx, "tnn")
with right:
    k = widgets.k_slider("tnn")
    sim = widgets.similarity_choice("tnn")
    st.caption(f"Score by **{sim}**: {analysis.SIMILARITIES[sim]}."
               + (" The images' vectors are centred, the text is not: it is a direction, not one of the head's "
                  "outputs." if sim == "centred" else ""))
if not text:
    st.info("Type a text: the dataset images whose head vector points most along its normalised embedding are "
            "shown.")
    st.stop()

query = state.text_embedding(bundle, text)  # [D], normalised
m = state.head_matrix(ctx.cat, ctx.name, layer, head)
widgets.coverage_note(ctx, m, head_name(layer, head))
ids, scores = analysis.neighbours(m, query, k, sim, text=True)
frame = analysis.neighbours_frame(ids, scores, state.image_table(ctx.cat, ctx.name),
                                  state.attribute_table(ctx.cat, ctx.name), run=ctx.name,
                                  layer=layer, head=head, text=text, similarity=sim)
st.markdown(f"#### {len(frame)} images {head_name(layer, head)} writes most toward “{text}”")
widgets.show_neighbours(ctx, frame, f"text-neighbours_{head_name(layer, head)}", key="tnn")
