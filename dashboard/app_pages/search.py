"""Search heads: by property label, by the words of their TEXTSPAN texts, and by meaning (live text model)."""

import streamlit as st

from dashboard import data, imagesource, state, urlstate, widgets
from precompute import headsearch
from dashboard.widgets import open_head


def open_head_from(frame, key: str) -> None:
    """One row per head: click a row (or pick it in the box below) to open that head."""
    event = st.dataframe(frame, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                         key=f"{key}.table")
    heads = list(zip(frame["layer"].astype(int), frame["head"].astype(int)))
    if event and event.selection.rows:
        open_head(ctx.name, *heads[event.selection.rows[0]])
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    named = widgets.head_labels_of(ctx)
    pick = left.selectbox("Open", heads, key=f"{key}.pick", format_func=lambda c: widgets.head_choice(*c, named))
    if right.button("Open in the head explorer", key=f"{key}.go"):
        open_head(ctx.name, *pick)


ctx = widgets.run_page("Search heads", needs="textspan")

modes = {"text": "by text", "property": "by property"}
urlstate.seed("search.by", "by", valid=lambda v: v in modes)
by = st.radio("Search", list(modes), key="search.by", format_func=modes.get, horizontal=True)
urlstate.publish("by", by)

if by == "property":
    widgets.need_stage(ctx, "label")
    overview = data.head_overview(ctx.con, ctx.name).to_pandas()
    prop = urlstate.selectbox("Property", sorted(overview["property"].unique()), key="search.prop", param="prop")
    hits = headsearch.by_property(overview, prop)
    st.markdown(f"**{len(hits)}** head{'s' if len(hits) != 1 else ''} labelled **{prop}**.")
    open_head_from(hits, "search.prop")
    st.stop()

q = urlstate.text_input("Text", key="search.q", param="q", placeholder="e.g. red, stripes, a small circle")
if not q:
    st.info("Type words or a description: heads whose TEXTSPAN texts contain every word (as stems: “stripes” "
            "finds “striped”) are listed, and, when the run's model can be loaded, heads whose top texts are "
            "closest in meaning.")
    st.stop()
labels = data.head_labels(ctx.con, ctx.name).to_pandas()
words = headsearch.group_hits(data.search_head_texts(ctx.con, ctx.name, q).to_pandas(), labels)
st.markdown(f"#### Texts containing “{q}”: {len(words)} head{'s' if len(words) != 1 else ''}")
if words.empty:
    st.caption("No stored TEXTSPAN text contains these words.")
else:
    st.caption("A text matches when it contains every word of the query (small words such as “a” and “the” "
               "aside), compared as stems; `label` is the head's label.")
    open_head_from(words, "search.words")

st.markdown("#### Closest in meaning")
bundle = imagesource.live_model(ctx, "searching by meaning", text_only=True)
if bundle is not None:
    frame, emb = state.text_table(ctx.cat, ctx.name)
    query = state.text_embedding(bundle, q)
    far = headsearch.far_from_pool(query, frame["text"].tolist(), emb)
    if far.far:
        st.warning(far.message(q), icon=":material/explore_off:")
    ranked = headsearch.by_meaning(query, data.all_head_texts(ctx.con, ctx.name).to_pandas(),
                                   frame["text_id"].to_numpy(), emb, labels=labels)
    st.caption(f"Each head scored by the cosines between your text and its TEXTSPAN texts (embedded by the run's "
               f"own model): {headsearch.RANK_WEIGHT}. `best_text` adds most to the score.")
    open_head_from(ranked.head(20), "search.meaning")
