"""The toy CLIP models (toy-s, toy-m, toy-l): names, a fresh model, export, loading and zero-shot evaluation.

An exported model is a plain open_clip ``local-dir`` folder (``open_clip_config.json`` +
``open_clip_model.safetensors``), loaded back through ``registry.load_model`` like any
other model; its zero-shot accuracy is ``metrics.zero_shot_accuracy`` per attribute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from precompute import metrics, registry
from precompute.errors import InputError, ModelError
from precompute.paths import CONFIG_DIR, MODELS_DIR
from precompute.store import write_json_atomic
from precompute.textenc import encode_texts
from precompute.toyworld.captions import ATTRIBUTE_NAMES, ATTRIBUTES, PROMPTS, prompts
from precompute.toyworld.generator import render_batch

SIZES = {"s": "toy-s", "m": "toy-m", "l": "toy-l"}
EVAL_SEED = 271828  # never a training seed: training batches use the entropy (seed, step)
EVAL_IMAGES = 1000


def model_name(size: str) -> str:
    """'s'|'m'|'l' or 'toy-s'|... -> the open_clip config name."""
    name = SIZES.get(size, size)
    if name not in SIZES.values():
        raise InputError(f"unknown toy model size {size!r}; valid: {', '.join(SIZES)} (or {', '.join(SIZES.values())})")
    return name


def create_toy_model(name: str) -> torch.nn.Module:
    """A randomly initialised toy CLIP from precompute/model_configs/<name>.json (in train mode)."""
    import open_clip

    registry.register_project_configs()
    return open_clip.create_model(model_name(name))


def init_sincos_positions(model: torch.nn.Module) -> None:
    """Start the (still learnable) vision positional embedding at 2D sin-cos values, CLS row 0.

    With open_clip's small random init a toy ViT needs ~300 steps before it uses
    position at all; from sin-cos it reads position after ~100 (supervised probe, toy-s).
    """
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    pos = model.visual.positional_embedding  # [1 + g*g, d]
    table = get_2d_sincos_pos_embed(pos.shape[1], model.visual.grid_size[0], cls_token=True)
    with torch.no_grad():
        pos.copy_(torch.from_numpy(table).float())


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [b, 64, 64, 3] -> normalised float [b, 3, 64, 64], equal to open_clip's preprocess on 64 px PIL images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)  # [b, 3, 64, 64]
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)  # [1, 3, 1, 1]
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def export(model: torch.nn.Module, name: str, out: Path) -> Path:
    """Write open_clip_config.json + open_clip_model.safetensors (fp16) loadable by ``local-dir:out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model_cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    preprocess = {"size": model_cfg["vision_cfg"]["image_size"], "mode": "RGB", "mean": list(OPENAI_DATASET_MEAN),
                  "std": list(OPENAI_DATASET_STD), "interpolation": "bicubic", "resize_mode": "shortest"}
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "open_clip_model.safetensors"))
    os.chmod(out / "open_clip_model.safetensors", 0o644)  # safetensors writes 0600; these are shipped files
    write_json_atomic(out / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    return out


def load_exported(model_dir: Path | str) -> registry.LoadedModel:
    """An exported folder (open_clip ``local-dir``), or a shipped toy model's name (``toy-m`` or ``m``), through the
    registry's loader: the same model, preprocess and tokenizer a run of that model gets."""
    model_dir = Path(model_dir)
    if not model_dir.exists() and str(model_dir) in (*SIZES, *SIZES.values()):
        name = model_name(str(model_dir))
        return registry.load_model(registry.ModelSpec(name, registry.parse_weights(name, None)))  # the shipped weights
    if not (model_dir / "open_clip_config.json").is_file():
        raise ModelError(f"{model_dir} holds no open_clip_config.json; shipped toy models: "
                         f"{', '.join(p.name for p in MODELS_DIR.glob('toy-*'))}")
    weights = registry.WeightsSource("local-dir", str(model_dir.resolve()))
    return registry.load_model(registry.ModelSpec(model_dir.name, weights))  # the folder's own config decides


@torch.no_grad()
def image_embeddings(loaded: registry.LoadedModel, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """L2-normalised ``encode_image`` of uint8 [n, 64, 64, 3] images through the model's preprocess: [n, D] float32."""
    from PIL import Image

    feats = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([loaded.preprocess(Image.fromarray(im)) for im in images[i : i + batch_size]])  # [b, 3, 64, 64]
        feats.append(F.normalize(loaded.model.encode_image(x).float(), dim=-1).numpy())  # [b, D]
    return np.concatenate(feats)


def zero_shot(loaded: registry.LoadedModel, n: int = EVAL_IMAGES, seed: int = EVAL_SEED) -> dict:
    """Per-attribute zero-shot accuracy (``metrics.zero_shot_accuracy``) on n fresh images; prompts vary one
    attribute, class embeddings are the normalised mean over templates, as in CLIP's prompt ensembling."""
    batch = render_batch(n, seed)
    img = image_embeddings(loaded, batch.images)  # [n, D]
    accuracy, per_template = {}, {}
    for a_idx, attribute in enumerate(ATTRIBUTE_NAMES):
        texts = prompts(attribute)  # [v][t]
        emb = encode_texts(loaded, [t for v in texts for t in v]).reshape(len(texts), len(texts[0]), -1)  # [v, t, D]
        truth = batch.codes[:, a_idx]
        classes = emb.mean(1)  # [v, D]
        classes /= np.linalg.norm(classes, axis=1, keepdims=True)
        accuracy[attribute] = round(metrics.zero_shot_accuracy(img, classes, truth), 4)
        per_template[attribute] = [round(metrics.zero_shot_accuracy(img, emb[:, t], truth), 4)
                                   for t in range(emb.shape[1])]
    return {"accuracy": accuracy, "per_template": per_template, "images": n, "seed": seed,
            "templates": {a: list(PROMPTS[a]) for a in ATTRIBUTE_NAMES},
            "chance": {a: round(1 / len(ATTRIBUTES[a]), 4) for a in ATTRIBUTE_NAMES}}


def evaluate(model_dir: Path | str, n: int = EVAL_IMAGES, seed: int = EVAL_SEED) -> dict:
    """Zero-shot accuracy of an exported model folder or a shipped toy model."""
    return zero_shot(load_exported(model_dir), n=n, seed=seed)
