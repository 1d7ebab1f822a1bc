"""Rankings: every model's interpretability scores side by side, and each model's heads by property."""

import streamlit as st

from dashboard import charts, data, glossary, hints, widgets
from dashboard.widgets import open_head
from precompute.labels import head_name


def missing_stage_note(names: list[str], stage: str, what: str) -> None:
    """One expander naming the runs that lack ``stage`` and the command that adds it to each."""
    if not names:
        return
    with st.expander(f"{len(names)} run{'s are' if len(names) > 1 else ' is'} {what}: {', '.join(names)}"):
        for name in names:
            row = cat.runs[name]
            st.markdown(hints.stage_hint(name, row["manifest"], row["path"], list(row["stages"] or []), stage))


ctx = widgets.current_run()
cat = ctx.cat
st.title("Rankings")
st.caption("Each score of the score stage for every model: one order and one colour per model in every panel, "
           "each bar labelled with its value and its rank on that score (#1 = best). Arrows say which way is "
           "better: **entanglement is better when lower** (fewer heads share a property). Hover a title's "
           "score in the table below for its meaning.")

scores = data.model_scores(cat.con).to_pandas()
chart = charts.score_rankings(scores)
if chart is None:
    st.info("No run has scores yet.")
else:
    st.altair_chart(chart, width="content")
    with st.expander("The scores, as a table"):
        st.dataframe(scores, hide_index=True, width="stretch", column_config=glossary.column_config(scores))
missing_stage_note(sorted(set(cat.runs) - set(scores["run"])), "score", "not scored yet")

st.header("Heads by property")
st.caption("One cell per head, coloured and titled by its property label (grey · = mixed); hover for its "
           "association and top texts. Click a cell to open the head.")
overviews = {n: t.to_pandas() for n, t in widgets.each_run(cat, data.head_overview).items()}
labelled = {n: f for n, f in overviews.items() if not f.empty}
for name, frame in labelled.items():
    widgets.stale_labels_note(name, frame)  # corrected since `score` ran: the grid shows the correction already
domain, colours = charts.property_colours(p for f in labelled.values() for p in f["property"])
for name, frame in labelled.items():
    grid = charts.head_grid(frame, f"{name} · {cat.runs[name]['architecture']}", domain, colours)
    event = st.altair_chart(grid, on_select="rerun", key=f"grid.{name}", width="content")
    picked = (event.selection.get(charts.HEAD_SELECTION) or []) if event else []
    if picked and "layer" in picked[0] and "head" in picked[0]:
        open_head(name, int(picked[0]["layer"]), int(picked[0]["head"]))
missing_stage_note(sorted(set(cat.runs) - set(labelled)), "label", "not labelled yet")

if labelled:
    choices = [(n, int(r.layer), int(r.head), r.property) for n, f in labelled.items() for r in f.itertuples()]
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    chosen = left.selectbox("Or choose a head", choices, key="rankings.open",
                            format_func=lambda c: f"{c[0]} · {head_name(c[1], c[2])} ({c[3]})")
    if right.button("Open in the head explorer", key="rankings.go"):
        open_head(*chosen[:3])
