"""Architectures: their names, their open_clip configs, and whether the decomposition can handle them.

The architecture axis of ``open_clip.create_model(name, pretrained=...)`` (open_clip's ``factory.py``); the
weights axis is ``precompute.weights``. The project registers its own configs (tiny test models, toy-world
models) from ``precompute/model_configs/``. A model's geometry is judged here, from its config, before
anything is built; ``loading.check_geometry`` asserts the same layout on the built model.

No torch at import: open_clip is imported where a config is needed.
"""

from __future__ import annotations

import copy
import difflib
import json
from functools import lru_cache
from pathlib import Path

from precompute.errors import InputError, ModelError
from precompute.paths import CONFIG_DIR

SUPPORTED = (
    "open_clip ViTs that pool with the class token (OpenAI and OpenCLIP ViT-B/L/H/g, any square image and "
    "patch size, GELU or QuickGELU, with or without layer scale)"
)


@lru_cache(maxsize=1)
def register_project_configs() -> tuple[str, ...]:
    """Register the project's JSON configs with open_clip (idempotent); return their names."""
    import open_clip

    if CONFIG_DIR.is_dir():
        open_clip.add_model_config(CONFIG_DIR)
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


def project_models() -> tuple[str, ...]:
    return register_project_configs()


def all_architectures() -> list[str]:
    import open_clip

    register_project_configs()
    return list(open_clip.list_models())


def known_tags(architecture: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(architecture))


def builtin_config(architecture: str) -> dict:
    """A copy of the registered config of ``architecture``; a ModelError naming close matches if there is none."""
    import open_clip

    register_project_configs()
    cfg = open_clip.get_model_config(architecture)
    if cfg is None:
        choices = all_architectures()
        close = difflib.get_close_matches(architecture, choices, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown architecture {architecture!r}.{hint} "
            f"Run `clip-interpret models` for the {len(choices)} known architectures."
        )
    return copy.deepcopy(cfg)


def local_dir_config(path: Path) -> dict:
    """The ``model_cfg`` of an open_clip ``local-dir:`` folder's ``open_clip_config.json``."""
    cfg_file = path / "open_clip_config.json"
    if not cfg_file.is_file():
        raise InputError(f"{path} is not an open_clip local-dir folder: open_clip_config.json is missing")
    try:
        raw = json.loads(cfg_file.read_text())
        return copy.deepcopy(raw["model_cfg"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{cfg_file} is not a valid open_clip config (needs a 'model_cfg' key): {e}") from e


def _not_square(size: object) -> bool:
    """A size given as [height, width] with two different sides (an int is square)."""
    return isinstance(size, (list, tuple)) and len(set(size)) > 1


def geometry_problem(vision: dict) -> str | None:
    """Why an open_clip ViT vision config has a geometry the decomposition cannot read, or None.

    Heads must split the width evenly (open_clip makes ``width // head_width`` heads), and image and patch
    must be square: ``ModelInfo.grid``, its token count and the spatial maps assume a square patch grid.
    """
    from open_clip.model import CLIPVisionCfg

    default = CLIPVisionCfg()
    width, head_width = vision.get("width", default.width), vision.get("head_width", default.head_width)
    heads = width // head_width if head_width > 0 else 0
    if heads < 1 or width % heads:
        return (f"its vision tower has width {width} and head_width {head_width}, which makes {heads} heads: "
                "the heads must split the width evenly")
    for key in ("image_size", "patch_size"):
        size = vision.get(key, getattr(default, key))
        if _not_square(size):
            return (f"its {key} {list(size)} is not square: the decomposition supports square images "
                    f"on a square patch grid ({key} N or [N, N])")
    return None


def decomposability(cfg: dict) -> str | None:
    """None when the decomposition can handle this config, else why not."""
    vision = cfg.get("vision_cfg", {})
    if "timm_model_name" in vision:
        return f"its vision tower is a timm model ({vision['timm_model_name']}), not an open_clip ViT"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its vision tower is a ResNet"
    if "init_logit_bias" in cfg:
        return "it is a SigLIP model (sigmoid loss, attention-pooled)"
    if vision.get("attentional_pool"):
        return "its vision tower has an attentional pooler"
    if vision.get("pool_type", "tok") != "tok":
        return f"its vision tower pools with {vision['pool_type']!r}, not the class token"
    for flag in ("qk_norm", "scaled_cosine_attn", "scale_attn_inner", "scale_attn"):
        if vision.get(flag):
            return f"its vision tower uses {flag}, which makes the head outputs non-linear"
    if "multimodal_cfg" in cfg:
        return "it is a CoCa model (attention-pooled image embedding)"
    return geometry_problem(vision)


def refusal(architecture: str, why: str) -> ModelError:
    """The one form of 'cannot be decomposed': the architecture, why, and what is supported."""
    return ModelError(f"{architecture} cannot be decomposed: {why}. Supported: {SUPPORTED}.")


def check_decomposable(architecture: str, cfg: dict) -> None:
    why = decomposability(cfg)
    if why:
        raise refusal(architecture, why)
