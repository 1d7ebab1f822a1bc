"""One glossary for every page: the readable name, the one-line meaning and the number format of each score column.

Pages never show a raw column name (``variance_topk``, ``best_attribute_r2``) or notation (``r[4,0]``) without
its words: tables get ``column_config(frame)``, captions ``title(column)`` and ``HEAD_VECTOR``. The maths behind
each score: docs/design.md section 4.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    title: str
    help: str
    format: str | None = "%.3f"  # printf format for numbers; None: not a number
    higher_is_better: bool | None = None  # for scores that rank models


TERMS: dict[str, Term] = {
    "association": Term("Association", "Share of a head's top-5 TEXTSPAN texts that carry the head's property "
                        "(for a model: the mean over its labelled heads).", higher_is_better=True),
    "ccs5": Term("CCS@5", "Concept consistency: how many of the head's top 5 texts carry its property (0 to 5).",
                 "%.0f", True),
    "ccs5_mean": Term("CCS@5 (mean)", "How many of a head's top 5 texts carry its property (0 to 5); mean over "
                      "the model's labelled heads.", "%.2f", True),
    "entangled": Term("Entangled", "Another head of the model has the same property.", None),
    "entanglement": Term("Entanglement", "Share of labelled heads whose property another head of the model also "
                         "has (lower is better: fewer heads share a property).", higher_is_better=False),
    "variance_top5": Term("Variance explained, top 5", "Fraction of the head's variance over the probe set that "
                          "its first 5 TEXTSPAN texts explain (a model: mean over heads).", higher_is_better=True),
    "variance_topk": Term("Variance explained, all texts", "Fraction of the head's variance that all its stored "
                          "TEXTSPAN texts explain (a model: mean over heads).", higher_is_better=True),
    "head_variance": Term("Head variance", "Total variance of the head's output over the probe set: how much "
                          "this head's term of the embedding changes from image to image.", "%.4g"),
    "best_attribute": Term("Ground truth: best attribute", "The probe set's attribute (shape, colour, ...) whose "
                           "values best separate this head's outputs.", None),
    "best_attribute_r2": Term("Ground truth: R² of that attribute", "Share of the head's variance that the best "
                              "attribute's values explain (0 to 1).", "%.2f"),
    "label_agrees": Term("Label matches ground truth", "The head's property label names its best attribute.", None),
    "label_agreement": Term("Label agreement (toy world)", "Share of labelled heads whose label matches the "
                            "attribute that best separates them (ground truth).", higher_is_better=True),
    "zeroshot_intact": Term("Zero-shot accuracy", "Zero-shot accuracy on the probe set's class labels, model "
                            "intact.", higher_is_better=True),
    "zeroshot_replaced": Term("Zero-shot, heads → TEXTSPAN", "Zero-shot accuracy with the analysed heads replaced "
                              "by their TEXTSPAN reconstruction.", higher_is_better=True),
    "n_heads": Term("Heads analysed", "Heads of the analysed layers.", "%d"),
    "n_labelled": Term("Heads labelled", "Heads with a property label (not 'mixed').", "%d"),
    "n_properties": Term("Properties", "Distinct property labels among the heads.", "%d"),
    "score": Term("Score", "The similarity this analysis ranks by (its caption says which).", "%.4g"),
    "similarity": Term("Similarity", "How the neighbours were ranked.", None),
    "property": Term("Property", "The head's label: the property its TEXTSPAN texts share (or a correction).", None),
    "labeller": Term("Labelled by", "Which labeller named the head: the pool's property tags, an LLM, or a "
                     "person's correction.", None),
}

HEAD_VECTOR = "the head's output (its exact term of the image embedding)"  # what the maths writes r[l,h]


def title(column: str) -> str:
    """The readable name of a column (the column itself when the glossary has no entry)."""
    term = TERMS.get(column)
    return term.title if term else column


def help_text(column: str) -> str | None:
    term = TERMS.get(column)
    return term.help if term else None


def column_config(frame) -> dict:
    """``st.dataframe`` column_config giving every glossary column of ``frame`` its name, meaning and format."""
    import streamlit as st  # here only: charts.py builds on TERMS and stays free of streamlit

    config = {}
    for column in frame.columns:
        term = TERMS.get(column)
        if term is None:
            continue
        if term.format is not None:
            config[column] = st.column_config.NumberColumn(term.title, help=term.help, format=term.format)
        else:
            config[column] = st.column_config.Column(term.title, help=term.help)
    return config
