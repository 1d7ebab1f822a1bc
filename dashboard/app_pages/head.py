"""Head explorer: what one head does (label, TEXTSPAN texts, scores, top images), and a way to correct it."""

import streamlit as st

from dashboard import data, headview, widgets

ctx = widgets.run_page("Head explorer", needs="decompose")

layer, head = widgets.head_picker(ctx, "head", container=st.sidebar)
prev, nxt = st.sidebar.columns(2)
prev.button("← Previous", key="head.prev", on_click=headview.step, args=(ctx, "head", layer, head, -1),
            width="stretch")
nxt.button("Next →", key="head.next", on_click=headview.step, args=(ctx, "head", layer, head, 1), width="stretch")

labels = data.head_labels(ctx.con, ctx.name).to_pandas()
row = labels[(labels["layer"] == layer) & (labels["head"] == head)]
label = row.iloc[0].to_dict() if not row.empty else None

if headview.SAVED in st.session_state:
    st.success(st.session_state.pop(headview.SAVED))
headview.label_section(ctx, label, layer, head)
headview.pending_override(ctx, label, layer, head)

left, right = st.columns([3, 2])
with left:
    picks = headview.texts_section(ctx, layer, head)
with right:
    headview.scores_section(ctx, layer, head)
    known = labels["property"].tolist() + (picks["property"].dropna().tolist() if not picks.empty else [])
    headview.override_form(ctx, label, layer, head, known)

headview.top_images_section(ctx, layer, head, picks)
