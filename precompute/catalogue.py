"""The catalogue: every architecture open_clip and the project know, and what a model runs on by default.

``clip-interpret models`` lists ``catalogue()``; the pipeline asks ``model_defaults`` for the text pool and
probe set of a model the user gave none for (the toy models: the toy-world pool and probe set).
"""

from __future__ import annotations

from dataclasses import dataclass

from precompute.architectures import all_architectures, builtin_config, decomposability, known_tags, project_models
from precompute.weights import shipped_weights_dir


@dataclass(frozen=True)
class ModelDefaults:
    """What a model runs on when the user does not say."""

    pool: str = "general"  # the text pool of the textspan stage
    probe: str | None = None  # the generated probe set (``paths.probe_dir(probe)``); None: --images is needed


TOY_WORLD = ModelDefaults(pool="toyworld", probe="toyworld")
MODEL_DEFAULTS = {"toy-s": TOY_WORLD, "toy-m": TOY_WORLD, "toy-l": TOY_WORLD}  # the toy models, smallest first


def model_defaults(architecture: str) -> ModelDefaults:
    return MODEL_DEFAULTS.get(architecture, ModelDefaults())


def shipped_toy_models() -> list[str]:
    """The models that default to the toy-world probe set and whose weights are shipped, smallest first."""
    return [m for m, d in MODEL_DEFAULTS.items() if d.probe == TOY_WORLD.probe and shipped_weights_dir(m)]


@dataclass(frozen=True)
class CatalogueEntry:
    architecture: str
    tags: tuple[str, ...]
    decomposable: bool
    reason: str | None
    project: bool
    shipped: bool


def catalogue() -> list[CatalogueEntry]:
    """Every architecture open_clip and the project know, with tags and decomposability."""
    ours = set(project_models())
    out = []
    for arch in all_architectures():
        why = decomposability(builtin_config(arch))
        out.append(
            CatalogueEntry(arch, tuple(known_tags(arch)), why is None, why, arch in ours,
                           shipped_weights_dir(arch) is not None)
        )
    return out
