"""The label stage: one property per analysed head, with who made it.

The pool labeller (default) votes with the property tags of a head's top picks;
the LLM labeller asks a chat model, falling back to the pool label; manual
overrides (the run's ``label_overrides.csv``, written from the dashboard, plus
any ``--overrides`` file) win over both.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from precompute import labels as lab
from precompute import labels_llm as llm
from precompute import metrics, overrides, schema, store, verify
from precompute.errors import InputError
from precompute.stage_textspan import read_picks

STAGE = "label"
LABELLERS = ("pool", "llm")


@dataclass(frozen=True)
class LabelOptions:
    labeller: str = "pool"
    top_k: int = 5
    min_share: float = 0.4
    overrides: Path | None = None  # an extra CSV; the run's own label_overrides.csv is always read
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_timeout: float = 30.0
    llm_examples: Path | None = None


def _file_hash(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def label_key(manifest: dict, opts: LabelOptions, run_dir: Path) -> str:
    llm = (opts.llm_base_url, opts.llm_model, _file_hash(opts.llm_examples)) if opts.labeller == "llm" else None
    return store.stage_key(manifest["stages"]["textspan"]["key"], opts.labeller, opts.top_k, opts.min_share, llm,
                           _file_hash(opts.overrides), _file_hash(run_dir / schema.LABEL_OVERRIDES_FILE))


def run_label(run_dir: Path, opts: LabelOptions, force: bool = False) -> bool:
    """Label every analysed head and write head_labels.parquet; False when already current."""
    run_dir = Path(run_dir)
    if opts.labeller not in LABELLERS:
        raise InputError(f"unknown labeller {opts.labeller!r}: choose one of {', '.join(LABELLERS)}")
    if opts.overrides is not None and not Path(opts.overrides).is_file():
        raise InputError(f"overrides file not found: {opts.overrides}")
    manifest = verify.require(run_dir, "textspan", f"clip-interpret textspan --out {run_dir}")
    key = label_key(manifest, opts, run_dir)
    if not force and store.stage_current(manifest, STAGE, key) and verify.intact(run_dir, manifest, STAGE):
        return False
    t0 = time.perf_counter()
    picks = read_picks(run_dir)
    pool_name = manifest["stages"]["textspan"].get("pool", "?")
    labelled = [
        lab.label_pool(layer, head, [r["property"] for r in rows], [r["variance_explained"] for r in rows],
                       pool=pool_name, top_k=opts.top_k, min_share=opts.min_share)
        for (layer, head), rows in picks.items()
    ]
    if opts.labeller == "llm":
        labelled = _llm_labels(labelled, picks, opts, run_dir)
    if opts.overrides is not None:
        labelled = lab.apply_overrides(labelled, lab.load_overrides(opts.overrides), opts.overrides)
    history = run_dir / schema.LABEL_OVERRIDES_FILE  # append-only: the latest row per head wins (overrides.py)
    if history.is_file():
        labelled = lab.apply_overrides(labelled, overrides.load_latest(history), history)
    write_labels(run_dir, labelled, picks, opts.top_k)
    store.finish_stage(run_dir, manifest, STAGE, key, time.perf_counter() - t0,
                       after=manifest["stages"]["textspan"]["key"], labeller=opts.labeller,
                       manual=sum(1 for x in labelled if x.labeller == "manual"))
    return True


def _llm_labels(pool_labels, picks, opts: LabelOptions, run_dir: Path):
    """Ask the chat model about each head; a head it cannot label keeps its pool label (with a warning)."""
    config = llm.llm_config(opts.llm_base_url, opts.llm_model, timeout=opts.llm_timeout)
    examples = llm.load_examples(opts.llm_examples) if opts.llm_examples else llm.load_examples()
    allowed = sorted({r["property"] for rows in picks.values() for r in rows if r["property"]})
    return [
        llm.label_llm(p.layer, p.head, [r["text"] for r in picks[(p.layer, p.head)][:opts.top_k]], allowed, p,
                      config, examples)
        for p in pool_labels
    ]


def write_labels(run_dir: Path, labelled, picks, top_k: int) -> None:
    rows: dict[str, list] = {name: [] for name in schema.HEAD_LABELS.names}
    for label in labelled:
        props = [r["property"] for r in picks[(label.layer, label.head)]]
        rows["layer"].append(label.layer)
        rows["head"].append(label.head)
        rows["property"].append(label.property)
        rows["association"].append(metrics.association(label.property, props, top_k))
        rows["ccs5"].append(metrics.ccs(label.property, props, top_k))
        rows["labeller"].append(label.labeller)
        rows["provenance"].append(label.provenance_json())
    store.write_table_atomic(Path(run_dir) / schema.HEAD_LABELS_FILE,
                             pa.Table.from_pydict(rows, schema=schema.HEAD_LABELS))
