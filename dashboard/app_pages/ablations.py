"""Ablations: what zero-shot accuracy loses when heads are mean-ablated, per head and per group, and whether a
head's label names what it causally does."""

import streamlit as st

from dashboard import ablationview as av
from dashboard import widgets
from precompute.labels import head_name

ctx = widgets.run_page("Ablations", needs="score")
if "ablate" not in ctx.stages:
    st.info(f"Run **{ctx.name}** has no ablations yet. Add them with `{av.ablate_command(ctx)}` "
            "(or `clip-interpret run ... --ablate`).")
    st.stop()

model = av.model_ablations(ctx)
heads = av.head_ablations(ctx)
groups = av.group_ablations(ctx)
direct = heads[heads["method"] == "direct"]
st.caption(f"Each head is replaced by its mean over the probe set in the exact decomposition (its direct effect; "
           f"later layers do not see the change). Accuracy is zero-shot, per target: {model['targets'].replace(',', ', ')}.")

agree, top, rand = st.columns(3)
value = model["causal_label_agreement"]
agree.metric("Causal label agreement", "n/a" if value is None else f"{value:.2f}",
             help=f"{model['n_checked']} of {model['n_labelled']} labelled heads lose most accuracy on one attribute "
                  "(by more than the threshold); this is the share whose label is that attribute.")
top.metric(f"Drop, {model['k']} most consistent heads", f"{model['ccs_top_drop']:.3f}",
           delta=f"{model['ccs_top_drop'] - model['random_drop_mean']:+.3f} vs random", delta_color="off",
           help="The k = 25% of heads with the highest CCS (head_labels.ccs5), mean-ablated together.")
rand.metric(f"Drop, {model['k']} random heads", f"{model['random_drop_mean']:.3f}",
            help=f"Mean over {model['repeats']} seeded random sets (std {model['random_drop_std'] or 0:.3f}).")

st.header("Per head")
st.altair_chart(av.drop_grid(direct), width="stretch")
names = [(int(r.layer), int(r.head)) for r in direct.drop_duplicates(["layer", "head"]).itertuples()]
layer, head = st.selectbox("Head", names, format_func=lambda h: head_name(*h), key="ablations.head")
av.head_effect(ctx, layer, head)
with st.expander("The causal check of every head, as a table"):
    checks = direct.drop_duplicates(["layer", "head"])[["layer", "head", "property", "causal_attribute",
                                                         "label_agrees_causally", "cosine"]]
    st.dataframe(checks, hide_index=True, width="stretch")

st.header("Per group")
st.caption("The follow-up paper's experiment (CCS, arXiv 2503.11103): ablate the k most concept-consistent heads, "
           "the k least, and random sets of k (band: +- 1 std over the repeats).")
st.altair_chart(av.pruning_chart(av.pruning_curve(groups)), width="content")
st.subheader("Each property's heads against random heads of the same number")
st.dataframe(av.property_vs_random(groups), hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("drop", "random_mean", "random_std")})

forward = heads[heads["method"] == "forward"]
if not forward.empty:
    st.header("Direct effect against the forward pass")
    info = ctx.manifest["stages"]["ablate"].get("forward") or {}
    st.caption(f"The same heads mean-ablated through the model on {info.get('images', '?')} images (every later "
               f"layer sees the change): correlation of the per-head drops "
               f"{info.get('drop_correlation') or float('nan'):.2f}, mean drop {info.get('direct_mean_drop', 0):.4f} "
               f"direct vs {info.get('forward_mean_drop', 0):.4f} forward.")
    st.altair_chart(av.direct_vs_forward(heads), width="content")
