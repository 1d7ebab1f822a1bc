"""The contract between the precompute and the dashboard: file names, Arrow schemas, version.

Every table a run writes is named and typed here, and nowhere else. Vectors are
``list<float32>``; DuckDB views cast them to ``FLOAT[d]``. Layers are absolute,
0-based block indices; heads are 0-based.

A run directory (one model, one probe set) holds::

    manifest.json                 what made the run (see store.py), stages done
    images.parquet                IMAGES
    image_embeddings.parquet      IMAGE_EMBEDDINGS
    head_vectors/layer=L/head=H/part-NNNNN.parquet   HEAD_VECTORS (hive-partitioned)
    texts.parquet                 TEXTS        (textspan stage)
    head_texts.parquet            HEAD_TEXTS   (textspan stage)
    head_spans.parquet            HEAD_SPANS   (textspan stage)
    head_summary.parquet          HEAD_SUMMARY (textspan stage; tagged with the decompose key)
    head_labels.parquet           HEAD_LABELS  (label stage)
    head_scores.parquet           HEAD_SCORES  (score stage)
    model_scores.parquet          MODEL_SCORES (score stage)
    head_ablations.parquet        HEAD_ABLATIONS  (ablate stage, optional: `clip-interpret ablate`)
    group_ablations.parquet       GROUP_ABLATIONS (ablate stage)
    model_ablations.parquet       MODEL_ABLATIONS (ablate stage)
    label_overrides.csv           manual labels written from the dashboard (optional)
    _work/                        only while a stage is unfinished (store.py)

A probe folder may carry ATTRIBUTES_FILE: one row per image ('path' plus categorical
attribute columns); the toy world writes it, the score stage reads it.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

MANIFEST = "manifest.json"
IMAGES_FILE = "images.parquet"
IMAGE_EMBEDDINGS_FILE = "image_embeddings.parquet"
HEAD_VECTORS_DIR = "head_vectors"
TEXTS_FILE = "texts.parquet"
HEAD_TEXTS_FILE = "head_texts.parquet"
HEAD_SPANS_FILE = "head_spans.parquet"
HEAD_LABELS_FILE = "head_labels.parquet"
HEAD_SCORES_FILE = "head_scores.parquet"
MODEL_SCORES_FILE = "model_scores.parquet"
HEAD_SUMMARY_FILE = "head_summary.parquet"
HEAD_SUMMARY_KEY = "decompose_key"  # HEAD_SUMMARY schema metadata: the decompose stage key it was computed from
# Vector columns written with Parquet's BYTE_STREAM_SPLIT (zstd compresses float bytes far better split).
VECTOR_SPLIT = ["vector.list.element"]  # head vector parts
EMBEDDING_SPLIT = ["embedding.list.element"]  # image embeddings and text embeddings
IMAGES_ROW_GROUP = 1024  # images.parquet's row groups: a thumbnail lookup reads little
LABEL_OVERRIDES_FILE = "label_overrides.csv"  # layer,head,property[,author,note]: a team's corrections, honoured by `label`
HEAD_ABLATIONS_FILE = "head_ablations.parquet"
GROUP_ABLATIONS_FILE = "group_ablations.parquet"
MODEL_ABLATIONS_FILE = "model_ablations.parquet"
COMPARE_DIR = "_compare"  # in a data folder, beside the runs: `clip-interpret compare` writes head_matches files here
ATTRIBUTES_FILE = "attributes.parquet"  # in a probe folder, not a run folder: ground-truth attributes per image

# The order they run in; each depends on the one before. ``ablate`` is opt-in (`run --ablate`, `ablate`).
STAGES = ("decompose", "textspan", "label", "score", "ablate")
OPT_IN_STAGES = ("ablate",)  # redone by a repair only where the run has them
# What each stage writes (head parts: every file under HEAD_VECTORS_DIR); the manifest's ``files`` records
# them and precompute/verify.py checks them.
STAGE_FILES = {
    "decompose": (IMAGES_FILE, IMAGE_EMBEDDINGS_FILE, HEAD_VECTORS_DIR),
    "textspan": (TEXTS_FILE, HEAD_TEXTS_FILE, HEAD_SPANS_FILE, HEAD_SUMMARY_FILE),
    "label": (HEAD_LABELS_FILE,),
    "score": (HEAD_SCORES_FILE, MODEL_SCORES_FILE),
    "ablate": (HEAD_ABLATIONS_FILE, GROUP_ABLATIONS_FILE, MODEL_ABLATIONS_FILE),
}
OPTIONAL_FILES = (HEAD_SPANS_FILE, HEAD_SUMMARY_FILE)  # absent from runs made before they were written


def stage_of(path: str) -> str:
    """The stage that writes ``path`` (relative to the run folder, '/' separated); 'decompose' for anything else."""
    top = path.split("/", 1)[0]
    return next((stage for stage, names in STAGE_FILES.items() if top in names), "decompose")

VECTOR = pa.list_(pa.float32())

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to the probe folder, '/' separated
        pa.field("label", pa.string()),  # parent folder name when the folder is laid out as class folders
        pa.field("width", pa.int32(), nullable=False),  # of the original file
        pa.field("height", pa.int32(), nullable=False),
        pa.field("thumbnail", pa.binary(), nullable=False),  # JPEG, longest side <= THUMBNAIL_SIZE
    ]
)
THUMBNAIL_SIZE = 160

IMAGE_EMBEDDINGS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("embedding", VECTOR, nullable=False),  # normalised encode_image output
    ]
)

# Stored under head_vectors/layer=L/head=H/: layer and head live in the path, not in the file.
HEAD_VECTORS_FILE = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("vector", VECTOR, nullable=False),  # r[l,h]: the head's direct effect, summed over tokens
    ]
)
# What a reader sees with hive partitioning on.
HEAD_VECTORS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("head", pa.int32(), nullable=False),
        pa.field("vector", VECTOR, nullable=False),
    ]
)

TEXTS = pa.schema(
    [
        pa.field("text_id", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("property", pa.string()),
        pa.field("embedding", VECTOR, nullable=False),  # normalised encode_text output
    ]
)

HEAD_TEXTS = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("head", pa.int32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1-based pick order
        pa.field("text_id", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("property", pa.string()),
        pa.field("variance_explained", pa.float32(), nullable=False),  # cumulative, 0..1
    ]
)

# One row per head: what TEXTSPAN fitted, so that the score stage rebuilds r_hat = mean + (r - mean) Q^T Q
# without recomputing it. float64, as computed: the reconstruction is the same to the last bit.
HEAD_SPANS = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("head", pa.int32(), nullable=False),
        pa.field("images", pa.int64(), nullable=False),  # n the statistics were taken over
        pa.field("span_rank", pa.int32(), nullable=False),  # dimension of the span the texts were projected on
        pa.field("total_variance", pa.float64(), nullable=False),  # trace of the centred covariance
        pa.field("mean", pa.list_(pa.float64()), nullable=False),  # [D] the head's mean vector
        pa.field("basis", pa.list_(pa.list_(pa.float64())), nullable=False),  # [k, D] Q: row i is pick i, deflated, unit
    ]
)

HEAD_LABELS = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("head", pa.int32(), nullable=False),
        pa.field("property", pa.string(), nullable=False),  # 'mixed' when no property dominates
        pa.field("association", pa.float32()),  # share of the top-5 texts with this property
        pa.field("ccs5", pa.int32()),  # how many of the top 5 texts have this property, 0..5
        pa.field("labeller", pa.string(), nullable=False),  # pool | llm | manual
        pa.field("provenance", pa.string(), nullable=False),  # JSON: who/what made the label
    ]
)

HEAD_SCORES = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("head", pa.int32(), nullable=False),
        pa.field("property", pa.string(), nullable=False),
        pa.field("association", pa.float32()),
        pa.field("ccs5", pa.int32()),
        pa.field("entangled", pa.bool_()),  # property shared with another head (null when mixed)
        pa.field("variance_top5", pa.float32()),
        pa.field("variance_topk", pa.float32()),
        pa.field("head_variance", pa.float32()),  # trace of the head's covariance: its share of the embedding
        pa.field("best_attribute", pa.string()),  # probe-set attribute that best separates the head (toy world)
        pa.field("best_attribute_r2", pa.float32()),
        pa.field("label_agrees", pa.bool_()),  # label == best_attribute (null without ground truth or when mixed)
    ]
)

# One row per analysed head: the mean of r[l,h] and the first principal direction of the centred vectors
# (precompute/derived.py), so that the dashboard need not compute them per server.
HEAD_SUMMARY = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("head", pa.int32(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),  # images the statistics cover
        pa.field("mean", VECTOR, nullable=False),  # mean r[l,h] over the images, [D]
        pa.field("principal", VECTOR, nullable=False),  # unit top eigenvector of the covariance, [D]
        pa.field("principal_variance", pa.float64(), nullable=False),  # its eigenvalue (variance along it)
        pa.field("total_variance", pa.float64(), nullable=False),  # trace of the covariance
    ]
)

MODEL_SCORES = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("pretrained", pa.string(), nullable=False),
        pa.field("layers", pa.string(), nullable=False),  # e.g. '8,9,10,11'
        pa.field("n_heads", pa.int32(), nullable=False),
        pa.field("n_labelled", pa.int32(), nullable=False),  # heads not 'mixed'
        pa.field("n_properties", pa.int32(), nullable=False),  # distinct properties among labelled heads
        pa.field("association", pa.float32()),  # mean over labelled heads
        pa.field("entanglement", pa.float32()),  # share of labelled heads whose property another head has
        pa.field("ccs5_mean", pa.float32()),
        pa.field("variance_top5", pa.float32()),  # mean over heads
        pa.field("variance_topk", pa.float32()),
        pa.field("zeroshot_intact", pa.float32()),  # class-labelled probe sets only
        pa.field("zeroshot_replaced", pa.float32()),  # analysed heads replaced by their TEXTSPAN reconstruction
        pa.field("label_agreement", pa.float32()),  # toy world: share of labelled heads whose label == best_attribute
    ]
)

TABLES = {
    IMAGES_FILE: IMAGES,
    IMAGE_EMBEDDINGS_FILE: IMAGE_EMBEDDINGS,
    TEXTS_FILE: TEXTS,
    HEAD_TEXTS_FILE: HEAD_TEXTS,
    HEAD_SPANS_FILE: HEAD_SPANS,
    HEAD_SUMMARY_FILE: HEAD_SUMMARY,
    HEAD_LABELS_FILE: HEAD_LABELS,
    HEAD_SCORES_FILE: HEAD_SCORES,
    MODEL_SCORES_FILE: MODEL_SCORES,
}

# ------------------------------------------------------------------ the ablate stage (docs/design.md section 6.4)
# Not in TABLES, which lists what every `run` writes: the ablate stage is opt-in. ``RUN_TABLES`` is both.

# One row per (head, method, target): what mean-ablating the head alone does to zero-shot accuracy.
HEAD_ABLATIONS = pa.schema(
    [
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("head", pa.int32(), nullable=False),
        pa.field("property", pa.string(), nullable=False),  # the head's label (head_labels)
        pa.field("method", pa.string(), nullable=False),  # direct (decomposition) | forward (through the model)
        pa.field("target", pa.string(), nullable=False),  # the attribute scored, or 'label' (class folders)
        pa.field("images", pa.int64(), nullable=False),  # images with a value for the target
        pa.field("accuracy_intact", pa.float32()),
        pa.field("accuracy", pa.float32()),  # with the head replaced by its mean
        pa.field("accuracy_drop", pa.float32()),  # accuracy_intact - accuracy
        pa.field("cosine", pa.float32()),  # mean cos(ablated, intact embedding); the same on each target's row
        pa.field("causal_attribute", pa.string()),  # attribute whose accuracy drops most (null: none drops > min_drop)
        pa.field("label_agrees_causally", pa.bool_()),  # property == causal_attribute (null: mixed or no causal_attribute)
    ]
)

# One row per (group, repeat, target): heads mean-ablated together.
GROUP_ABLATIONS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # property | ccs_top | ccs_bottom | random
        pa.field("group", pa.string(), nullable=False),  # the property, or 'k=<size>'
        pa.field("size", pa.int32(), nullable=False),  # heads in the group
        pa.field("repeat", pa.int32(), nullable=False),  # random sets: 0..repeats-1; else 0
        pa.field("heads", pa.string(), nullable=False),  # 'L3.H0,L3.H2'
        pa.field("method", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("images", pa.int64(), nullable=False),
        pa.field("accuracy_intact", pa.float32()),
        pa.field("accuracy", pa.float32()),
        pa.field("accuracy_drop", pa.float32()),
        pa.field("cosine", pa.float32()),
    ]
)

# One row: the model-level results of the ablate stage (model_scores stays the score stage's).
MODEL_ABLATIONS = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),
        pa.field("n_heads", pa.int32(), nullable=False),
        pa.field("n_labelled", pa.int32(), nullable=False),
        pa.field("n_checked", pa.int32(), nullable=False),  # labelled heads with a causal_attribute
        pa.field("causal_label_agreement", pa.float32()),  # share of checked heads whose label == causal_attribute
        pa.field("targets", pa.string(), nullable=False),  # comma-separated
        pa.field("k", pa.int32(), nullable=False),  # round(25% of the heads)
        pa.field("ccs_top_drop", pa.float32()),  # accuracy drop, mean over targets, of the k most consistent heads
        pa.field("ccs_bottom_drop", pa.float32()),  # ... of the k least consistent
        pa.field("random_drop_mean", pa.float32()),  # ... of random sets of k, mean over repeats
        pa.field("random_drop_std", pa.float32()),  # their standard deviation (ddof 1)
        pa.field("repeats", pa.int32(), nullable=False),
        pa.field("images", pa.int64(), nullable=False),
    ]
)

ABLATION_TABLES = {
    HEAD_ABLATIONS_FILE: HEAD_ABLATIONS,
    GROUP_ABLATIONS_FILE: GROUP_ABLATIONS,
    MODEL_ABLATIONS_FILE: MODEL_ABLATIONS,
}
RUN_TABLES = {**TABLES, **ABLATION_TABLES}  # every table a run folder may hold

# ------------------------------------------------------------------ cross-model head matching (compare.py)
HEAD_MATCHES_VIEW = "head_matches"
# <data folder>/_compare/head_matches-<hash>.parquet: one file per pair of runs, every head of A x every head of B.
HEAD_MATCHES = pa.schema(
    [
        pa.field("run_a", pa.string(), nullable=False),  # run names relative to the data folder
        pa.field("run_b", pa.string(), nullable=False),
        pa.field("layer_a", pa.int32(), nullable=False),
        pa.field("head_a", pa.int32(), nullable=False),
        pa.field("layer_b", pa.int32(), nullable=False),
        pa.field("head_b", pa.int32(), nullable=False),
        pa.field("cka", pa.float32(), nullable=False),  # linear CKA over the shared images
        pa.field("rank_a", pa.int32(), nullable=False),  # 1 = head_b is head_a's best match in run_b
        pa.field("rank_b", pa.int32(), nullable=False),  # 1 = head_a is head_b's best match in run_a
        pa.field("images", pa.int64(), nullable=False),  # shared images the CKA is taken over
    ]
)
