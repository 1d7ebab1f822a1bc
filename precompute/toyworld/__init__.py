"""The toy world: procedural images whose attributes are known, their captions, and the toy CLIP models.

- ``captions``: the vocabulary (attributes and values), captions and zero-shot prompts
- ``generator``: rendering batches and writing probe sets (``attributes.parquet`` + class folders)
- ``losses``: the training objective (multi-positive InfoNCE + auxiliary attribute classifiers)
- ``models``: the toy CLIP models (toy-s, toy-m, toy-l): a fresh one, export, loading, zero-shot evaluation
- ``train``: the resumable training loop and its record
- ``cli``: the ``clip-interpret toyworld`` commands

The public names below resolve on first use (PEP 562), so that importing the CLI
does not load torch before it has set ``OMP_WAIT_POLICY``.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "captions": ("ATTRIBUTES", "ATTRIBUTE_NAMES", "PROMPTS", "CaptionDropout", "NO_DROPOUT", "caption", "prompts",
                 "mentioned", "plural"),
    "generator": ("ATTRIBUTES_FILE", "IMAGE_SIZE", "Batch", "render_batch", "iter_batches", "write_probe_set"),
    "models": ("SIZES", "EVAL_SEED", "EVAL_IMAGES", "model_name", "create_toy_model", "export", "load_exported",
               "evaluate", "zero_shot"),
    "train": ("TrainConfig", "train_and_export"),
}
_HOME = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
