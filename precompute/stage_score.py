"""The score stage: per-head and per-model interpretability scores (docs/design.md section 6.2).

From the labels and TEXTSPAN picks: association, CCS over the top 5,
entanglement, variance explained by the top 5 and top K texts, and (from
``head_spans.parquet``) each head's variance. From the head vectors, each head's
files read once and only when needed: when the probe folder carries an
``attributes.parquet`` (the toy world does), the attribute whose values best
separate the head's vectors, and whether the label agrees with it; when the
probe set has class labels, zero-shot accuracy of the intact embedding and with
every analysed head replaced by its TEXTSPAN reconstruction, rebuilt from the
mean and basis the textspan stage stored (nothing is recomputed here).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from precompute import metrics, schema, store, verify
from precompute.errors import RunDirError
from precompute.registry import LoadedModel
from precompute.stage_textspan import read_picks, read_spans
from precompute.textspan import reconstruct
from precompute.weights import describe_record

STAGE = "score"
NOT_ATTRIBUTES = {"path", "caption", "image_id", "label"}
MAX_ATTRIBUTE_VALUES = 64  # a column with more distinct values is not a categorical attribute
ROW_BLOCK = 8192  # images per reconstruction block: bounds the float64 temporaries at ~50 MB for D = 768
DEFAULT_TEMPLATES = ("a photo of a {}.", "an image of a {}.", "a {}.")


@dataclass(frozen=True)
class ScoreOptions:
    top_k: int = 5
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # zero-shot prompts; '{}' is the class name
    attributes: Path | None = None  # default: <probe folder>/attributes.parquet when it exists
    progress: bool = True


def attributes_path(manifest: dict, opts: ScoreOptions) -> Path | None:
    if opts.attributes is not None:
        return Path(opts.attributes)
    return store.probe_attributes_file(manifest)


def score_key(manifest: dict, opts: ScoreOptions, attrs: Path | None, zero_shot: bool) -> str:
    attr_id = (str(attrs), attrs.stat().st_mtime_ns, attrs.stat().st_size) if attrs and attrs.is_file() else None
    return store.stage_key(manifest["stages"]["label"]["key"], opts.top_k, list(opts.templates), attr_id, zero_shot)


def load_attributes(path: Path | None, image_paths: list[str]) -> dict[str, list]:
    """Categorical attribute columns of the probe set, aligned with ``image_paths`` (missing rows: None)."""
    if path is None or not path.is_file():
        return {}
    table = pq.read_table(path)
    if "path" not in table.column_names:
        warnings.warn(f"{path} has no 'path' column; attribute checks are off", stacklevel=2)
        return {}
    rows = {p: i for i, p in enumerate(table.column("path").to_pylist())}
    out = {}
    for name in table.column_names:
        if name in NOT_ATTRIBUTES:
            continue
        values = table.column(name).to_pylist()
        if len(set(values)) > MAX_ATTRIBUTE_VALUES:
            continue
        out[name] = [values[rows[p]] if p in rows else None for p in image_paths]
    return out


def run_score(run_dir: Path, opts: ScoreOptions, loaded: LoadedModel | None = None, force: bool = False) -> bool:
    """Write head_scores.parquet and model_scores.parquet; False when already current.

    ``loaded`` (the run's model) is needed only for zero-shot accuracy; without it those columns stay null.
    """
    run_dir = Path(run_dir)
    manifest = verify.require(run_dir, "label", f"clip-interpret label --out {run_dir}")
    attrs_file = attributes_path(manifest, opts)
    labelled_images = bool(manifest.get("images", {}).get("labelled"))
    zero_shot = labelled_images and loaded is not None
    key = score_key(manifest, opts, attrs_file, zero_shot)
    if not force and store.stage_current(manifest, STAGE, key) and verify.intact(run_dir, manifest, STAGE):
        return False
    t0 = time.perf_counter()
    images = pq.read_table(run_dir / schema.IMAGES_FILE, columns=["image_id", "path", "label"])
    ids = images.column("image_id").to_numpy()
    position = {int(i): n for n, i in enumerate(ids)}
    attributes = load_attributes(attrs_file, images.column("path").to_pylist())
    picks = read_picks(run_dir)
    spans = read_spans(run_dir)  # what the textspan stage fitted: no TEXTSPAN is recomputed here
    head_labels = {(r["layer"], r["head"]): r for r in pq.read_table(run_dir / schema.HEAD_LABELS_FILE).to_pylist()}
    embeddings = _aligned(run_dir / schema.IMAGE_EMBEDDINGS_FILE, "embedding", position)  # [n, D]
    # Heads replaced by their TEXTSPAN reconstructions: e - sum_h (r_h - r_hat_h), accumulated head by head so that
    # only one head's vectors are in memory. The terms sum to e/||e|| (docs/design.md section 3.3), so this is a
    # direct-effect replacement with each image's LayerNorm scale held fixed; no renormalisation is needed, as the
    # zero-shot argmax is invariant to a positive per-image scale.
    delta = np.zeros_like(embeddings, dtype=np.float64) if zero_shot else None  # sum of (r - r_hat)

    inputs = []
    for (layer, head), rows in tqdm(picks.items(), desc="score", unit="head", disable=not opts.progress,
                                    dynamic_ncols=True):
        result = spans.get((layer, head))
        if result is None:
            raise RunDirError(f"{run_dir}: {schema.HEAD_SPANS_FILE} has no row for layer {layer} head {head}; "
                              f"rerun `clip-interpret textspan --out {run_dir}`")
        best = r2 = None
        if delta is not None or attributes:
            aligned = _head_aligned(run_dir, layer, head, ids, position)  # [n, D]: the head's files, read once
            if delta is not None:
                for s in range(0, len(aligned), ROW_BLOCK):
                    block = aligned[s:s + ROW_BLOCK]  # [b, D]
                    delta[s:s + ROW_BLOCK] += block - reconstruct(block, result)
            if attributes:
                best, r2 = metrics.best_attribute(aligned, attributes)
        inputs.append(metrics.HeadInput(
            layer, head, head_labels[(layer, head)]["property"], tuple(r["property"] for r in rows),
            tuple(r["variance_explained"] for r in rows), head_variance=result.total_variance,
            best_attribute=best, best_attribute_r2=r2))
    scores = metrics.score_heads(inputs, k=opts.top_k)
    intact = replaced = None
    if zero_shot:
        np.subtract(embeddings, delta, out=delta)  # in place: the embeddings with every analysed head replaced
        intact, replaced = _zero_shot(loaded, images.column("label").to_pylist(), embeddings, delta, opts.templates)
    model = metrics.model_scores(scores, intact, replaced)
    _write(run_dir, manifest, scores, model)
    store.finish_stage(run_dir, manifest, STAGE, key, time.perf_counter() - t0,
                       after=manifest["stages"]["label"]["key"], attributes=str(attrs_file) if attrs_file else None,
                       zero_shot=zero_shot, templates=list(opts.templates) if zero_shot else None)
    return True


def _head_aligned(run_dir: Path, layer: int, head: int, ids: np.ndarray, position: dict[int, int]) -> np.ndarray:
    """One head's vectors [n, D] in images.parquet order."""
    head_ids, vectors = store.read_head(run_dir, layer, head)
    if np.array_equal(head_ids, ids):  # the decompose stage writes both in image order
        return vectors
    aligned = np.empty_like(vectors)
    aligned[[position[int(i)] for i in head_ids]] = vectors
    return aligned


def _aligned(path: Path, column: str, position: dict[int, int]) -> np.ndarray:
    table = pq.read_table(path)
    vectors = store.arrow_to_vectors(table.column(column))
    out = np.empty_like(vectors)
    out[[position[int(i)] for i in table.column("image_id").to_numpy()]] = vectors
    return out


def _zero_shot(loaded: LoadedModel, labels: list, embeddings: np.ndarray, replaced: np.ndarray,
               templates: tuple[str, ...]) -> tuple[float, float]:
    """Accuracy over the probe set's classes of the embeddings [n, D], intact and with the analysed heads replaced."""
    from precompute.textenc import encode_texts

    classes = sorted({c for c in labels if c is not None})
    prompts = [t.format(c.replace("_", " ")) for c in classes for t in templates]
    emb = encode_texts(loaded, prompts).reshape(len(classes), len(templates), -1).mean(1)  # [c, D]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([c is not None for c in labels])
    y = np.array([index[c] for c in labels if c is not None])
    if not keep.all():  # otherwise no [n, D] copies
        embeddings, replaced = embeddings[keep], replaced[keep]
    return metrics.zero_shot_accuracy(embeddings, emb, y), metrics.zero_shot_accuracy(replaced, emb, y)


def _write(run_dir: Path, manifest: dict, scores, model) -> None:
    head_rows = {name: [getattr(s, name) for s in scores] for name in schema.HEAD_SCORES.names}
    store.write_table_atomic(run_dir / schema.HEAD_SCORES_FILE, pa.Table.from_pydict(head_rows, schema=schema.HEAD_SCORES))
    m = manifest["model"]
    row = {"run": run_dir.name, "model": m["architecture"], "pretrained": describe_record(m["weights"]),
           "layers": ",".join(str(x) for x in manifest["layers"]),
           **{f: getattr(model, f) for f in schema.MODEL_SCORES.names if hasattr(model, f)}}
    store.write_table_atomic(run_dir / schema.MODEL_SCORES_FILE,
                             pa.Table.from_pylist([row], schema=schema.MODEL_SCORES))
