"""On a CUDA device: the decomposition sums exactly at every precision, `decompose` runs end to end and matches the
CPU, and a live analysis runs there. Marked ``gpu``; each test skips, saying why, where CUDA is absent (CI has none).

Run them with ``pytest -m gpu`` (``benchmarks/gpu_check.sh`` does, then measures throughput).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import make_image_folder
from tests.unit.test_decompose import PRECISION_TOL, low_precision_copy, reconstruction_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)"),
]


@pytest.mark.parametrize("arch", ["ViT-B-16", "ViT-L-14"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("spatial", [False, True])
def test_terms_sum_to_the_embedding_on_cuda(arch, precision, spatial):
    err = reconstruction_error(arch, precision, "cuda", spatial, batch=4)
    print(f"{arch} {precision} {'spatial' if spatial else 'summed'}: max |sum - embedding| {err['total']:.2e}")
    assert err["device"] == "cuda" and err["dtype"] == torch.float32
    assert err["total"] < PRECISION_TOL[precision]
    if spatial:
        assert err["tokens"] < 1e-5


def test_cuda_fp32_head_vectors_equal_the_cpus():
    from precompute.decompose import Decomposer

    images = torch.randn(2, 3, 224, 224)
    heads = {}
    for device in ("cpu", "cuda"):
        loaded = low_precision_copy("ViT-B-16", "fp32", device)
        heads[device] = Decomposer(loaded.model, [8, 9, 10, 11])(images).heads.cpu()
    assert (heads["cpu"] - heads["cuda"]).abs().max() < 1e-4  # TF32 is off by default for matmuls


def test_decompose_end_to_end_on_cuda_matches_the_cpu(tmp_path):
    from precompute import schema
    from precompute.registry import ModelSpec, WeightsSource, load_model
    from precompute.stage_decompose import DecomposeOptions, run_decompose

    folder = make_image_folder(tmp_path / "images", per_class=10, size=(120, 160))
    vectors = {}
    for device, workers in (("cpu", 0), ("cuda", 2)):
        loaded = load_model(ModelSpec("ViT-B-32", WeightsSource("none", "0"), device))
        out = tmp_path / f"run-{device}"
        summary = run_decompose(loaded, DecomposeOptions(folder, out, None, None, 8, workers, 8, progress=False))
        assert summary.images == 20 and len(summary.skipped) == 3
        part = sorted((out / "head_vectors").rglob("*.parquet"))
        vectors[device] = np.concatenate([np.stack(pq.read_table(p).column("vector").to_numpy(zero_copy_only=False))
                                          for p in part])
        assert pq.read_table(out / schema.IMAGES_FILE).num_rows == 20
    assert np.abs(vectors["cpu"] - vectors["cuda"]).max() < 1e-4


def test_a_live_analysis_runs_on_cuda():
    from PIL import Image

    from dashboard import live
    from precompute import analysis
    from precompute.decompose import Decomposer
    from precompute.registry import ModelSpec, WeightsSource, load_model
    from precompute.textenc import encode_texts

    loaded = load_model(ModelSpec("ViT-B-32", WeightsSource("none", "0"), "cuda"))
    assert next(loaded.model.parameters()).device.type == "cuda"
    decomposer = Decomposer(loaded.model, [8, 9, 10, 11], spatial=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    result = live.decompose_image(loaded, decomposer, image)
    text = encode_texts(loaded, ["a photo of a dog"])[0]
    maps = analysis.head_maps(result, text)
    assert maps.shape == (4, 12, 7, 7) and np.isfinite(maps).all()
    assert np.allclose(maps.sum((2, 3)), result.tokens[..., 1:, :].sum(2) @ text, atol=1e-4)
