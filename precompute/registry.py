"""Model ids and loading: an open_clip architecture plus a weights source (the public facade).

Architecture and weights are two axes, as in ``open_clip.create_model(name, pretrained=...)``, and the
code splits the way open_clip splits ``factory.py`` and ``pretrained.py``:

    architectures.py  names, open_clip configs (the project's from ``precompute/model_configs/``) and
                      decomposability, judged from the config (pooling, attention, heads, square geometry)
    weights.py        weights sources and the manifest's record; parsing --pretrained / --random-init;
                      pretrained tags (cache, hub probe); sha256
    loading.py        ModelSpec -> LoadedModel: device, precision, the build, the geometry asserted on the
                      built model; ModelInfo; parse_layers; spec_from_manifest
    catalogue.py      every known architecture with tags and decomposability; a model's default pool and
                      probe set (``MODEL_DEFAULTS``)

Callers import from here (``from precompute.registry import load_model``); the names below are the API.
"""

from __future__ import annotations

from precompute.architectures import (SUPPORTED, all_architectures, builtin_config, check_decomposable,
                                      decomposability, geometry_problem, known_tags, local_dir_config,
                                      project_models, register_project_configs)
from precompute.catalogue import (MODEL_DEFAULTS, TOY_WORLD, CatalogueEntry, ModelDefaults, catalogue,
                                  model_defaults, shipped_toy_models)
from precompute.loading import (LoadedModel, ModelInfo, ModelSpec, check_geometry, load_model, model_config,
                                model_info, parse_layers, resolve_device, resolve_precision, spec_from_manifest)
from precompute.weights import (HUB_HOST, WEIGHT_SUFFIXES, WeightsSource, cached_tag_file, file_sha256,
                                hub_reachable, parse_weights, shipped_weights_dir, tag_checkpoint)

__all__ = [
    "SUPPORTED", "all_architectures", "builtin_config", "check_decomposable", "decomposability",
    "geometry_problem", "known_tags", "local_dir_config", "project_models", "register_project_configs",
    "MODEL_DEFAULTS", "TOY_WORLD", "CatalogueEntry", "ModelDefaults", "catalogue", "model_defaults",
    "shipped_toy_models",
    "LoadedModel", "ModelInfo", "ModelSpec", "check_geometry", "load_model", "model_config", "model_info",
    "parse_layers", "resolve_device", "resolve_precision", "spec_from_manifest",
    "HUB_HOST", "WEIGHT_SUFFIXES", "WeightsSource", "cached_tag_file", "file_sha256", "hub_reachable",
    "parse_weights", "shipped_weights_dir", "tag_checkpoint",
]
