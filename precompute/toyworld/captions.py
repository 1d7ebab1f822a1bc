"""The toy world's vocabulary, its captions and its zero-shot prompts.

One vocabulary for the whole project: the attribute names below are the column
names of ``attributes.parquet`` and the ``property`` tags of the toyworld text
pool. Value lists are disjoint across attributes, so a word in a caption names
exactly one attribute (``one`` is a count, ``gray`` a background colour, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart"),
    "color": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"),
    "position": ("top left", "top right", "center", "bottom left", "bottom right"),
    "size": ("small", "large"),
    "count": ("one", "two", "three"),
    "pattern": ("plain", "striped", "dotted", "checkered", "grid"),
    "background": ("black", "gray", "white", "brown"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
PLURALS: dict[str, str] = {"cross": "crosses"}


def plural(noun: str) -> str:
    """English plural of a shape noun."""
    return PLURALS.get(noun, noun + "s")


@dataclass(frozen=True)
class CaptionDropout:
    """Probability that a caption leaves an attribute out (0 = always named)."""

    shape: float = 0.15  # rarely dropped: shape and position are what a shortcut would skip
    color: float = 0.3
    position: float = 0.15
    size: float = 0.3
    count: float = 0.3
    pattern: float = 0.4
    background: float = 0.4
    single: float = 0.3  # share of captions that name one attribute only (chosen uniformly), like a zero-shot prompt

    def keep_probabilities(self) -> np.ndarray:
        """[a] probability that each attribute, in ATTRIBUTE_NAMES order, is named."""
        return np.array([1.0 - getattr(self, a) for a in ATTRIBUTE_NAMES])


NO_DROPOUT = CaptionDropout(**{a: 0.0 for a in ATTRIBUTE_NAMES}, single=0.0)

# A caption is a template over three phrases: the objects, where they are, and the background.
TEMPLATES: tuple[str, ...] = (
    "{objects} {where} {ground}",
    "a photo of {objects} {where} {ground}",
    "an image of {objects} {where} {ground}",
    "{Ground} with {objects} {where}",
    "{Where}, {objects} {ground}",
    "a picture with {objects} {where} {ground}",
)


def _objects_phrase(values: dict[str, str], named: dict[str, bool]) -> str:
    count = values["count"]
    many = count != "one"
    noun = values["shape"] if named["shape"] else "object"
    words = [count if named["count"] else ("" if many else "a")]
    words += [values["size"] if named["size"] else "", values["color"] if named["color"] else ""]
    words.append(plural(noun) if many else noun)
    phrase = " ".join(w for w in words if w)
    if phrase.startswith("a ") and phrase[2] in "aeiou":
        phrase = "an " + phrase[2:]
    return phrase


def _ground_phrase(values: dict[str, str], named: dict[str, bool]) -> str:
    words = [values["pattern"] if named["pattern"] else "", values["background"] if named["background"] else ""]
    words = [w for w in words if w]
    if not words:
        return ""
    return "a " + " ".join(words) + " background"


def caption(values: dict[str, str], named: dict[str, bool], template: int) -> str:
    """One caption naming exactly the attributes flagged in ``named`` (attribute -> value words)."""
    objects = _objects_phrase(values, named)
    where = ("at the " + values["position"]) if named["position"] else ""
    ground = _ground_phrase(values, named)
    text = TEMPLATES[template % len(TEMPLATES)]
    if not ground and "{Ground}" in text:
        text = TEMPLATES[0]
    if not where and "{Where}" in text:
        text = TEMPLATES[0]
    text = text.format(
        objects=objects,
        where=where,
        Where=where[:1].upper() + where[1:],
        ground=("on " + ground) if ground else "",
        Ground=ground[:1].upper() + ground[1:],
    )
    return re.sub(r"\s+", " ", text).strip().replace(" ,", ",")


# Zero-shot prompts: each varies one attribute only; accuracy is averaged over templates' mean embedding.
PROMPTS: dict[str, tuple[str, ...]] = {
    "shape": ("a {}", "a photo of a {}", "an image of a {}"),
    "color": ("a {} object", "a photo of a {} object", "an image of a {} object"),
    "position": ("an object at the {}", "a photo of an object at the {}", "an image of an object at the {}"),
    "size": ("a {} object", "a photo of a {} object", "an image of a {} object"),
    "count": ("{} objects", "a photo of {} objects", "an image of {} objects"),
    "pattern": ("a {} background", "a photo of a {} background", "an image of a {} background"),
    "background": ("a {} background", "a photo of a {} background", "an image of a {} background"),
}


def prompts(attribute: str) -> list[list[str]]:
    """[value][template] prompt texts for one attribute, grammatical (a/an, plural)."""
    out = []
    for value in ATTRIBUTES[attribute]:
        texts = []
        for template in PROMPTS[attribute]:
            text = template.format(value)
            if attribute == "count" and value == "one":
                text = text.replace("one objects", "one object")
            text = re.sub(r"\ba ([aeiou])", r"an \1", text)
            texts.append(text)
        out.append(texts)
    return out


def mentioned(text: str) -> dict[str, list[str]]:
    """Attribute -> values whose words appear in ``text`` (whole words; shape plurals count)."""
    found: dict[str, list[str]] = {}
    lower = text.lower()
    for attribute, values in ATTRIBUTES.items():
        for value in values:
            forms = [value, plural(value)] if attribute == "shape" else [value]
            if any(re.search(r"\b" + re.escape(form) + r"\b", lower) for form in forms):
                found.setdefault(attribute, []).append(value)
    return found
