"""A run folder for the CLI and notebooks: ``open_run(path)`` reads its tables through pyarrow.

    run = open_run("runs/toy-l")
    m = run.head(7, 3)                                    # analysis.HeadVectors
    ids, scores = analysis.neighbours(m, m.vectors[m.row_of(42)], 8, exclude=m.row_of(42))

The dashboard reads the same files through DuckDB and its own caches (``dashboard.state``) and calls the
same functions of ``precompute.analysis`` and ``precompute.headsearch`` on them (docs/design.md section 5.2).
Tables are read on first use and kept; the model is loaded only by the calls that need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from precompute import analysis, schema, store
from precompute.errors import InputError
from precompute.labels import MIXED, head_name


@dataclass(frozen=True)
class ImageTerms:
    """One image decomposed by the run's model (the fields ``analysis.head_maps`` reads)."""

    layers: tuple[int, ...]
    heads: np.ndarray  # [l, h, D] r[l,h]
    tokens: np.ndarray | None  # [l, h, t, D] per-token terms (spatial only)
    grid: int  # patches per side
    embedding: np.ndarray  # [D] normalised image embedding

    def head_vector(self, layer: int, head: int) -> np.ndarray:
        return self.heads[self.layers.index(layer), head]  # [D]


def attributes_frame(manifest: dict, images: pd.DataFrame) -> pd.DataFrame | None:
    """image_id and one column per ground-truth attribute of the probe set (``stage_score.load_attributes``: the
    categorical columns of its attributes.parquet) for the run's ``images`` (image_id, path); None without one."""
    from precompute.stage_score import load_attributes

    found = load_attributes(store.probe_attributes_file(manifest), images["path"].tolist())
    return pd.DataFrame({"image_id": images["image_id"].to_numpy(), **found}) if found else None


def open_run(path: str | Path) -> "RunData":
    """The run folder at ``path``; InputError when it is not one."""
    path = Path(path)
    if not (path / schema.MANIFEST).is_file():
        raise InputError(f"{path} is not a run folder (no {schema.MANIFEST}); make one with `clip-interpret run`")
    return RunData(path, store.parse_manifest(path / schema.MANIFEST))


class RunData:
    """One run's tables (read on first use) and the vectors the analyses take."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = Path(path), manifest
        self._heads: dict[tuple[int, int], analysis.HeadVectors] = {}
        self._loaded = None

    # ----------------------------------------------------------------- facts
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.manifest.get("layers") or []]

    @property
    def n_heads(self) -> int:
        return int(self.manifest.get("heads") or 0)

    def _file(self, file: str, stage: str) -> Path:
        """The run's ``file``; InputError naming the command that writes it when it is missing."""
        path = self.path / file
        if not path.is_file():
            raise InputError(f"run {self.name!r} has no {file} (the {stage} stage has not run: "
                             f"`clip-interpret {stage} --out {self.path}`)")
        return path

    def _table(self, file: str, stage: str) -> pd.DataFrame:
        return pq.read_table(self._file(file, stage)).to_pandas()

    # ----------------------------------------------------------------- tables
    @cached_property
    def images(self) -> pd.DataFrame:
        """image_id, path, label, width, height of every image, by image id (no thumbnails)."""
        columns = ["image_id", "path", "label", "width", "height"]
        path = self.path / schema.IMAGES_FILE
        if not path.is_file():
            raise InputError(f"run {self.name!r} has no {schema.IMAGES_FILE}; decompose it first")
        return pq.read_table(path, columns=columns).to_pandas().sort_values("image_id").reset_index(drop=True)

    @cached_property
    def attributes(self) -> pd.DataFrame | None:
        """Ground truth of the probe set (image_id and one column per attribute), or None when it has none."""
        return attributes_frame(self.manifest, self.images)

    @cached_property
    def labels(self) -> pd.DataFrame:
        """head_labels (label stage) with the run's label corrections applied as the dashboard shows them
        (``overrides.apply_to_labels``: adds stored_property, label_source, stale)."""
        from precompute import overrides

        table = pq.read_table(self._file(schema.HEAD_LABELS_FILE, "label"))
        return overrides.apply_to_labels(table, self.path / schema.LABEL_OVERRIDES_FILE).to_pandas()

    @cached_property
    def scores(self) -> pd.DataFrame:
        """head_scores (score stage): with ground truth, best_attribute and label_agrees per head."""
        return self._table(schema.HEAD_SCORES_FILE, "score")

    @cached_property
    def picks(self) -> pd.DataFrame:
        """Every head's TEXTSPAN picks: layer, head, rank, text_id, text, property, variance_explained."""
        return self._table(schema.HEAD_TEXTS_FILE, "textspan").sort_values(["layer", "head", "rank"])

    @cached_property
    def texts(self) -> tuple[pd.DataFrame, np.ndarray]:
        """(the text pool without embeddings: text_id, text, property; embeddings [m, D])."""
        path = self.path / schema.TEXTS_FILE
        if not path.is_file():
            raise InputError(f"run {self.name!r} has no {schema.TEXTS_FILE}; run `clip-interpret textspan "
                             f"--out {self.path}`")
        table = pq.read_table(path)
        return table.drop_columns(["embedding"]).to_pandas(), store.arrow_to_vectors(table.column("embedding"))

    @cached_property
    def _span_means(self) -> dict[tuple[int, int], tuple[int, np.ndarray]]:
        path = self.path / schema.HEAD_SPANS_FILE
        if not path.is_file():
            return {}
        table = pq.read_table(path, columns=["layer", "head", "images", "mean"]).to_pydict()
        return {(int(l), int(h)): (int(n), np.asarray(m, np.float64))
                for l, h, n, m in zip(table["layer"], table["head"], table["images"], table["mean"])}

    # ----------------------------------------------------------------- vectors
    def check_head(self, layer: int, head: int) -> None:
        """InputError naming the analysed layers and heads when (layer, head) is not one of them."""
        if layer not in self.layers or not 0 <= head < self.n_heads:
            raise InputError(f"run {self.name!r} has no {head_name(layer, head)}: its analysed layers are "
                             f"{', '.join(map(str, self.layers))}, heads 0..{self.n_heads - 1}")

    def head(self, layer: int, head: int) -> analysis.HeadVectors:
        """One head's vectors over the run's images, by image id; its mean is head_spans' float64 mean when the
        textspan stage took it over the same images."""
        layer, head = int(layer), int(head)
        if (layer, head) not in self._heads:
            self.check_head(layer, head)
            ids, vectors = store.read_head(self.path, layer, head)  # [n], [n, D]
            order = np.argsort(ids, kind="stable")
            ids, vectors = ids[order].astype(np.int64), vectors[order]
            n, mean = self._span_means.get((layer, head), (-1, None))
            self._heads[(layer, head)] = analysis.head_vectors(ids, vectors, mean if n == len(ids) else None)
        return self._heads[(layer, head)]

    def heads_with(self, prop: str) -> list[tuple[int, int]]:
        """The heads labelled ``prop``; InputError naming the run's properties when none is."""
        heads = analysis.heads_with_property(self.labels, prop)
        if not heads:
            known = sorted(set(self.labels["property"]) - {MIXED})
            raise InputError(f"no head of run {self.name!r} is labelled {prop!r}; properties: {', '.join(known)}")
        return heads

    def property_vectors(self, prop: str) -> analysis.HeadVectors:
        """The mean of r[l,h] over the heads labelled ``prop``, for every image all of them cover (analysis 1)."""
        heads = [self.head(l, h) for l, h in self.heads_with(prop)]
        common = heads[0].ids
        for m in heads[1:]:
            common = np.intersect1d(common, m.ids, assume_unique=True)
        total = np.zeros((len(common), heads[0].vectors.shape[1]), np.float64)  # [n, D]
        for m in heads:
            total += m.vectors[np.searchsorted(m.ids, common)]
        return analysis.head_vectors(common, (total / len(heads)).astype(np.float32))

    def image_row(self, m: analysis.HeadVectors, image_id: int) -> int:
        """The row of a dataset image in ``m``; InputError when the run has no such image."""
        row = m.row_of(int(image_id))
        if row is None:
            ids = self.images["image_id"]
            raise InputError(f"run {self.name!r} has no vector for image {image_id}; its image ids run "
                             f"{int(ids.min())}..{int(ids.max())}")
        return row

    # ----------------------------------------------------------------- the model
    def model(self, device: str = "auto"):
        """The run's model, rebuilt from its manifest (``registry.spec_from_manifest``), loaded once."""
        if self._loaded is None:
            from precompute import registry

            spec, why = registry.spec_from_manifest(self.manifest.get("model") or {}, device=device)
            if spec is None:
                raise InputError(f"run {self.name!r}: its model cannot be loaded here: {why}")
            self._loaded = registry.load_model(spec)
        return self._loaded

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalised text embeddings [m, D] by the run's model (the textspan stage's function)."""
        from precompute.textenc import encode_texts

        if any(not t.strip() for t in texts):
            raise InputError("a text to embed is empty")
        return encode_texts(self.model(), texts)

    def image_file(self, image_id: int) -> Path:
        """The probe file of a dataset image; InputError when it is not on this machine."""
        hit = self.images[self.images["image_id"] == int(image_id)]
        if hit.empty:
            raise InputError(f"run {self.name!r} has no image {image_id}")
        root = (self.manifest.get("images") or {}).get("root")
        path = Path(root or ".") / hit["path"].iloc[0]
        if not path.is_file():
            raise InputError(f"image {image_id}'s file {path} is not on this machine; pass --image FILE instead")
        return path

    def decompose(self, image: str | Path, layers: list[int] | None = None, spatial: bool = True) -> ImageTerms:
        """One image file decomposed by the run's model over ``layers`` (default: the run's), as the decompose
        stage does it (``images.split_preprocess``, then ``Decomposer``, on the model's device)."""
        import torch

        from precompute.decompose import Decomposer
        from precompute.images import open_image, split_preprocess

        if not Path(image).is_file():
            raise InputError(f"{image}: no such image file")
        loaded = self.model()
        pipe = split_preprocess(loaded.preprocess)
        img, _ = open_image(Path(image), subject=str(image))
        device = next(loaded.model.parameters()).device
        with torch.inference_mode():
            dec = Decomposer(loaded.model, layers or self.layers, spatial=spatial)(
                pipe.normalise(pipe.to_pixels(img)[None].to(device)))  # batch of one
        tokens = dec.tokens[0].float().cpu().numpy() if dec.tokens is not None else None  # [l, h, t, D]
        return ImageTerms(tuple(dec.layers), dec.heads[0].float().cpu().numpy(), tokens, loaded.info.grid,
                          dec.embedding[0].float().cpu().numpy())  # [l, h, D], [D]

    def head_means(self, layers: list[int]) -> np.ndarray:
        """[l, h, D] every head's mean over the probe set (for ``analysis.heads_for_text``): head_spans' record,
        else read from the head's vectors."""
        def mean(l: int, h: int) -> np.ndarray:
            found = self._span_means.get((l, h))
            return found[1].astype(np.float32) if found is not None else self.head(l, h).mean

        return np.stack([np.stack([mean(l, h) for h in range(self.n_heads)]) for l in layers])

    def describe(self) -> str:
        model = self.manifest.get("model") or {}
        return f"{self.name} ({model.get('architecture', '?')}, {json.dumps(model.get('weights', {}).get('value'))})"
