"""A synthetic run folder at ImageNet size without a forward pass, written with the product's own writers.

The decompose stage's chunk writer and consolidation (``precompute/stage_decompose.py``) lay out
images, embeddings and head vectors; the manifest records a random-init open_clip architecture of the
asked geometry (ViT-B-16 for width 512, ViT-L-14 for 768), so the CLI's ``textspan`` and ``score``
load a model as on a real run; ``texts.parquet`` holds synthetic embeddings of a real pool (default
the shipped ``general``, 3,276 tagged texts), which the textspan stage reuses instead of encoding.

Values, like those of real CLIP heads: each head is a large constant (its mean) plus a rank-64
spread with decaying scales plus float noise at 1e-4 of the spread; its four strongest directions
are texts of one property, so TEXTSPAN finds them and the pool labeller names the head.

    from benchmarks.synthetic_run import write_synthetic_run   # with the repository root on sys.path
    run = write_synthetic_run(Path("/tmp/scale/run"), images=50_000, layers=4, heads=12, width=512)
"""

from __future__ import annotations

import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from precompute import schema, store
from precompute.errors import InputError
from precompute.pools import load_pool
from precompute.registry import ModelSpec, WeightsSource, load_model
from precompute.stage_decompose import STAGE, ChunkResult, _consolidate, model_record, versions, write_chunk
from precompute.stage_textspan import write_texts

ARCHITECTURES = {512: "ViT-B-16", 768: "ViT-L-14", 1024: "ViT-H-14"}  # width D -> a model of that output width
THUMBNAILS = 256  # distinct JPEGs, cycled over the images
NOISE = 1e-4  # isotropic float noise, relative to the spread's top scale


@dataclass(frozen=True)
class SyntheticRun:
    path: Path
    architecture: str
    images: int
    layers: tuple[int, ...]
    heads: int  # per layer
    width: int
    pool: str
    classes: int
    seconds: float  # to write it


def write_synthetic_run(
    out: Path,
    images: int = 50_000,
    layers: int = 4,
    heads: int = 12,
    width: int = 512,
    *,
    pool: str = "general",
    classes: int = 10,
    span: int = 64,
    seed: int = 0,
    chunk_size: int = 512,
    progress: bool = True,
) -> SyntheticRun:
    """Write run folder ``out`` (must not exist): ``images`` images, the last ``layers`` blocks x ``heads`` heads.

    ``classes`` > 0 puts the images in class folders (zero-shot scoring runs); ``span`` is each head's rank.
    Finishes with the decompose stage done, and texts.parquet for ``pool``.
    """
    out = Path(out)
    if out.exists():
        raise InputError(f"{out} exists; pass a new folder")
    if width not in ARCHITECTURES:
        raise InputError(f"width {width}: choose one of {', '.join(map(str, ARCHITECTURES))}")
    t0 = time.perf_counter()
    loaded = load_model(ModelSpec(ARCHITECTURES[width], WeightsSource("none", str(seed)), "cpu"))
    info, model = loaded.info, model_record(loaded)
    del loaded  # only its record is kept; the stages load it again like on a real run
    if heads != info.heads or not 1 <= layers <= info.layers:
        raise InputError(f"{ARCHITECTURES[width]} has {info.heads} heads per layer and {info.layers} layers; "
                         f"asked for {heads} heads and {layers} layers")
    layer_ids = list(range(info.layers - layers, info.layers))
    rng = np.random.default_rng(seed)
    text_pool = load_pool(pool)
    texts = _text_embeddings(rng, text_pool.properties, width)  # [m, D]
    mean, basis, scales = _heads(rng, texts, text_pool.properties, layers * heads, span)
    thumbs = _thumbnails(rng)

    out.mkdir(parents=True)
    chunks = store.ChunkStore(out, STAGE)
    bounds = [(s, min(s + chunk_size, images)) for s in range(0, images, chunk_size)]
    writer = ThreadPoolExecutor(max_workers=1)  # the Parquet writes overlap the next chunk's numbers
    pending: Future | None = None
    try:
        for c, (s, e) in enumerate(bounds):
            payload = _chunk(np.random.default_rng([seed, c]), s, e, mean, basis, scales, layers, heads, classes,
                             thumbs)
            if pending is not None:
                pending.result()
            pending = writer.submit(write_chunk, out, chunks, c, layer_ids, ChunkResult(*payload))
            if progress and (c + 1) % 20 == 0:
                print(f"  synthetic run: {e:,} / {images:,} images", flush=True)
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)
    count, skipped, files = _consolidate(out, chunks, images, chunk_size)
    write_texts(out, text_pool, texts)

    seconds = time.perf_counter() - t0
    params = {"images": images, "layers": layers, "heads": heads, "width": width, "pool": text_pool.sha256,
              "classes": classes, "span": span, "seed": seed}
    manifest = store.new_manifest(model=model, layers=layer_ids, heads=heads, versions=versions(), synthetic=params)
    manifest["images"] = {"root": str(out / "synthetic-images"), "planned": images, "limit": None,
                          "labelled": classes > 0, "count": count, "skipped": skipped, "ignored": [],
                          "ignored_count": 0}
    manifest["stages"][STAGE] = {"done": True, "key": store.stage_key("synthetic", params), "finished": store.now(),
                                 "recorded": True, "chunk_size": chunk_size}
    manifest["files"] = dict(sorted(files.items()))  # what precompute/verify.py checks
    manifest["timings"] = {STAGE: {"seconds": round(seconds, 2), "images": images, "synthetic": True}}
    store.write_manifest(out, manifest)
    chunks.clear()
    return SyntheticRun(out, ARCHITECTURES[width], count, tuple(layer_ids), heads, width, text_pool.name, classes,
                        seconds)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _text_embeddings(rng, properties, d: int) -> np.ndarray:
    """Unit texts: a shared component (CLIP texts are far from orthogonal), their property's centroid, noise."""
    names = sorted({p or "" for p in properties})
    centroid = {p: _unit(rng.standard_normal(d)) for p in names}
    common = _unit(rng.standard_normal(d))
    noise = rng.standard_normal((len(properties), d)) / np.sqrt(d)  # [m, D], rows of norm ~1
    return _unit(1.5 * common + np.stack([centroid[p or ""] for p in properties]) + noise).astype(np.float32)


def _heads(rng, texts, properties, n_heads: int, span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per head: mean [H, D], orthonormal spread basis [H, span, D], scales [H, span]."""
    d = texts.shape[1]
    names = sorted({p for p in properties if p})
    means, bases, scales = [], [], []
    for k in range(n_heads):
        of_property = [j for j, p in enumerate(properties) if p == names[k % len(names)]]
        picked = texts[rng.choice(of_property, 4, replace=False)]  # [4, D]
        raw = np.concatenate([picked, rng.standard_normal((span - 4, d))])  # [span, D]
        q, _ = np.linalg.qr(raw.T)  # [D, span]; column i spans the first i+1 rows
        s = np.concatenate([[1.0, 0.8, 0.65, 0.5], np.geomspace(0.3, 0.01, span - 4)])  # [span]
        means.append(2.0 * np.linalg.norm(s) * _unit(rng.standard_normal(d)))
        bases.append(q.T)
        scales.append(s)
    scale = 0.02  # a head's term is a small part of the unit-norm embedding
    return (np.stack(means) * scale).astype(np.float32), np.stack(bases).astype(np.float32), \
        (np.stack(scales) * scale).astype(np.float32)


def _thumbnails(rng) -> list[bytes]:
    out = []
    for _ in range(THUMBNAILS):
        base = rng.integers(0, 256, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 40, (120, 160, 3)), 0, 255).astype(np.uint8)  # [h, w, rgb]
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _chunk(rng, start: int, end: int, mean, basis, scales, layers: int, heads: int, classes: int, thumbs):
    """One chunk's payload for ``write_chunk`` (a ``ChunkResult``): (rows, embeddings [b, D], heads [b, l, h, D], skipped)."""
    b, (n_heads, span, d) = end - start, basis.shape
    z = rng.standard_normal((b, n_heads, span), dtype=np.float32) * scales  # [b, H, span]
    vectors = np.einsum("bkr,krd->bkd", z, basis) + mean  # [b, H, D]
    vectors += rng.standard_normal(vectors.shape, dtype=np.float32) * (NOISE * scales[:, :1])
    embeddings = _unit(vectors.sum(axis=1) + rng.standard_normal((b, d), dtype=np.float32) * 0.05)  # [b, D]
    ids = list(range(start, end))
    label = [f"class_{i % classes:03d}" if classes else None for i in ids]
    rows = {"image_id": ids,
            "path": [f"{lab}/img_{i:06d}.jpg" if lab else f"img_{i:06d}.jpg" for i, lab in zip(ids, label)],
            "label": label, "width": [500] * b, "height": [375] * b,
            "thumbnail": [thumbs[i % len(thumbs)] for i in ids]}
    return rows, embeddings.astype(np.float32), vectors.reshape(b, layers, heads, d).astype(np.float32), []
