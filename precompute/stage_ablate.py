"""The ablate stage: what zero-shot accuracy loses when heads are mean-ablated (docs/design.md section 6.4).

Direct effect, from the stored decomposition (no forward pass; ``precompute/ablate.py``): every analysed head
alone, every property label's heads together, the top-k and bottom-k heads by concept consistency
(``head_labels.ccs5``) and seeded random sets of each size, repeated. Accuracy is measured per ground-truth
attribute where the probe folder has ``attributes.parquet`` (the toy world), per class label otherwise.
The causal label check: the attribute whose accuracy drops most when a head is ablated, against its label.

Optionally (``forward``) the exact ablation through the model: each head's output is replaced by its
per-position mean at every token of its layer, so later layers see the change (``precompute/ablate_forward.py``),
on a seeded sample of the images; the stage records how far the two differ.
Writes head_ablations.parquet, group_ablations.parquet and model_ablations.parquet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from precompute import ablate, schema, store, verify
from precompute.errors import InputError, RunDirError
from precompute.labels import MIXED, head_name
from precompute.registry import LoadedModel
from precompute.stage_score import DEFAULT_TEMPLATES, ScoreOptions, _aligned, attributes_path, load_attributes

STAGE = "ablate"
DEFAULT_FRACTIONS = (0.125, 0.25, 0.375, 0.5)  # group sizes as shares of the analysed heads: the pruning curve
HEADLINE_FRACTION = 0.25  # the share model_ablations reports (CCS top-k against random sets of the same k)
ALGORITHM = 2  # in the stage key: bumped when the output changes for the same inputs (2: nested random sets)


@dataclass(frozen=True)
class AblateOptions:
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    repeats: int = 16  # random sets per size
    min_drop: float = 0.005  # a head's causal check needs some attribute to lose more accuracy than this
    seed: int = 0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # class-label prompts (and attributes outside the toy world)
    attributes: Path | None = None  # default: <probe folder>/attributes.parquet when it exists
    forward: bool = False  # also the exact ablation through the model, on a sample
    forward_images: int = 500
    batch_size: int = 64
    progress: bool = True

    def check(self) -> None:
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise InputError(f"--fraction values must be in (0, 1], got {list(self.fractions)}")
        if self.repeats < 1:
            raise InputError(f"--repeats must be at least 1, got {self.repeats}")
        if not 0 <= self.min_drop < 1:
            raise InputError(f"--min-drop must be in [0, 1), got {self.min_drop}")
        if self.forward_images < 2:
            raise InputError(f"--forward-images must be at least 2, got {self.forward_images}")
        if any("{}" not in t for t in self.templates):
            raise InputError(f"every --template needs '{{}}' for the class name; got {list(self.templates)}")


def ablate_key(manifest: dict, opts: AblateOptions, attrs: Path | None) -> str:
    attr_id = (str(attrs), attrs.stat().st_mtime_ns, attrs.stat().st_size) if attrs and attrs.is_file() else None
    forward = (opts.forward_images, opts.batch_size) if opts.forward else None
    return store.stage_key(manifest["stages"]["score"]["key"], list(opts.fractions), opts.repeats, opts.seed,
                           opts.min_drop, list(opts.templates), attr_id, forward, ALGORITHM)


# ------------------------------------------------------------------ targets


def class_embeddings(loaded: LoadedModel, prompts: list[list[str]]) -> np.ndarray:
    """[c, D]: each class's prompts embedded, averaged and renormalised (CLIP's prompt ensembling)."""
    from precompute.textenc import encode_texts

    flat = [p for per_class in prompts for p in per_class]
    emb = encode_texts(loaded, flat).reshape(len(prompts), len(prompts[0]), -1).mean(1)  # [c, D]
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def attribute_prompts(name: str, values: list[str], templates: tuple[str, ...]) -> list[list[str]]:
    """[value][template]: the toy world's own zero-shot prompts for its attributes, else ``templates``."""
    from precompute.toyworld import captions

    toy = captions.ATTRIBUTES.get(name)
    if toy is not None and set(values) <= set(toy):
        by_value = dict(zip(toy, captions.prompts(name)))
        return [by_value[v] for v in values]
    return [[t.format(str(v).replace("_", " ")) for t in templates] for v in values]


def build_targets(loaded: LoadedModel, attributes: dict[str, list], labels: list, templates: tuple[str, ...]
                  ) -> list[ablate.Target]:
    """One target per attribute when the probe set has attributes, else one for the class labels."""
    from precompute.toyworld import captions

    targets = []
    for name, column in attributes.items():
        present = {v for v in column if v is not None}
        toy = captions.ATTRIBUTES.get(name, ())
        values = [v for v in toy if v in present] if present <= set(toy) else sorted(present, key=str)
        if len(values) < 2:
            continue
        index = {v: i for i, v in enumerate(values)}
        y = np.array([index.get(v, -1) if v is not None else -1 for v in column], np.int64)
        targets.append(ablate.Target(name, tuple(map(str, values)),
                                     class_embeddings(loaded, attribute_prompts(name, values, templates)), y))
    if not targets:
        classes = sorted({c for c in labels if c is not None})
        if len(classes) < 2:
            raise InputError("the probe set has no attributes.parquet and fewer than 2 class folders: "
                             "nothing to measure zero-shot accuracy on")
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[c] if c is not None else -1 for c in labels], np.int64)
        prompts = [[t.format(c.replace("_", " ")) for t in templates] for c in classes]
        targets.append(ablate.Target("label", tuple(classes), class_embeddings(loaded, prompts), y))
    return targets


# ------------------------------------------------------------------ groups


@dataclass(frozen=True)
class Group:
    kind: str  # property | ccs_top | ccs_bottom | random
    name: str  # the property, or 'k=<size>'
    repeat: int
    members: tuple[int, ...]  # indices into the run's analysed heads


def plan_groups(labels: list[str], ccs: list, opts: AblateOptions) -> list[Group]:
    """Property groups, CCS top-k / bottom-k at each size, and ``repeats`` random sets of every size used.

    In the order ``ablate.block_totals`` computes fastest: each CCS end and each random repeat as a chain of
    nested sets, smallest first.
    """
    heads = len(labels)
    groups = [Group("property", p, 0, tuple(i for i, q in enumerate(labels) if q == p))
              for p in sorted(set(labels) - {MIXED})]
    order = ablate.consistency_order(ccs, opts.seed)
    sizes = ablate.group_sizes(heads, (*opts.fractions, HEADLINE_FRACTION))  # model_ablations reports 25%
    for k in sizes:
        groups.append(Group("ccs_top", f"k={k}", 0, tuple(sorted(order[:k]))))
        groups.append(Group("ccs_bottom", f"k={k}", 0, tuple(sorted(order[-k:]))))
    random_sizes = sorted(set(sizes) | {len(g.members) for g in groups if g.kind == "property"})
    for r, nested in enumerate(ablate.random_groups(heads, random_sizes, opts.repeats, opts.seed)):
        groups += [Group("random", f"k={k}", r, tuple(m)) for k, m in zip(random_sizes, nested)]
    return groups


# ------------------------------------------------------------------ reading


def head_means(run_dir: Path, heads: list[tuple[int, int]], count: int) -> np.ndarray:
    """[H, D] float64: each head's mean over the probe set, from head_spans.parquet (as the textspan stage
    computed it, in float64) or, where that is missing or covers other images, from the vectors."""
    stored = {}
    path = Path(run_dir) / schema.HEAD_SPANS_FILE
    if path.is_file():
        for row in pq.read_table(path, columns=["layer", "head", "images", "mean"]).to_pylist():
            if row["images"] == count:
                stored[(row["layer"], row["head"])] = np.array(row["mean"], np.float64)
    return np.stack([stored[h] if h in stored else store.read_head(run_dir, *h)[1].astype(np.float64).mean(0)
                     for h in heads])


def part_blocks(run_dir: Path, heads: list[tuple[int, int]], ids: np.ndarray, rows: int):
    """Yield (slice of images, [H, b, D] float32) in image order, ``rows`` or more images at a time.

    Reads each head's parts once; the decompose stage writes every head's part c over the same images in
    images.parquet order, which is checked. A run laid out otherwise is refused with the repair command.
    """
    files = [store.head_files(run_dir, *h) for h in heads]
    counts = [[pq.read_metadata(f).num_rows for f in fs] for fs in files]
    if any(c != counts[0] for c in counts) or sum(counts[0]) != len(ids):
        raise RunDirError(f"{run_dir}: the heads' parts do not cover the images alike; repair the run with "
                          f"`clip-interpret verify {run_dir}`")
    start, batch = 0, []
    for p, n in enumerate(counts[0]):
        batch.append(p)
        if sum(counts[0][q] for q in batch) < rows and p + 1 < len(counts[0]):
            continue
        size = sum(counts[0][q] for q in batch)
        block = slice(start, start + size)
        out = None
        for i, fs in enumerate(files):
            table = pa.concat_tables(pq.read_table(fs[q]) for q in batch)
            if not np.array_equal(table.column("image_id").to_numpy(), ids[block]):
                raise RunDirError(f"{run_dir}: {head_name(*heads[i])}'s parts are not in images.parquet order; "
                                  f"repair the run with `clip-interpret verify {run_dir}`")
            vec = store.arrow_to_vectors(table.column("vector"))  # [b, D]
            if out is None:
                out = np.empty((len(files), size, vec.shape[1]), np.float32)  # [H, b, D]
            out[i] = vec
        yield block, out
        start, batch = start + size, []


# ------------------------------------------------------------------ the stage


def run_ablate(run_dir: Path, opts: AblateOptions, loaded: LoadedModel | None = None, force: bool = False,
               targets: list[ablate.Target] | None = None) -> bool:
    """Write the three ablation tables; False when already current.

    ``loaded`` (the run's model) embeds the class prompts; ``targets`` may be given instead (benchmarks).
    """
    run_dir = Path(run_dir)
    opts.check()
    manifest = verify.require(run_dir, "score", f"clip-interpret score --out {run_dir}")
    attrs_file = attributes_path(manifest, ScoreOptions(attributes=opts.attributes))
    if opts.attributes is not None and not Path(opts.attributes).is_file():
        raise InputError(f"attributes file not found: {opts.attributes}")
    key = ablate_key(manifest, opts, attrs_file)
    if not force and store.stage_current(manifest, STAGE, key) and verify.intact(run_dir, manifest, STAGE):
        return False
    if loaded is None and (targets is None or opts.forward):
        raise RunDirError(f"{run_dir}: the ablate stage needs the run's model (to embed the class prompts)")
    t0 = time.perf_counter()
    images = pq.read_table(run_dir / schema.IMAGES_FILE, columns=["image_id", "path", "label"])
    ids = images.column("image_id").to_numpy()
    position = {int(i): n for n, i in enumerate(ids)}
    if targets is None:
        attributes = load_attributes(attrs_file, images.column("path").to_pylist())
        targets = build_targets(loaded, attributes, images.column("label").to_pylist(), opts.templates)
    clf = ablate.Classifier.of(targets)
    label_rows = {(r["layer"], r["head"]): r for r in pq.read_table(run_dir / schema.HEAD_LABELS_FILE).to_pylist()}
    heads = sorted(label_rows)
    labels = [label_rows[h]["property"] for h in heads]
    groups = plan_groups(labels, [label_rows[h]["ccs5"] for h in heads], opts)
    embeddings = _aligned(run_dir / schema.IMAGE_EMBEDDINGS_FILE, "embedding", position)  # [n, D]
    means = head_means(run_dir, heads, len(ids)).astype(np.float32)  # [H, D]

    totals = ablate.Totals.zeros(len(heads) + len(groups), len(targets))
    rows = ablate.block_rows(len(heads), clf.weights.shape[0], embeddings.shape[1])
    bar = tqdm(total=len(ids), desc="ablate", unit="img", disable=not opts.progress, dynamic_ncols=True)
    for block, vectors in part_blocks(run_dir, heads, ids, rows):
        vectors -= means[:, None]  # [H, b, D]: c_h = r_h - mu_h, in place
        totals.add(ablate.block_totals(embeddings[block], vectors, clf, block, [g.members for g in groups]))
        bar.update(block.stop - block.start)
    bar.close()
    head_table = head_rows(heads, labels, targets, totals, "direct", opts.min_drop)
    info = {}
    if opts.forward:
        from precompute.ablate_forward import compare_forward

        forward_rows, info = compare_forward(loaded, run_dir, manifest, images, heads, labels, means, embeddings,
                                             targets, opts)
        head_table = {k: head_table[k] + forward_rows[k] for k in head_table}
    group_table = _group_rows(heads, groups, targets, totals)
    model_row = _model_row(run_dir, heads, labels, targets, totals, groups, opts)
    _write(run_dir, head_table, group_table, model_row)
    store.finish_stage(run_dir, manifest, STAGE, key, time.perf_counter() - t0,
                       after=manifest["stages"]["score"]["key"], targets=[t.name for t in targets],
                       attributes=str(attrs_file) if attrs_file else None, repeats=opts.repeats, seed=opts.seed,
                       fractions=list(opts.fractions), min_drop=opts.min_drop, **info)
    return True


def _drops(totals: ablate.Totals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    intact, acc = totals.accuracy()
    return intact, acc, intact[None, :] - acc  # [T], [A, T], [A, T]


def head_rows(heads, labels, targets, totals: ablate.Totals, method: str, min_drop: float) -> dict[str, list]:
    """HEAD_ABLATIONS columns for the first len(heads) ablations of ``totals`` (one row per head and target)."""
    intact, acc, drop = _drops(totals)
    cosine = totals.mean_cosine()
    attributes = [t.name for t in targets if t.name != "label"]
    out = {f.name: [] for f in schema.HEAD_ABLATIONS}
    for a, ((layer, head), label) in enumerate(zip(heads, labels)):
        by_target = {t.name: float(drop[a, j]) for j, t in enumerate(targets) if t.name != "label"}
        causal = ablate.causal_attribute(by_target, min_drop) if attributes else None
        agrees = None if label == MIXED or causal is None else causal.casefold() == label.casefold()
        for j, t in enumerate(targets):
            for name, value in (("layer", layer), ("head", head), ("property", label), ("method", method),
                                ("target", t.name), ("images", int(totals.scored[j])),
                                ("accuracy_intact", float(intact[j])), ("accuracy", float(acc[a, j])),
                                ("accuracy_drop", float(drop[a, j])), ("cosine", float(cosine[a])),
                                ("causal_attribute", causal), ("label_agrees_causally", agrees)):
                out[name].append(value)
    return out


def _group_rows(heads, groups: list[Group], targets, totals: ablate.Totals) -> dict[str, list]:
    intact, acc, drop = _drops(totals)
    cosine = totals.mean_cosine()
    out = {f.name: [] for f in schema.GROUP_ABLATIONS}
    for g, group in enumerate(groups):
        a = len(heads) + g
        members = ",".join(head_name(*heads[i]) for i in group.members)
        for j, t in enumerate(targets):
            for name, value in (("kind", group.kind), ("group", group.name), ("size", len(group.members)),
                                ("repeat", group.repeat), ("heads", members), ("method", "direct"),
                                ("target", t.name), ("images", int(totals.scored[j])),
                                ("accuracy_intact", float(intact[j])), ("accuracy", float(acc[a, j])),
                                ("accuracy_drop", float(drop[a, j])), ("cosine", float(cosine[a]))):
                out[name].append(value)
    return out


def _model_row(run_dir: Path, heads, labels, targets, totals, groups: list[Group], opts: AblateOptions) -> dict:
    """MODEL_ABLATIONS: the causal label agreement and CCS pruning against random sets at k = 25% of heads."""
    _, _, drop = _drops(totals)
    mean_drop = np.nanmean(drop, axis=1)  # [A]: averaged over the targets
    k = ablate.group_sizes(len(heads), [HEADLINE_FRACTION])[0]
    at = {kind: [len(heads) + g for g, grp in enumerate(groups) if grp.kind == kind and grp.name == f"k={k}"]
          for kind in ("ccs_top", "ccs_bottom", "random")}
    rows = head_rows(heads, labels, targets, totals, "direct", opts.min_drop)
    per_head = {(l, h): a for l, h, a in zip(rows["layer"], rows["head"], rows["label_agrees_causally"])}
    checked = [v for v in per_head.values() if v is not None]
    rand = mean_drop[at["random"]]
    return {"run": run_dir.name, "n_heads": len(heads), "n_labelled": sum(p != MIXED for p in labels),
            "n_checked": len(checked), "causal_label_agreement": float(np.mean(checked)) if checked else None,
            "targets": ",".join(t.name for t in targets), "k": k, "ccs_top_drop": float(mean_drop[at["ccs_top"][0]]),
            "ccs_bottom_drop": float(mean_drop[at["ccs_bottom"][0]]), "random_drop_mean": float(rand.mean()),
            "random_drop_std": float(rand.std(ddof=1)) if len(rand) > 1 else None, "repeats": opts.repeats,
            "images": int(totals.images)}


def _write(run_dir: Path, head_table: dict, group_table: dict, model_row: dict) -> None:
    store.write_table_atomic(run_dir / schema.HEAD_ABLATIONS_FILE,
                             pa.Table.from_pydict(head_table, schema=schema.HEAD_ABLATIONS))
    store.write_table_atomic(run_dir / schema.GROUP_ABLATIONS_FILE,
                             pa.Table.from_pydict(group_table, schema=schema.GROUP_ABLATIONS))
    store.write_table_atomic(run_dir / schema.MODEL_ABLATIONS_FILE,
                             pa.Table.from_pylist([model_row], schema=schema.MODEL_ABLATIONS))


def summary_lines(run_dir: Path) -> list[str]:
    """The model-level results of a finished ablate stage, for the CLI."""
    row = pq.read_table(Path(run_dir) / schema.MODEL_ABLATIONS_FILE).to_pylist()[0]
    agree = row["causal_label_agreement"]
    lines = [f"causal label agreement: {'n/a' if agree is None else f'{agree:.2f}'} "
             f"({row['n_checked']} of {row['n_labelled']} labelled heads have a causal attribute)",
             f"accuracy drop at k={row['k']} of {row['n_heads']} heads: CCS top {row['ccs_top_drop']:.3f}, "
             f"bottom {row['ccs_bottom_drop']:.3f}, random {row['random_drop_mean']:.3f}"
             + (f" +- {row['random_drop_std']:.3f}" if row["random_drop_std"] is not None else "")
             + f" ({row['repeats']} sets; mean over {row['targets']})"]
    manifest = store.read_manifest(Path(run_dir)) or {}
    fwd = ((manifest.get("stages") or {}).get(STAGE) or {}).get("forward")
    if fwd:
        corr = fwd["drop_correlation"]
        lines.append(f"forward vs direct on {fwd['images']} images: drop correlation "
                     f"{'n/a' if corr is None else f'{corr:.2f}'}, mean |difference| "
                     f"{fwd['mean_abs_drop_difference']:.4f}, mean drop {fwd['direct_mean_drop']:.4f} (direct) vs "
                     f"{fwd['forward_mean_drop']:.4f} (forward)")
    return lines
