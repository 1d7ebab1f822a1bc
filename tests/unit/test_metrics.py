"""Scores on hand-computed examples: every expected number is worked out in the comment beside it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from precompute.errors import InputError
from precompute.metrics import (
    HeadInput,
    association,
    attribute_r2,
    best_attribute,
    ccs,
    entanglement,
    model_scores,
    score_heads,
    variance_at,
    zero_shot_accuracy,
)

TOP = ["colour", "colour", "shape", None, "colour", "colour", "colour"]


def test_association_counts_the_top_k_only():
    # top 5: colour, colour, shape, None, colour -> 3 of 5 are colour
    assert association("colour", TOP) == pytest.approx(0.6)
    assert association("shape", TOP) == pytest.approx(0.2)  # 1 of 5
    assert association("colour", TOP, k=2) == pytest.approx(1.0)  # colour, colour
    assert association("size", TOP) == 0.0
    assert association("mixed", TOP) is None
    # a head with only 2 picks: 1 of the 2 it has
    assert association("shape", ["shape", "colour"]) == pytest.approx(0.5)


def test_ccs_is_the_count_over_the_top_5():
    assert ccs("colour", TOP) == 3
    assert ccs("shape", TOP) == 1
    assert ccs("colour", TOP, k=7) == 5  # all five colour picks among the seven
    assert ccs("mixed", TOP) is None
    with pytest.raises(InputError, match="k=0"):
        ccs("colour", TOP, k=0)


def test_entanglement_per_head_and_score():
    props = ["colour", "shape", "colour", "mixed", "size", "shape", "count"]
    per_head, score = entanglement(props)
    # colour x2 and shape x2 are shared; size and count are unique; mixed is unlabelled
    assert per_head == [True, True, True, None, False, True, False]
    assert score == pytest.approx(4 / 6)  # 4 entangled among 6 labelled heads
    assert entanglement(["mixed", "mixed"]) == ([None, None], None)
    assert entanglement(["a", "b", "c"])[1] == 0.0


def test_variance_at():
    assert variance_at([0.2, 0.35, 0.5, 0.6, 0.66, 0.7], 5) == pytest.approx(0.66)
    assert variance_at([0.2, 0.35], 5) == pytest.approx(0.35)  # fewer picks: all of them
    assert variance_at([], 5) is None


def test_attribute_r2_hand_computed():
    # d = 1 for readability; two classes a: {0, 2}, b: {4, 6}; mean 3
    # total SS = 9 + 1 + 1 + 9 = 20; class means 1 and 5 -> between = 2*4 + 2*4 = 16
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert attribute_r2(x, ["a", "a", "b", "b"]) == pytest.approx(16 / 20)
    # interleaved classes a: {0, 4}, b: {2, 6}: class means 2 and 4 -> between = 2*1 + 2*1 = 4
    assert attribute_r2(x, ["a", "b", "a", "b"]) == pytest.approx(4 / 20)
    # d = 2, second dim = 2 x first: total = 20 + 4*20 = 100, between = 16 + 4*16 = 80
    x2 = np.hstack([x, 2 * x])
    assert attribute_r2(x2, [0, 0, 1, 1]) == pytest.approx(80 / 100)
    # None leaves the image out: {0, 2} vs {6}; mean 8/3; total = 64/9 + 4/9 + 100/9 = 168/9;
    # between = 2 (1 - 8/3)^2 + (6 - 8/3)^2 = 50/9 + 100/9 = 150/9
    assert attribute_r2(x, ["a", "a", None, "b"]) == pytest.approx(150 / 168)
    assert attribute_r2(x, ["a"] * 4) == 0.0
    assert math.isnan(attribute_r2(np.ones((4, 3)), ["a", "a", "b", "b"]))


def test_best_attribute_picks_the_highest_r2():
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    name, r2 = best_attribute(x, {"stripes": ["a", "b", "a", "b"], "colour": ["r", "r", "g", "g"], "none": [None] * 4})
    assert name == "colour" and r2 == pytest.approx(0.8)
    assert best_attribute(x, {})[0] is None


def test_zero_shot_accuracy():
    e = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.2, 0.8]])
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    # predictions 0, 1, 0, 1 vs labels 0, 1, 1, 1 -> 3 of 4
    assert zero_shot_accuracy(e, w, [0, 1, 1, 1]) == pytest.approx(0.75)
    with pytest.raises(InputError, match="0..1"):
        zero_shot_accuracy(e, w, [0, 1, 2, 1])


def test_head_and_model_scores():
    heads = [
        HeadInput(10, 0, "colour", ("colour", "colour", "shape", "colour", None, "shape"), (0.3, 0.5, 0.6, 0.7, 0.75, 0.8), best_attribute="colour"),
        HeadInput(10, 1, "colour", ("colour", "shape", "colour", None, None), (0.1, 0.2, 0.3, 0.4, 0.5), best_attribute="shape"),
        HeadInput(11, 0, "shape", ("shape", "shape", "shape", "shape", "shape"), (0.6, 0.7, 0.75, 0.8, 0.85)),
        HeadInput(11, 1, "mixed", ("a", "b", "c", "d", "e"), (0.2, 0.3, 0.4, 0.45, 0.5), best_attribute="size"),
    ]
    rows = score_heads(heads)
    # association: 3/5, 2/5, 5/5, None; ccs: 3, 2, 5, None
    assert [r.association for r in rows] == pytest.approx([0.6, 0.4, 1.0, None])
    assert [r.ccs5 for r in rows] == [3, 2, 5, None]
    # colour on two heads -> entangled; shape once -> not; mixed -> None
    assert [r.entangled for r in rows] == [True, True, False, None]
    assert [r.variance_top5 for r in rows] == pytest.approx([0.75, 0.5, 0.85, 0.5])
    assert [r.variance_topk for r in rows] == pytest.approx([0.8, 0.5, 0.85, 0.5])
    assert [r.label_agrees for r in rows] == [True, False, None, None]

    model = model_scores(rows, zeroshot_intact=0.9, zeroshot_replaced=0.85)
    assert (model.n_heads, model.n_labelled, model.n_properties) == (4, 3, 2)
    assert model.association == pytest.approx((0.6 + 0.4 + 1.0) / 3)  # 0.6667
    assert model.ccs5_mean == pytest.approx((3 + 2 + 5) / 3)
    assert model.entanglement == pytest.approx(2 / 3)
    assert model.variance_top5 == pytest.approx((0.75 + 0.5 + 0.85 + 0.5) / 4)  # 0.65
    assert model.variance_topk == pytest.approx((0.8 + 0.5 + 0.85 + 0.5) / 4)  # 0.6625
    assert model.label_agreement == pytest.approx(0.5)  # 1 of the 2 labelled heads with ground truth
    assert model.zeroshot_replaced == 0.85

    with pytest.raises(InputError, match="duplicate"):
        score_heads([heads[0], heads[0]])
