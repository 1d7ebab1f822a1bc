"""TEXTSPAN: the product path against the data-matrix reference, planted heads, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.errors import InputError, InterpretError
from precompute.textspan import (
    accumulate_gram,
    gram_stats,
    merge_gram,
    reconstruct,
    textspan,
    textspan_from_gram,
    textspan_from_stats,
    textspan_reference,
)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def white(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """[n, k] coefficients whose sample covariance is exactly the identity."""
    z = rng.standard_normal((n, k))
    z -= z.mean(axis=0)
    q, _ = np.linalg.qr(z)  # [n, k] orthonormal columns, still centred
    return q * np.sqrt(n)


def planted_head(rng, n=3000, d=96, m=400, n_planted=8, ratio=0.75, noise=1e-3):
    """A head that is a sum of known text directions with well-separated variances.

    Returns (vectors [n, d], texts [m, d], planted text indices in variance order).
    """
    texts = unit_rows(rng.standard_normal((m, d)))  # [m, d]
    planted = rng.choice(m, n_planted, replace=False)
    sigma = ratio ** np.arange(n_planted)  # std of each planted direction
    coeff = white(rng, n, n_planted) * sigma  # [n, p]
    vectors = coeff @ texts[planted] + rng.standard_normal(d) + noise * rng.standard_normal((n, d))  # [n, d]
    return vectors, texts, planted


def random_head(rng, n=2000, d=64, m=300, k_dirs=40):
    """An unplanted head: anisotropic Gaussian with a random mean, texts with a shared component."""
    basis = rng.standard_normal((k_dirs, d))
    vectors = (rng.standard_normal((n, k_dirs)) * 0.9 ** np.arange(k_dirs)) @ basis + rng.standard_normal(d)
    texts = unit_rows(rng.standard_normal((m, d)) + 0.8 * rng.standard_normal(d))  # CLIP texts share a direction
    return vectors, texts


@pytest.mark.parametrize("seed", range(6))
def test_product_path_matches_reference_on_random_heads(seed):
    rng = np.random.default_rng(seed)
    vectors, texts = random_head(rng)
    fast = textspan(vectors, texts, k=15, rank=30)
    ref = textspan_reference(vectors, texts, k=15, rank=30)
    np.testing.assert_array_equal(fast.picks, ref.picks)
    np.testing.assert_allclose(fast.variance_explained, ref.variance_explained, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.total_variance, ref.total_variance, rtol=1e-10)
    assert fast.rank == ref.rank == 30


@pytest.mark.parametrize("seed", range(3))
def test_product_path_matches_float32_reference_on_planted_heads(seed):
    rng = np.random.default_rng(100 + seed)
    vectors, texts, planted = planted_head(rng)
    c32, r32 = vectors.astype(np.float32), texts.astype(np.float32)
    fast = textspan(c32, r32, k=8, rank=40)
    ref = textspan_reference(c32, r32, k=8, rank=40)
    np.testing.assert_array_equal(fast.picks, ref.picks)
    np.testing.assert_allclose(fast.variance_explained, ref.variance_explained, rtol=1e-4)
    np.testing.assert_allclose(reconstruct(c32, fast), reconstruct(c32, ref), atol=1e-4)


def test_recovers_planted_texts_in_variance_order():
    rng = np.random.default_rng(7)
    vectors, texts, planted = planted_head(rng, n=4000, d=128, m=600, n_planted=6, ratio=0.7)
    result = textspan(vectors, texts, k=6, rank=80)
    np.testing.assert_array_equal(result.picks, planted)
    # six texts carry all the variance except the 1e-3 noise
    assert result.variance_explained[-1] == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff(result.variance_explained) > 0)
    # the first pick alone explains about sigma_1^2 / sum sigma^2 (texts are nearly orthogonal)
    sig2 = 0.7 ** (2 * np.arange(6))
    assert result.variance_explained[0] == pytest.approx(sig2[0] / sig2.sum(), abs=0.03)


def test_reconstruct_is_exact_when_the_head_lies_in_the_span_of_its_picks():
    rng = np.random.default_rng(3)
    d, m = 48, 60
    texts = unit_rows(rng.standard_normal((m, d)))
    coeff = rng.standard_normal((500, 3)) * [3.0, 2.0, 1.0]  # [n, 3]
    vectors = coeff @ texts[[5, 17, 40]] + rng.standard_normal(d)  # [n, d]
    result = textspan(vectors, texts, k=3, rank=20)
    assert sorted(result.picks.tolist()) == [5, 17, 40]
    np.testing.assert_allclose(reconstruct(vectors, result), vectors, atol=1e-9)
    assert result.variance_explained[-1] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(result.basis @ result.basis.T, np.eye(3), atol=1e-12)


def test_reconstruct_equals_sum_of_deflated_projections():
    rng = np.random.default_rng(11)
    vectors, texts = random_head(rng, n=400, d=32, m=80, k_dirs=20)
    result = textspan(vectors, texts, k=6, rank=20)
    # the reference code's accumulation: add (C t / t.t) t^T of the deflated data at every step
    _, _, vh = np.linalg.svd(vectors, full_matrices=False)
    r = texts @ vh[:20].T @ vh[:20]
    c = vectors - vectors.mean(axis=0)
    recon = np.tile(vectors.mean(axis=0), (len(c), 1))
    for j in result.picks:
        t = r[j].copy()
        recon += np.outer(c @ t / (t @ t), t)
        c -= np.outer(c @ t / (t @ t), t)
        r -= np.outer(r @ t / (t @ t), t)
    np.testing.assert_allclose(reconstruct(vectors, result), recon, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_gram_and_uncentred_gram_give_the_same_result(dtype):
    rng = np.random.default_rng(5)
    vectors, texts = random_head(rng, n=1500, d=40, m=120, k_dirs=30)
    vectors = vectors.astype(dtype)
    whole = textspan(vectors, texts, k=10, rank=25)
    stats = accumulate_gram(np.array_split(vectors, 7))
    assert stats.n == 1500
    chunked = textspan_from_stats(stats, texts, k=10, rank=25)
    plain = textspan_from_gram(vectors.T @ vectors, vectors.mean(axis=0), len(vectors), texts, k=10, rank=25)
    for other in (chunked, plain):
        np.testing.assert_array_equal(other.picks, whole.picks)
        np.testing.assert_allclose(other.variance_explained, whole.variance_explained, rtol=1e-5)
        np.testing.assert_allclose(other.mean, whole.mean, atol=1e-5)  # the plain branch takes a float32 mean


def test_a_large_mean_does_not_cost_float32_accuracy():
    # mean 200x the spread: an uncentred float32 Gram would lose the spread to cancellation
    rng = np.random.default_rng(8)
    vectors, texts = random_head(rng, n=3000, d=48, m=150, k_dirs=30)
    vectors = vectors + 200 * rng.standard_normal(48)
    fast = textspan(vectors.astype(np.float32), texts.astype(np.float32), k=10, rank=30)
    exact = textspan_reference(vectors, texts, k=10, rank=30)
    np.testing.assert_array_equal(fast.picks, exact.picks)
    np.testing.assert_allclose(fast.variance_explained, exact.variance_explained, rtol=1e-4)


def test_rank_is_clipped_to_the_actual_rank_of_the_head():
    rng = np.random.default_rng(2)
    d = 64
    vectors = rng.standard_normal((300, 3)) @ rng.standard_normal((3, d)) + rng.standard_normal(d)  # rank 4
    texts = unit_rows(rng.standard_normal((50, d)))
    fast = textspan(vectors.astype(np.float32), texts, k=10, rank=80)
    ref = textspan_reference(vectors.astype(np.float32), texts, k=10, rank=80)
    assert fast.rank == ref.rank == 4  # 3 directions of spread + the mean
    # four picks exhaust the 4-dim span: the loop stops instead of picking zero texts
    assert len(fast.picks) == len(ref.picks) == 4
    np.testing.assert_array_equal(fast.picks, ref.picks)
    assert fast.variance_explained[-1] == pytest.approx(1.0, abs=1e-5)


def spectrum_head(rng, n: int, d: int, r: int, smallest: float) -> np.ndarray:
    """[n, d] float32 of rank r whose singular values fall geometrically from 1 to ``smallest``."""
    u, _ = np.linalg.qr(rng.standard_normal((n, r)))  # [n, r] orthonormal columns
    v, _ = np.linalg.qr(rng.standard_normal((d, r)))  # [d, r]
    return ((u * np.geomspace(1.0, smallest, r)) @ v.T).astype(np.float32)  # [n, r] -> [n, d]


@pytest.mark.parametrize("d", [512, 768])
def test_a_probe_set_smaller_than_the_head_keeps_every_real_direction(d):
    # 40 images, fewer than a ViT head's rank 64: all 40 directions are real, the smallest at 2e-4 of the largest
    # (the old rule, eigenvalue > 1e-6 x the head's variance, kept 30 of them)
    rng = np.random.default_rng(11)
    vectors = spectrum_head(rng, 40, d, 40, 2e-4)
    texts = unit_rows(rng.standard_normal((200, d)))
    fast = textspan(vectors, texts, k=20, rank=80)
    ref = textspan_reference(vectors, texts, k=20, rank=80)
    assert fast.rank == ref.rank == 40  # and none of the d - 40 empty directions


@pytest.mark.parametrize("d", [512, 768])
def test_float32_rounding_directions_are_dropped_when_images_outnumber_the_head_rank(d):
    # 500 images of a rank-64 head with a large mean: 65 real directions; the other d - 65 hold only the
    # float32 rounding of the stored vectors, which sits below sigma_max x max(n, d) x eps
    rng = np.random.default_rng(12)
    spread = spectrum_head(rng, 500, d, 64, 1e-2).astype(np.float64) * np.sqrt(500)
    vectors = (spread + 3 * rng.standard_normal(d)).astype(np.float32)
    texts = unit_rows(rng.standard_normal((200, d)))
    fast = textspan(vectors, texts, k=20, rank=80)
    ref = textspan_reference(vectors, texts, k=20, rank=80)
    assert fast.rank == ref.rank == 65


def test_few_images_fewer_than_k():
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((5, 32))
    texts = unit_rows(rng.standard_normal((50, 32)))
    result = textspan(vectors, texts, k=20, rank=80)
    assert result.rank == 5 and len(result.picks) == 5
    assert len(set(result.picks.tolist())) == 5
    assert result.variance_explained[-1] == pytest.approx(1.0, abs=1e-9)


def test_spent_texts_are_never_picked_again():
    rng = np.random.default_rng(4)
    d = 24
    base = unit_rows(rng.standard_normal((10, d)))
    texts = np.vstack([base, base[:3], np.zeros((2, d))])  # 3 duplicates and 2 zero texts
    vectors = rng.standard_normal((400, d)) * 1.5 ** -np.arange(d)
    for run in (textspan, textspan_reference):
        result = run(vectors, texts, k=20, rank=24)
        picks = result.picks.tolist()
        assert len(picks) == len(set(picks)) == 10  # 10 independent texts, nothing else left
        assert not {13, 14} & set(picks)
        # a text and its duplicate are never both picked
        for i in range(3):
            assert not {i, 10 + i} <= set(picks)


def test_more_picks_than_texts_stops_at_the_number_of_texts():
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((200, 16))
    texts = unit_rows(rng.standard_normal((4, 16)))
    result = textspan(vectors, texts, k=10, rank=16)
    assert sorted(result.picks.tolist()) == [0, 1, 2, 3]


def test_result_is_read_only():
    rng = np.random.default_rng(1)
    vectors, texts = random_head(rng, n=100, d=16, m=20, k_dirs=8)
    result = textspan(vectors, texts, k=3, rank=8)
    with pytest.raises(ValueError):
        result.picks[0] = 99
    np.testing.assert_allclose(result.increments.sum(), result.variance_explained[-1])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"k": 30, "rank": 20}, "k=30"),
        ({"k": 0}, "k=0"),
        ({"rank": 0, "k": 1}, "rank=0"),
    ],
)
def test_bad_k_and_rank_are_input_errors(kwargs, needle):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8))
    texts = unit_rows(rng.standard_normal((10, 8)))
    for run in (textspan, textspan_reference):
        with pytest.raises(InputError, match=needle):
            run(vectors, texts, **kwargs)


def test_degenerate_inputs_are_input_errors():
    rng = np.random.default_rng(0)
    texts = unit_rows(rng.standard_normal((10, 8)))
    with pytest.raises(InputError, match="n=1"):
        textspan(rng.standard_normal((1, 8)), texts, k=2, rank=4)
    with pytest.raises(InputError, match="do not vary"):
        textspan(np.ones((20, 8)), texts, k=2, rank=4)
    with pytest.raises(InputError, match="width"):
        textspan(rng.standard_normal((20, 9)), texts, k=2, rank=4)
    with pytest.raises(InputError, match="NaN"):
        textspan(np.full((20, 8), np.nan), texts, k=2, rank=4)
    with pytest.raises(InputError, match="2-D"):
        textspan(rng.standard_normal(8), texts)
    a = gram_stats(rng.standard_normal((10, 8)))
    b = gram_stats(rng.standard_normal((10, 8)))
    with pytest.raises(InterpretError, match="shift"):
        merge_gram(a, b)
    with pytest.raises(InputError, match="empty"):
        accumulate_gram([])
