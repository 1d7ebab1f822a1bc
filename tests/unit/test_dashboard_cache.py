"""The dashboard's memory at scale: the byte-capped cache, float16 head matrices, stored head summaries."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from dashboard import data, memcache, state
from precompute import analysis
from precompute import derived
from precompute.errors import InputError
from precompute.stage_textspan import head_stats
from tests.fixtures.runs import make_run

# --------------------------------------------------------------------------- ByteCache


def test_the_byte_cap_evicts_the_least_recently_used_entries():
    cache = memcache.ByteCache(capacity=3000)
    for key in "abc":
        cache.get(key, lambda: np.zeros(1000, np.uint8))
    assert cache.keys() == ["a", "b", "c"] and cache.size == 3000
    cache.get("a", lambda: pytest.fail("a is cached"))  # a is now the most recently used
    cache.get("d", lambda: np.zeros(1500, np.uint8))  # 4500 bytes: b, then c, must go
    assert cache.keys() == ["a", "d"] and cache.size == 2500
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (1, 4, 2)


def test_a_value_larger_than_the_cap_is_returned_but_not_kept():
    cache = memcache.ByteCache(capacity=100)
    cache.get("small", lambda: np.zeros(50, np.uint8))
    big = cache.get("big", lambda: np.zeros(200, np.uint8))
    assert len(big) == 200 and "big" not in cache and "small" in cache
    assert cache.stats.not_kept == 1


def test_sizes_come_from_nbytes_of_arrays_and_of_objects_that_define_it():
    m = state._frozen(np.arange(10, dtype=np.int64), np.ones((10, 4), np.float32))
    assert memcache.nbytes(m) == m.nbytes == 10 * 8 + 10 * 4 * 2 + 10 * 4 + 4 * 4 + 10 * 4  # ids, vectors, norms, mean, centred norms
    assert memcache.nbytes((np.zeros(3), b"abcd")) == 3 * 8 + 4


def test_threads_asking_for_the_same_key_load_it_once():
    cache = memcache.ByteCache(capacity=10**6)
    calls = []

    def load():
        calls.append(1)
        time.sleep(0.05)
        return np.zeros(10)

    threads = [threading.Thread(target=cache.get, args=("k", load)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.stats.hits == 3


def test_a_failed_load_is_not_cached_and_can_be_retried():
    cache = memcache.ByteCache(capacity=10**6)
    with pytest.raises(OSError):
        cache.get("k", lambda: (_ for _ in ()).throw(OSError("disk")))
    assert "k" not in cache and cache.get("k", lambda: np.ones(2)).tolist() == [1, 1]


def test_the_cap_setting_is_in_mib_with_a_default_and_a_clear_error():
    assert memcache.capacity_from({}) == memcache.DEFAULT_CACHE_MB * 2**20
    assert memcache.capacity_from({memcache.ENV_CACHE_MB: "256"}) == 256 * 2**20
    assert memcache.capacity_from({memcache.ENV_CACHE_MB: "0"}) == 0
    for bad in ("lots", "-5", "nan"):
        with pytest.raises(InputError, match=f"{memcache.ENV_CACHE_MB} is '{bad}'.*MiB >= 0"):
            memcache.capacity_from({memcache.ENV_CACHE_MB: bad})


# --------------------------------------------------------------------------- float16 matrices

FP16_TOL = 1e-3  # |score16 - score32| <= FP16_TOL * |v| |q|: rounding of v, q and the result to float16


@pytest.fixture(scope="module")
def head():
    """A head-like matrix: a shared offset plus low-rank spread plus noise, [n, D]."""
    rng = np.random.default_rng(0)
    n, d = 4000, 64
    vectors = (rng.standard_normal(d) * 0.3 + rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) * 0.1
               + rng.standard_normal((n, d)) * 0.02).astype(np.float32)
    return np.arange(n, dtype=np.int64) + 10, vectors


def test_a_head_matrix_is_float16_with_exact_norms_and_mean(head):
    ids, vectors = head
    m = state._frozen(ids, vectors)
    assert m.vectors.dtype == np.float16 and m.vectors.nbytes == vectors.nbytes // 2
    np.testing.assert_allclose(m.norms, np.linalg.norm(vectors, axis=1), rtol=1e-6)
    np.testing.assert_allclose(m.mean, vectors.mean(0), rtol=1e-5, atol=1e-7)
    assert not m.vectors.flags.writeable and m.row_of(15) == 5 and m.row_of(9) is None


def test_values_beyond_float16_keep_their_matrix_in_float32():
    m = state._frozen(np.arange(2, dtype=np.int64), np.array([[1.0, 7e4], [0.0, 1.0]], np.float32))
    assert m.vectors.dtype == np.float32 and m.vectors[0, 1] == 7e4


@pytest.mark.parametrize("cosine", [False, True])
def test_float16_scores_match_float32_within_the_stated_tolerance(head, cosine):
    ids, vectors = head
    m = state._frozen(ids, vectors)
    query = vectors[17] + 0.01
    exact = analysis.similarities(query, vectors, analysis.row_norms(vectors), cosine)
    half = analysis.similarities(query, m.vectors, m.norms, cosine)
    bound = FP16_TOL * (1.0 if cosine else np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    assert half.dtype == np.float32 and np.all(np.abs(half - exact) <= bound)
    # the neighbours found are the exact ones, up to swaps between scores closer than the tolerance
    top_half, _ = analysis.top_k(half, 20)
    top_exact, _ = analysis.top_k(exact, 20)
    assert len(set(top_half) & set(top_exact)) >= 18
    assert np.all(exact[top_half] >= np.sort(exact)[-20] - 2 * np.max(bound))


def test_float16_row_norms_and_projections_are_widened_correctly(head):
    _, vectors = head
    half = vectors.astype(np.float16)
    np.testing.assert_allclose(analysis.row_norms(half), np.linalg.norm(half.astype(np.float32), axis=1), rtol=1e-6)
    rows16, _ = analysis.top_along(half, vectors[0], 10, centred=True, mean=vectors.mean(0))
    rows32, _ = analysis.top_along(vectors, vectors[0], 10, centred=True)
    assert len(set(rows16) & set(rows32)) >= 9


# --------------------------------------------------------------------------- stored head summaries


def test_the_stored_summary_gives_the_principal_direction_of_the_vectors(tmp_path):
    run = make_run(tmp_path, "r", d=16, layers=(1,), heads=2, n_images=300, parts=3, stages=("decompose",))
    stats = head_stats(run.path, 1, 0)
    row = derived.summary_row(1, 0, stats)
    vectors = run.head_vectors[(1, 0)]
    exact = analysis.principal_direction(vectors)
    assert abs(float(row["principal"] @ exact)) == pytest.approx(1.0, abs=1e-5)  # same axis; the sign comes later
    np.testing.assert_allclose(row["mean"], vectors.mean(0), atol=1e-6)
    cov = np.cov(vectors.T.astype(np.float64), bias=True)
    assert row["principal_variance"] == pytest.approx(np.linalg.eigvalsh(cov)[-1], rel=1e-5)
    assert row["total_variance"] == pytest.approx(np.trace(cov), rel=1e-6)
    oriented = analysis.orient(row["principal"], vectors.astype(np.float16), vectors.mean(0))
    np.testing.assert_allclose(oriented, exact, atol=1e-4)  # the third-moment sign, from the float16 rows


def test_the_dashboard_reads_a_current_summary_and_ignores_a_stale_one(tmp_path):
    run = make_run(tmp_path, "r", d=8, layers=(1, 2), heads=2, n_images=40, stages=("decompose",))
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["stages"]["decompose"]["key"] = "k1"
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    assert data.head_summaries(data.connect(tmp_path), "r") == {}  # no file yet: the caller computes
    derived.compute_head_summary(run.path, manifest)
    found = data.head_summaries(data.connect(tmp_path), "r")
    assert sorted(found) == [(1, 0), (1, 1), (2, 0), (2, 1)] and found[(2, 1)]["n"] == 40
    expected = derived.summary_row(2, 1, head_stats(run.path, 2, 1))["principal"]
    np.testing.assert_array_equal(found[(2, 1)]["principal"], expected)
    manifest["stages"]["decompose"]["key"] = "k2"  # decomposed again since: the summary is stale
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    assert data.head_summaries(data.connect(tmp_path), "r") == {}


def test_versioned_cache_builds_once_per_version_however_many_threads_ask():
    from concurrent.futures import ThreadPoolExecutor

    cache, builds = memcache.VersionedCache(), []

    def build(version):
        builds.append(version)
        return object()

    with ThreadPoolExecutor(8) as pool:
        first = set(pool.map(lambda _: cache.get("dir", "v1", lambda: build("v1")), range(32)))
    assert len(first) == 1 and builds == ["v1"]
    assert cache.get("dir", "v1", lambda: build("v1")) in first
    assert cache.get("dir", "v2", lambda: build("v2")) not in first and builds == ["v1", "v2"]
    assert cache.get("other", "v2", lambda: build("v2")) is not cache.get("dir", "v2", lambda: build("v2"))


def test_the_catalog_is_rebuilt_when_a_file_is_truncated_or_removed_in_place(tmp_path):
    from dashboard.rundirs import discover_runs
    from tests.fixtures.runs import make_run

    make_run(tmp_path, "r", parts=2)
    part = tmp_path / "r" / "head_vectors" / "layer=2" / "head=0" / "part-00001.parquet"
    before = state._fingerprint(discover_runs(tmp_path))
    assert state._fingerprint(discover_runs(tmp_path)) == before
    part.write_bytes(part.read_bytes()[:10])  # same names, same manifest: only its size tells
    truncated = state._fingerprint(discover_runs(tmp_path))
    assert truncated != before
    part.unlink()
    assert state._fingerprint(discover_runs(tmp_path)) not in (before, truncated)
