"""Head explorer: what one head does. Its label (provenance, ground truth, corrections), TEXTSPAN texts and scores;
the projection of every probe image on its direction (histogram, top and bottom images, patch maps); a test box;
links into every analysis; and a way to correct the label."""

import streamlit as st

from dashboard import ablationview, headprobe, headview, widgets

ctx = widgets.run_page("Head explorer", needs="decompose")

layer, head = widgets.head_picker(ctx, "head", container=st.sidebar)
prev, nxt = st.sidebar.columns(2)
prev.button("← Previous", key="head.prev", on_click=headview.step, args=(ctx, "head", layer, head, -1),
            width="stretch")
nxt.button("Next →", key="head.next", on_click=headview.step, args=(ctx, "head", layer, head, 1), width="stretch")

labels, label = headview.head_label(ctx, layer, head)
scores = headview.score_row(ctx, layer, head)

if headview.SAVED in st.session_state:
    st.success(st.session_state.pop(headview.SAVED))
headview.label_section(ctx, label, scores, layer, head)
headview.links_section(ctx, label, layer, head)

left, right = st.columns([3, 2])
with left:
    picks = headview.texts_section(ctx, layer, head)
with right:
    headview.scores_section(ctx, label, scores)
    known = labels["property"].tolist() + (picks["property"].dropna().tolist() if not picks.empty else [])
    headview.override_form(ctx, label, layer, head, known)
    headview.history_section(ctx, layer, head)
    ablationview.head_effect(ctx, layer, head)  # what removing it does, and its best matches in other runs

st.markdown("### Along the head's direction")
m = headprobe.head_matrix(ctx, layer, head)
d = headprobe.direction(ctx, m, layer, head, picks)
hist = st.empty()  # redrawn by the test box with its marks
hist.altair_chart(headprobe.histogram(d), width="stretch")
top_ids = headprobe.images_section(ctx, m, d, layer, head)
live = headprobe.LiveModel(ctx)  # loaded only when a section needs it
headprobe.maps_section(ctx, live, d, layer, head, top_ids)
headprobe.test_section(ctx, live, m, d, layer, head, hist)
