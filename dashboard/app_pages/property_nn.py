"""Analysis 1 · Property nearest neighbours: the dataset images closest to the query by one property's heads."""

import streamlit as st

from dashboard import data, imagesource, state, urlstate, widgets
from precompute import analysis
from precompute.labels import MIXED, head_name

ctx = widgets.run_page("1 · Property nearest neighbours", needs="label")

labels = data.head_labels(ctx.con, ctx.name).to_pandas()
properties = sorted(set(labels["property"]) - {MIXED})
if not properties:
    st.info(f"No head of run {ctx.name!r} has a property other than '{MIXED}'.")
    st.stop()
left, right = st.columns(2, gap="large")
with right:
    prop = urlstate.selectbox("Property", properties, key="pnn.prop", param="prop")
    heads = analysis.heads_with_property(labels, prop)
    st.caption(f"Query vector: the mean of r[l,h] over the {len(heads)} head{'s' if len(heads) != 1 else ''} "
               f"labelled **{prop}** ({', '.join(head_name(*h) for h in heads)}); every dataset image gets the "
               "same mean over the same heads, and the closest are shown.")
    k = widgets.k_slider("pnn")
    sim = widgets.similarity_choice("pnn")
    st.caption(f"Score by **{sim}**: {analysis.SIMILARITIES[sim]}"
               + (" (the mean is that of the property vector over the probe set)." if sim == "centred" else "."))
with left:
    q = imagesource.image_picker(ctx, "pnn")

m = state.mean_matrix(ctx.cat, ctx.name, heads)
widgets.coverage_note(ctx, m, f"The {prop} heads' mean")
exclude = None
if q.is_dataset:
    exclude = widgets.covered_row(ctx, m, q.image_id, f"the {prop} heads' mean")
    query = m.vectors[exclude]  # [D]
else:
    bundle = imagesource.require_model(ctx, "an uploaded image")
    li = imagesource.live_image(ctx, bundle, q)
    query = analysis.mean_vector([li.head_vector(l, h) for l, h in heads])  # [D]
ids, scores = analysis.neighbours(m, query, k, sim, exclude=exclude)
frame = analysis.neighbours_frame(ids, scores, state.image_table(ctx.cat, ctx.name),
                                  state.attribute_table(ctx.cat, ctx.name), run=ctx.name,
                                  property=prop, query=q.name, similarity=sim)
st.markdown(f"#### {len(frame)} nearest images by the **{prop}** heads"
            + (" (the query image itself left out)" if exclude is not None else ""))
widgets.show_neighbours(ctx, frame, f"property-neighbours_{prop}", key="pnn")
