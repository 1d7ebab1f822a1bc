"""What the Ablations and Compare pages show (docs/design.md sections 6.4 and 6.5): the queries, the frames
the pages read, the Altair charts, and ``head_effect``, one head's ablation effect and best matches in other
runs, for any page to render (the head explorer among them).

Queries are named constants with ``?`` parameters over one run's files (``data.run_files``) or the
``head_matches`` view; charts are pure builders of frames.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data
from precompute.labels import head_name

HEAD_ABLATIONS_SQL = "SELECT * FROM read_parquet(?, hive_partitioning = false) ORDER BY method, layer, head, target"
GROUP_ABLATIONS_SQL = "SELECT * FROM read_parquet(?, hive_partitioning = false) ORDER BY kind, size, repeat, target"
MODEL_ABLATIONS_SQL = "SELECT * FROM read_parquet(?, hive_partitioning = false)"
MATCHES_SQL = """
SELECT layer_a, head_a, layer_b, head_b, cka, rank_a, rank_b, images FROM head_matches WHERE run_a = ? AND run_b = ?
UNION ALL
SELECT layer_b, head_b, layer_a, head_a, cka, rank_b, rank_a, images FROM head_matches WHERE run_a = ? AND run_b = ?
    AND run_a <> run_b
ORDER BY layer_a, head_a, layer_b, head_b
"""
BEST_MATCHES_SQL = """
SELECT run_b AS run, layer_b AS layer, head_b AS head, cka FROM head_matches
    WHERE run_a = ? AND layer_a = ? AND head_a = ? AND rank_a = 1 AND run_b <> run_a
UNION ALL
SELECT run_a, layer_a, head_a, cka FROM head_matches
    WHERE run_b = ? AND layer_b = ? AND head_b = ? AND rank_b = 1 AND run_b <> run_a
ORDER BY cka DESC
"""
MATCHED_RUNS_SQL = """
SELECT DISTINCT run_b AS run FROM head_matches WHERE run_a = ?
UNION SELECT DISTINCT run_a FROM head_matches WHERE run_b = ? ORDER BY run
"""


def ablate_command(ctx) -> str:
    return f"clip-interpret ablate --out {ctx.path}"


def compare_command(ctx, other_path: str) -> str:
    return f"clip-interpret compare --run {ctx.path} --run {other_path}"


# ------------------------------------------------------------------ frames


def head_ablations(ctx) -> pd.DataFrame:
    return data._run_table(ctx.con, ctx.name, "head_ablations", HEAD_ABLATIONS_SQL).to_pandas()


def group_ablations(ctx) -> pd.DataFrame:
    return data._run_table(ctx.con, ctx.name, "group_ablations", GROUP_ABLATIONS_SQL).to_pandas()


def model_ablations(ctx) -> dict | None:
    rows = data._run_table(ctx.con, ctx.name, "model_ablations", MODEL_ABLATIONS_SQL).to_pylist()
    return rows[0] if rows else None


def pruning_curve(groups: pd.DataFrame) -> pd.DataFrame:
    """kind, size, drop (mean over targets; for random sets the mean over repeats), spread (their std)."""
    per = groups[groups["kind"] != "property"].groupby(["kind", "size", "repeat"], as_index=False)["accuracy_drop"]
    per = per.mean()
    out = per.groupby(["kind", "size"], as_index=False).agg(drop=("accuracy_drop", "mean"),
                                                            spread=("accuracy_drop", "std"))
    out["spread"] = out["spread"].fillna(0.0)
    out["low"], out["high"] = out["drop"] - out["spread"], out["drop"] + out["spread"]
    return out


def property_vs_random(groups: pd.DataFrame) -> pd.DataFrame:
    """Each property group's drop on its own attribute against random sets of the same size on that attribute."""
    rows = []
    for r in groups[groups["kind"] == "property"].itertuples():
        if r.target != r.group:
            continue
        rand = groups[(groups["kind"] == "random") & (groups["size"] == r.size) & (groups["target"] == r.target)]
        mean, std = rand["accuracy_drop"].mean(), rand["accuracy_drop"].std()
        rows.append({"property": r.group, "heads": r.size, "drop": r.accuracy_drop, "random_mean": mean,
                     "random_std": std, "above_random_by_std": (r.accuracy_drop - mean) / std if std > 0 else None})
    return pd.DataFrame(rows, columns=["property", "heads", "drop", "random_mean", "random_std",
                                       "above_random_by_std"])


def matches(con, run_a: str, run_b: str) -> pd.DataFrame:
    """Every pair of heads of two runs, seen from run A (either stored direction)."""
    return data._fetch(con, MATCHES_SQL, [run_a, run_b, run_b, run_a]).to_pandas()


def matched_runs(con, run: str) -> list[str]:
    return data._fetch(con, MATCHED_RUNS_SQL, [run, run]).column("run").to_pylist()


# ------------------------------------------------------------------ charts


def drop_bars(frame: pd.DataFrame, title: str) -> alt.Chart:
    """One head's accuracy drop per target (a small bar chart); frame: target, accuracy_drop[, method]."""
    colour = alt.Color("method:N", title="ablation") if frame["method"].nunique() > 1 else alt.value("#4c78a8")
    return alt.Chart(frame, title=title).mark_bar().encode(
        x=alt.X("accuracy_drop:Q", title="accuracy drop"), y=alt.Y("target:N", title=None, sort=None),
        yOffset="method:N", color=colour,
        tooltip=["target", "method", alt.Tooltip("accuracy_intact:Q", format=".3f"),
                 alt.Tooltip("accuracy:Q", format=".3f"), alt.Tooltip("accuracy_drop:Q", format=".4f")],
    ).properties(width=320, height=alt.Step(14))


def drop_grid(frame: pd.DataFrame) -> alt.Chart:
    """Heads x targets, coloured by the accuracy drop when the head alone is mean-ablated."""
    frame = frame.assign(head_label=[f"{head_name(l, h)} ({p})" for l, h, p in
                                     zip(frame["layer"], frame["head"], frame["property"])])
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("target:N", title=None), y=alt.Y("head_label:N", title=None, sort=None),
        color=alt.Color("accuracy_drop:Q", title="drop", scale=alt.Scale(scheme="reds")),
        tooltip=["head_label", "target", alt.Tooltip("accuracy_drop:Q", format=".4f"), "causal_attribute"],
    ).properties(height=alt.Step(18))


def pruning_chart(curve: pd.DataFrame) -> alt.Chart:
    """Drop against the number of heads ablated: CCS top-k, bottom-k, random sets (mean, band of +- 1 std)."""
    base = alt.Chart(curve).encode(x=alt.X("size:Q", title="heads ablated (k)"),
                                   color=alt.Color("kind:N", title="heads",
                                                   scale=alt.Scale(domain=["ccs_top", "ccs_bottom", "random"],
                                                                   range=["#4c78a8", "#f58518", "#7f7f7f"])))
    band = base.transform_filter(alt.datum.kind == "random").mark_area(opacity=0.25).encode(y="low:Q", y2="high:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("drop:Q", title="accuracy drop (mean over targets)"),
        tooltip=["kind", "size", alt.Tooltip("drop:Q", format=".4f"), alt.Tooltip("spread:Q", format=".4f")])
    return (band + line).properties(width=480, height=280)


def direct_vs_forward(heads: pd.DataFrame) -> alt.Chart:
    """Per head: the mean drop over targets, direct (all images) against forward (its sample)."""
    per = heads.groupby(["layer", "head", "method"], as_index=False)["accuracy_drop"].mean()
    wide = per.pivot_table(index=["layer", "head"], columns="method", values="accuracy_drop").reset_index()
    wide["name"] = [head_name(l, h) for l, h in zip(wide["layer"], wide["head"])]
    return alt.Chart(wide).mark_circle(size=60).encode(
        x=alt.X("direct:Q", title="drop, direct effect (all images)"),
        y=alt.Y("forward:Q", title="drop, through the model (sample)"), color=alt.Color("layer:O"),
        tooltip=["name", alt.Tooltip("direct:Q", format=".4f"), alt.Tooltip("forward:Q", format=".4f")],
    ).properties(width=360, height=300)


def cka_heatmap(frame: pd.DataFrame, name_a: str, name_b: str) -> alt.Chart:
    """Heads of A x heads of B by layer, coloured by linear CKA."""
    frame = frame.assign(a=[head_name(l, h) for l, h in zip(frame["layer_a"], frame["head_a"])],
                         b=[head_name(l, h) for l, h in zip(frame["layer_b"], frame["head_b"])])
    order_a = list(dict.fromkeys(frame.sort_values(["layer_a", "head_a"])["a"]))
    order_b = list(dict.fromkeys(frame.sort_values(["layer_b", "head_b"])["b"]))
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("b:N", title=name_b, sort=order_b), y=alt.Y("a:N", title=name_a, sort=order_a),
        color=alt.Color("cka:Q", title="CKA", scale=alt.Scale(domain=[0, 1], scheme="viridis")),
        tooltip=["a", "b", alt.Tooltip("cka:Q", format=".3f"), "rank_a", "rank_b"],
    ).properties(width=alt.Step(12), height=alt.Step(12))


# ------------------------------------------------------------------ one head, for any page


def head_effect(ctx, layer: int, head: int) -> None:
    """Render one head's ablation effect (drop per target, cosine, the causal check) and its best matches in
    the other runs `clip-interpret compare` matched it with."""
    st.markdown(f"#### Ablating {head_name(layer, head)}")
    if not data.run_files(ctx.con, ctx.name, "head_ablations"):
        st.caption(f"No ablations for this run yet: `{ablate_command(ctx)}`")
    else:
        rows = head_ablations(ctx)
        rows = rows[(rows["layer"] == layer) & (rows["head"] == head)]
        if rows.empty:
            st.caption("This head is not in the run's ablations (they predate its analysed layers).")
        else:
            direct = rows[rows["method"] == "direct"].iloc[0]
            causal = direct["causal_attribute"]
            agrees = direct["label_agrees_causally"]
            verdict = ("no attribute loses more than the threshold: the check is inconclusive" if causal is None
                       or pd.isna(causal) else f"ablating it hurts **{causal}** most"
                       + ("" if agrees is None or pd.isna(agrees) else
                          (", as its label says" if agrees else f", not its label **{direct['property']}**")))
            st.markdown(f"Mean-ablated in the decomposition: {verdict}. Mean cosine of the ablated to the intact "
                        f"embedding {direct['cosine']:.4f}.")
            st.altair_chart(drop_bars(rows, "accuracy drop per target"), width="content")
    best = data._fetch(ctx.con, BEST_MATCHES_SQL, [ctx.name, layer, head, ctx.name, layer, head]).to_pandas()
    if not best.empty:
        best["head"] = [head_name(l, h) for l, h in zip(best["layer"], best["head"])]
        st.markdown("Best matches in other runs (linear CKA over the shared images):")
        st.dataframe(best[["run", "head", "cka"]], hide_index=True,
                     column_config={"cka": st.column_config.NumberColumn("CKA", format="%.3f")})

