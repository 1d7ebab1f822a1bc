"""Compare: which heads of one model do what a head of another does (linear CKA over the shared probe images),
and one property across every model."""

import pandas as pd
import streamlit as st

from dashboard import ablationview as av
from dashboard import data, urlstate, widgets
from precompute.labels import MIXED, head_name

ctx = widgets.run_page("Compare models", needs="decompose")
others = [n for n in sorted(ctx.cat.runs) if n != ctx.name]
matched = av.matched_runs(ctx.con, ctx.name)
if not others:
    st.info("Only one run is here: compare needs a second run over the same probe images.")
    st.stop()
default = next((n for n in others if n in matched), others[0])
urlstate.seed("compare.other", "other", valid=lambda v: v in others)
st.session_state.setdefault("compare.other", default)
other = urlstate.selectbox("Compare with", others, key="compare.other", param="other",  # permalink ``other``
                           format_func=lambda n: n + ("" if n in matched else "  (not compared yet)"))
pairs = av.matches(ctx.con, ctx.name, other)
overview = {n: f.to_pandas() for n, f in widgets.each_run(ctx.cat, data.head_overview).items()}

if pairs.empty:
    st.info(f"**{ctx.name}** and **{other}** have not been compared yet. Compare them with "
            f"`{av.compare_command(ctx, ctx.cat.runs[other]['path'])}` (then reload).")
else:
    st.caption(f"Linear CKA of every head of **{ctx.name}** (rows) against every head of **{other}** (columns) "
               f"over {int(pairs['images'].iloc[0]):,} shared images, by layer; 1 = the same geometry of images.")
    st.altair_chart(av.cka_heatmap(pairs, ctx.name, other), width="content")

    st.header("Each head's best match")
    best = pairs[pairs["rank_a"] == 1].copy()
    mine = overview.get(ctx.name, pd.DataFrame(columns=["layer", "head", "property", "texts"]))
    theirs = overview.get(other, pd.DataFrame(columns=["layer", "head", "property", "texts"]))
    best = best.merge(mine[["layer", "head", "property", "texts"]].rename(columns=lambda c: c + "_a"),
                      how="left", on=["layer_a", "head_a"])
    best = best.merge(theirs[["layer", "head", "property", "texts"]].rename(columns=lambda c: c + "_b"),
                      how="left", on=["layer_b", "head_b"])
    best.insert(0, "head", [head_name(l, h) for l, h in zip(best["layer_a"], best["head_a"])])
    best.insert(3, "match", [head_name(l, h) for l, h in zip(best["layer_b"], best["head_b"])])
    st.dataframe(best[["head", "property_a", "texts_a", "match", "property_b", "texts_b", "cka"]], hide_index=True,
                 width="stretch", column_config={"cka": st.column_config.NumberColumn("CKA", format="%.3f")})

st.header("The same property across models")
props = sorted({p for f in overview.values() for p in f["property"] if p != MIXED})
if not props:
    st.info("No run is labelled yet: `clip-interpret label --out RUN`.")
else:
    prop = st.selectbox("Property", props, key="compare.property")
    rows = [f[f["property"] == prop].assign(run=name) for name, f in overview.items()]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table.insert(1, "name", [head_name(l, h) for l, h in zip(table["layer"], table["head"])])
    st.dataframe(table[["run", "name", "association", "ccs5", "texts"]], hide_index=True, width="stretch")
