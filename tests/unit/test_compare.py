"""Cross-model head matching (precompute/compare.py): linear CKA in the feature-space form."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from precompute import compare, schema
from precompute.errors import InputError
from tests.fixtures.runs import make_run, write


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of the n x n Gram matrices, written out (the reference the feature-space form must equal)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_)))


def _reduced(heads: list[np.ndarray], rank: int = 64) -> compare.Reduced:
    zs = [compare.reduce_head(x, rank) for x in heads]
    slices, start = [], 0
    for z, _ in zs:
        slices.append(slice(start, start + z.shape[1]))
        start += z.shape[1]
    norms = np.array([np.linalg.norm(z.T.astype(np.float64) @ z) for z, _ in zs])
    return compare.Reduced([(0, i) for i in range(len(heads))], np.concatenate([z for z, _ in zs], 1), slices,
                           norms, np.array([r for _, r in zs]))


def test_feature_space_cka_equals_the_gram_form_across_widths_and_ranks():
    rng = np.random.default_rng(0)
    n = 60
    a = [rng.standard_normal((n, 3)) @ rng.standard_normal((3, 10)) + 5.0,  # rank 3 in D = 10, a large mean
         rng.standard_normal((n, 10))]
    b = [a[0] @ rng.standard_normal((10, 7)) + rng.standard_normal((n, 7)) * 0.3, rng.standard_normal((n, 7))]
    got = compare.cka_matrix(_reduced(a), _reduced(b))
    expected = np.array([[gram_cka(x, y) for y in b] for x in a])
    assert np.abs(got - expected).max() < 1e-5
    assert got[0, 0] > 0.5 > got[1, 1]  # the related pair stands out: the test can fail


def test_cka_ignores_rotation_and_scale_and_the_reduction_keeps_a_low_rank_head_whole():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 4)) @ rng.standard_normal((4, 12))  # more rows than the basis sample
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    z, retained = compare.reduce_head(x.astype(np.float32), rank=8)
    assert z.shape == (5000, 4) and retained == pytest.approx(1.0, abs=1e-6)
    got = compare.cka_matrix(_reduced([x]), _reduced([3.0 * x @ q]))
    assert got[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_a_run_compared_with_itself_has_its_maximum_on_the_diagonal(tmp_path):
    run = make_run(tmp_path / "runs", "synth", d=8, layers=(2, 3), heads=3, n_images=40, seed=3)
    result = compare.compare_runs(run.path, run.path, tmp_path / "runs" / schema.COMPARE_DIR)
    assert np.allclose(np.diag(result.cka), 1.0, atol=1e-5)
    assert (result.cka.argmax(1) == np.arange(6)).all() and (result.cka.argmax(0) == np.arange(6)).all()
    assert (result.cka[~np.eye(6, dtype=bool)] < 0.999).all()  # random heads are not each other
    table = pq.read_table(result.path)
    assert table.schema.equals(schema.HEAD_MATCHES) and table.num_rows == 36
    rows = table.to_pylist()
    assert {r["run_a"] for r in rows} == {"synth"} and all(r["images"] == 40 for r in rows)
    diag = [r for r in rows if (r["layer_a"], r["head_a"]) == (r["layer_b"], r["head_b"])]
    assert len(diag) == 6 and all(r["rank_a"] == 1 and r["rank_b"] == 1 for r in diag)


def test_runs_are_matched_by_image_path_and_read_back_from_either_side(tmp_path):
    root = tmp_path / "runs"
    a = make_run(root, "a", d=8, layers=(1,), heads=2, n_images=30, seed=4)
    b = make_run(root, "b", d=6, layers=(0, 1), heads=2, n_images=30, seed=5)
    images = pq.read_table(b.path / schema.IMAGES_FILE).to_pydict()
    images["path"] = images["path"][::-1]  # the same images in another order: matched by path, not position
    write(b.path / schema.IMAGES_FILE, images, schema.IMAGES)
    result = compare.compare_runs(a.path, b.path, root / schema.COMPARE_DIR)
    assert result.cka.shape == (2, 4) and result.images == 30
    x = a.head_vectors[(1, 0)]
    y = b.head_vectors[(0, 1)][::-1]  # b's row i is the image at a's row 29 - i
    assert result.cka[0, 1] == pytest.approx(gram_cka(x.astype(np.float64), y.astype(np.float64)), abs=1e-5)
    forward = compare.read_matches(root, "a", "b").to_pylist()
    backward = compare.read_matches(root, "b", "a").to_pylist()
    assert len(forward) == len(backward) == 8
    key = {(r["layer_a"], r["head_a"], r["layer_b"], r["head_b"]): r["cka"] for r in forward}
    assert all(key[(r["layer_b"], r["head_b"], r["layer_a"], r["head_a"])] == r["cka"] for r in backward)
    assert compare.read_matches(root, "a", "nope") is None
    assert compare.match_files(root) == [result.path]


def test_runs_without_shared_images_are_refused(tmp_path):
    a = make_run(tmp_path, "a", n_images=6)
    b = make_run(tmp_path, "b", n_images=6)
    images = pq.read_table(b.path / schema.IMAGES_FILE).to_pydict()
    images["path"] = [f"other/{p}" for p in images["path"]]
    write(b.path / schema.IMAGES_FILE, images, schema.IMAGES)
    with pytest.raises(InputError, match="share 0 images"):
        compare.compare_runs(a.path, b.path, tmp_path / "_compare")
    with pytest.raises(InputError, match="--rank"):
        compare.compare_runs(a.path, a.path, tmp_path / "_compare", rank=0)
