"""Pure Altair builders: (frame, ...) -> chart. No streamlit, no data access."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd

from precompute.labels import MIXED

MIXED_COLOUR = "#c7c7c7"
TABLEAU20 = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6",
             "#9d755d", "#bab0ac", "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a",
             "#d62728", "#ff9896", "#9467bd", "#c5b0d5"]
HEAD_SELECTION = "head"  # name of the grid's click selection: event.selection["head"] -> [{layer, head, ...}]


@dataclass(frozen=True)
class Score:
    column: str
    title: str
    higher_is_better: bool
    help: str
    top: float = 1.0  # the axis runs 0..top, so runs and scores compare at a glance


SCORES = (
    Score("association", "Association ↑", True,
          "Share of a head's top-5 TEXTSPAN texts that carry the head's property; mean over labelled heads."),
    Score("entanglement", "Entanglement ↓ (lower is better)", False,
          "Share of labelled heads whose property another head of the model also has."),
    Score("ccs5_mean", "CCS@5 ↑", True, "How many of a head's top 5 texts carry its property (0..5); mean.", 5.0),
    Score("variance_top5", "Variance explained, top 5 ↑", True,
          "Fraction of a head's variance its top 5 TEXTSPAN texts explain; mean over heads."),
    Score("variance_topk", "Variance explained, top k ↑", True,
          "Fraction of a head's variance all its stored TEXTSPAN texts explain; mean over heads."),
    Score("zeroshot_intact", "Zero-shot accuracy ↑", True,
          "Zero-shot accuracy on the probe set's class labels, model intact."),
    Score("zeroshot_replaced", "Zero-shot, heads → TEXTSPAN ↑", True,
          "Zero-shot accuracy with the analysed heads replaced by their TEXTSPAN reconstruction."),
    Score("label_agreement", "Label agreement (toy world) ↑", True,
          "Share of labelled heads whose label matches the attribute that best separates them (ground truth)."),
)


def available_scores(frame: pd.DataFrame) -> list[Score]:
    """Scores that at least one run has a value for."""
    return [s for s in SCORES if s.column in frame and frame[s.column].notna().any()]


def score_bars(frame: pd.DataFrame, score: Score) -> alt.LayerChart:
    """One score: a bar per run, best first (largest first, or smallest first when lower is better)."""
    sub = frame.loc[frame[score.column].notna(), ["run", "model", "pretrained", score.column]]
    order = sub.sort_values(score.column, ascending=not score.higher_is_better)["run"].tolist()
    base = alt.Chart(sub).encode(
        x=alt.X(f"{score.column}:Q", title=None, scale=alt.Scale(domain=[0, score.top])),
        y=alt.Y("run:N", sort=order, title=None),
        tooltip=["run", "model", "pretrained", alt.Tooltip(f"{score.column}:Q", format=".3f")],
    )
    bars = base.mark_bar(color="#4c78a8" if score.higher_is_better else "#e45756")
    labels = base.mark_text(align="left", dx=3, fontSize=11).encode(text=alt.Text(f"{score.column}:Q", format=".3g"))
    return (bars + labels).properties(title=score.title, width=170, height=alt.Step(24))


def score_rankings(frame: pd.DataFrame, columns: int = 3) -> alt.ConcatChart | None:
    """Every available score ranked side by side; None when no run has a score."""
    charts = [score_bars(frame, s) for s in available_scores(frame)]
    return alt.concat(*charts, columns=columns) if charts else None


def property_colours(properties) -> tuple[list[str], list[str]]:
    """(domain, colours): one colour per property, the same in every chart; 'mixed' grey and last."""
    named = sorted({p for p in properties if p and p != MIXED})
    domain = named + [MIXED]
    colours = [TABLEAU20[i % len(TABLEAU20)] for i in range(len(named))] + [MIXED_COLOUR]
    return domain, colours


def head_grid(frame: pd.DataFrame, title: str, domain: list[str], colours: list[str]) -> alt.Chart:
    """Layer x head cells coloured by property, opacity by association; clicking a cell selects it.

    ``frame``: layer, head, property, association (may be null), texts (a tooltip line).
    """
    frame = frame.assign(shade=frame["association"].fillna(0.0).clip(0.0, 1.0))
    selection = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", toggle=False)
    return alt.Chart(frame).mark_rect(stroke="white", strokeWidth=1.5).encode(
        x=alt.X("head:O", title="head"),
        y=alt.Y("layer:O", title="layer", sort="descending"),
        color=alt.Color("property:N", scale=alt.Scale(domain=domain, range=colours), title="property"),
        opacity=alt.Opacity("shade:Q", scale=alt.Scale(domain=[0, 1], range=[0.25, 1.0]), legend=None),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("head:O"), "property:N",
                 alt.Tooltip("association:Q", format=".2f"), alt.Tooltip("texts:N", title="top texts")],
    ).add_params(selection).properties(title=title, width=alt.Step(30), height=alt.Step(30))


def variance_bars(frame: pd.DataFrame) -> alt.LayerChart:
    """A head's TEXTSPAN picks in rank order: cumulative variance explained, one bar per text."""
    frame = frame.assign(label=[f"{r}. {t}" for r, t in zip(frame["rank"], frame["text"])])
    base = alt.Chart(frame).encode(
        x=alt.X("variance_explained:Q", title="cumulative share of the head's variance explained",
                scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("label:N", sort=frame["label"].tolist(), title=None, axis=alt.Axis(labelLimit=360)),
        tooltip=["rank", "text", "property", alt.Tooltip("variance_explained:Q", format=".3f")],
    )
    bars = base.mark_bar(color="#4c78a8")
    text = base.mark_text(align="left", dx=3, fontSize=11).encode(text=alt.Text("variance_explained:Q", format=".2f"))
    return (bars + text).properties(height=alt.Step(24))


def projection_histogram(values, marks: pd.DataFrame | None = None, title: str = "projection",
                         bins: int = 40) -> alt.LayerChart:
    """How a head's projection is spread over the probe set: a histogram of ``values`` [n], with a labelled
    vertical rule per row of ``marks`` (columns ``what``, ``value``): where a text or an upload lands."""
    frame = pd.DataFrame({"projection": pd.Series(values, dtype="float64")})
    bars = alt.Chart(frame).mark_bar(color="#4c78a8", opacity=0.8).encode(
        x=alt.X("projection:Q", bin=alt.Bin(maxbins=bins), title=title),
        y=alt.Y("count():Q", title="images"),
        tooltip=[alt.Tooltip("count():Q", title="images")],
    )
    chart = bars
    if marks is not None and not marks.empty:
        rules = alt.Chart(marks).mark_rule(color="#e45756", strokeWidth=2).encode(
            x="value:Q", tooltip=["what:N", alt.Tooltip("value:Q", format=".3g")])
        text = alt.Chart(marks).mark_text(align="left", dx=4, dy=-6, color="#e45756", fontSize=11).encode(
            x="value:Q", y=alt.value(8), text="what:N")
        chart = bars + rules + text
    return chart.properties(height=200)
