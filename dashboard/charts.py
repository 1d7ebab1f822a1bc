"""Pure Altair builders: (frame, ...) -> chart. No streamlit, no data access."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd

from dashboard.glossary import TERMS
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


SCORES = tuple(  # the model scores in the order Rankings shows them; names and meanings from the glossary
    Score(column, f"{TERMS[column].title} {'↑' if TERMS[column].higher_is_better else '↓ (lower is better)'}",
          bool(TERMS[column].higher_is_better), TERMS[column].help, top)
    for column, top in (("association", 1.0), ("entanglement", 1.0), ("ccs5_mean", 5.0), ("variance_top5", 1.0),
                        ("variance_topk", 1.0), ("zeroshot_intact", 1.0), ("zeroshot_replaced", 1.0),
                        ("label_agreement", 1.0))
)


def available_scores(frame: pd.DataFrame) -> list[Score]:
    """Scores that at least one run has a value for."""
    return [s for s in SCORES if s.column in frame and frame[s.column].notna().any()]


def model_colours(runs) -> tuple[list[str], list[str]]:
    """(runs in one fixed order, one colour each): the same order and colour for a model in every panel."""
    order = sorted({str(r) for r in runs})
    return order, [TABLEAU20[i % len(TABLEAU20)] for i in range(len(order))]


def score_bars(frame: pd.DataFrame, score: Score, order: list[str], colours: list[str]) -> alt.LayerChart:
    """One score: a bar per run in the fixed ``order`` and colours of ``model_colours``, each bar labelled with
    its value and its rank on this score (#1 = best: largest, or smallest where lower is better)."""
    sub = frame.loc[frame[score.column].notna(), ["run", "model", "pretrained", score.column]].copy()
    rank = sub[score.column].rank(ascending=not score.higher_is_better, method="min").astype(int)
    sub["shown"] = [f"{v:.3g}  #{r}" for v, r in zip(sub[score.column], rank)]
    base = alt.Chart(sub).encode(
        x=alt.X(f"{score.column}:Q", title=None, scale=alt.Scale(domain=[0, score.top])),
        y=alt.Y("run:N", sort=order, title=None),
        tooltip=["run", "model", "pretrained", alt.Tooltip(f"{score.column}:Q", format=".3f")],
    )
    bars = base.mark_bar().encode(color=alt.Color("run:N", scale=alt.Scale(domain=order, range=colours),
                                                  legend=None))
    labels = base.mark_text(align="left", dx=3, fontSize=11).encode(text="shown:N")
    return (bars + labels).properties(title=score.title, width=170, height=alt.Step(24))


def score_rankings(frame: pd.DataFrame, columns: int = 3) -> alt.ConcatChart | None:
    """Every available score side by side, the models in one order and colour throughout; None without scores."""
    order, colours = model_colours(frame["run"]) if "run" in frame else ([], [])
    charts = [score_bars(frame, s, order, colours) for s in available_scores(frame)]
    return alt.concat(*charts, columns=columns) if charts else None


def property_colours(properties) -> tuple[list[str], list[str]]:
    """(domain, colours): one colour per property, the same in every chart; 'mixed' grey and last."""
    named = sorted({p for p in properties if p and p != MIXED})
    domain = named + [MIXED]
    colours = [TABLEAU20[i % len(TABLEAU20)] for i in range(len(named))] + [MIXED_COLOUR]
    return domain, colours


def short_label(prop: str | None, width: int = 5) -> str:
    """A property as it fits in a grid cell: 'background' -> 'backg', 'mixed' -> '·'."""
    if not prop or prop == MIXED:
        return "·"
    return prop if len(prop) <= width else prop[:width - 1] + "."


def head_grid(frame: pd.DataFrame, title: str, domain: list[str], colours: list[str]) -> alt.LayerChart:
    """Layer x head cells coloured by property (hue only, one colour per property) with the property written in
    each cell; clicking a cell selects it.

    ``frame``: layer, head, property, association (may be null), texts (a tooltip line).
    """
    frame = frame.assign(cell=[short_label(p) for p in frame["property"]])
    selection = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", toggle=False)
    base = alt.Chart(frame).encode(
        x=alt.X("head:O", title="head"),
        y=alt.Y("layer:O", title="layer", sort="descending"),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("head:O"), "property:N",
                 alt.Tooltip("association:Q", format=".2f", title=TERMS["association"].title),
                 alt.Tooltip("texts:N", title="top texts")],
    )
    cells = base.mark_rect(stroke="white", strokeWidth=1.5).encode(
        color=alt.Color("property:N", scale=alt.Scale(domain=domain, range=colours), title="property"))
    text = base.mark_text(fontSize=9, color="black").encode(text="cell:N")
    hit = base.mark_rect(opacity=0).add_params(selection)  # on top of the text, so a click anywhere in a cell selects
    return (cells + text + hit).properties(title=title, width=alt.Step(44), height=alt.Step(30))


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
