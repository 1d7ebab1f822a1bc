"""Model ids and loading: an open_clip architecture plus a weights source.

Architecture and weights are two axes, as in ``open_clip.create_model(name,
pretrained=...)``. Weights come from a pretrained tag (online, or already in the
Hugging Face cache), a local file (.safetensors / .bin / .pt / .pth, loaded with
``weights_only``), an open_clip ``local-dir:`` folder, the package's shipped
weights, or nothing (random init, for tests and benchmarks): ``precompute.weights``,
which also defines the record a run's manifest keeps. The project registers its own
configs (tiny test models, toy-world models) from ``precompute/model_configs/``; toy
models default to the weights shipped under ``data/models/<name>/``
(``paths.MODELS_DIR``), and to the toy-world pool and probe set (``MODEL_DEFAULTS``).

Models are built exactly as open_clip builds them (stock blocks and their fused
attention kernel); the decomposition only adds hooks.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from precompute.errors import InputError, ModelError, OfflineError
from precompute.paths import CONFIG_DIR
from precompute.weights import WEIGHT_SUFFIXES, WeightsSource, file_sha256, shipped_weights_dir  # noqa: F401

HUB_HOST = ("huggingface.co", 443)


@dataclass(frozen=True)
class ModelSpec:
    """What to load and where to run it."""

    architecture: str
    weights: WeightsSource
    device: str = "cpu"
    precision: str = "fp32"


@dataclass(frozen=True)
class ModelInfo:
    """The geometry of a loaded vision tower, as the decomposition sees it."""

    layers: int  # residual blocks
    heads: int  # per block
    width: int  # residual width d
    head_width: int
    embed_dim: int  # output D
    image_size: int
    patch_size: int
    grid: int  # patches per side
    quick_gelu: bool

    @property
    def tokens(self) -> int:
        return 1 + self.grid * self.grid


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    model: Any  # open_clip.CLIP, in eval mode
    preprocess: Callable  # PIL image -> [3, H, W] tensor
    tokenizer: Callable  # list[str] -> [m, context] tensor
    info: ModelInfo
    weights_sha256: str | None  # of the checkpoint file; None for random init and uncached tags


# --------------------------------------------------------------------------- configs


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


def _builtin_config(architecture: str) -> dict:
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


def _local_dir_config(path: Path) -> dict:
    cfg_file = path / "open_clip_config.json"
    if not cfg_file.is_file():
        raise InputError(f"{path} is not an open_clip local-dir folder: open_clip_config.json is missing")
    try:
        raw = json.loads(cfg_file.read_text())
        return copy.deepcopy(raw["model_cfg"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{cfg_file} is not a valid open_clip config (needs a 'model_cfg' key): {e}") from e


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
    return None


SUPPORTED = (
    "open_clip ViTs that pool with the class token (OpenAI and OpenCLIP ViT-B/L/H/g, any patch "
    "and image size, GELU or QuickGELU, with or without layer scale)"
)


def check_decomposable(architecture: str, cfg: dict) -> None:
    why = decomposability(cfg)
    if why:
        raise ModelError(f"{architecture} cannot be decomposed: {why}. Supported: {SUPPORTED}.")


# --------------------------------------------------------------------------- weights


def parse_weights(architecture: str, pretrained: str | None, random_init: bool = False,
                  seed: int = 0) -> WeightsSource:
    """Turn the user's --pretrained / --random-init into a WeightsSource, or explain what is wrong.

    A random init is seeded, so that a resumed run, the dashboard and a benchmark see the same weights.
    """
    if random_init:
        if pretrained:
            raise InputError("--random-init and --pretrained exclude each other: pass one")
        return WeightsSource("none", str(seed))
    if not pretrained:
        _builtin_config(architecture)  # an unknown name gets its close matches before any talk of weights
        if shipped_weights_dir(architecture) is not None:
            return WeightsSource("shipped", architecture)
        tags = known_tags(architecture)
        tag_hint = f" (known tags: {', '.join(tags)})" if tags else ""
        raise InputError(
            f"no weights given for {architecture}: pass --pretrained TAG{tag_hint}, a weights file, "
            "local-dir:FOLDER, or --random-init"
        )
    if pretrained.startswith("local-dir:"):
        path = Path(pretrained[len("local-dir:"):]).expanduser().resolve()
        if not path.is_dir():
            raise InputError(f"local-dir folder not found: {path}")
        return WeightsSource("local-dir", str(path))
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return WeightsSource("local-dir", str(path.resolve()))
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise InputError(f"{path}: unknown weights file type {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}")
        return WeightsSource("file", str(path.resolve()))
    if path.suffix in WEIGHT_SUFFIXES or os.sep in pretrained:
        raise InputError(f"weights file not found: {path}")
    tags = known_tags(architecture)
    clean = pretrained.lower().replace("-", "_")
    if clean not in tags:
        hint = f"known tags for {architecture}: {', '.join(tags)}" if tags else f"{architecture} has no known tags"
        raise InputError(f"unknown pretrained tag {pretrained!r}: {hint}; or pass a weights file or local-dir:FOLDER")
    return WeightsSource("tag", clean)


def _hub_reachable(timeout: float = 1.0) -> bool:
    """Probe the model hub in a daemon thread so a hanging DNS lookup cannot stall us."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _cached_tag_file(architecture: str, tag: str) -> str | None:
    """The tag's checkpoint if it is already in a local cache, else None."""
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(architecture, tag)
    hub = pcfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - a dependency of open_clip
            return None
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = pcfg.get("url", "")
    if url:
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {device!r}: choose auto, cpu, cuda or mps")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: MPS is not available here; use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision not in ("fp32", "fp16", "bf16"):
        raise InputError(f"unknown precision {precision!r}: choose fp32, fp16 or bf16")
    if precision == "fp16" and device == "cpu":
        raise InputError("--precision fp16 needs a GPU; on the CPU use fp32 (or bf16)")
    return precision


# --------------------------------------------------------------------------- loading


def model_config(architecture: str, weights: WeightsSource) -> dict:
    """The config the model will be built from (a local-dir or shipped folder's own config wins)."""
    folder = weights.folder()
    if folder is not None:
        return _local_dir_config(folder)
    return _builtin_config(architecture)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model for ``spec`` in eval mode, or raise a ModelError."""
    import open_clip

    register_project_configs()
    cfg = model_config(spec.architecture, spec.weights)
    check_decomposable(spec.architecture, cfg)
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device)
    kwargs: dict[str, Any] = dict(precision=precision, device=device)
    sha = None
    w = spec.weights
    if w.folder() is not None:
        name, pretrained = f"local-dir:{w.folder()}", None
    else:
        name, pretrained = spec.architecture, None
        if w.kind == "file":
            pretrained = w.value
        elif w.kind == "tag":
            pcfg = open_clip.get_pretrained_cfg(spec.architecture, w.value)
            kwargs["force_quick_gelu"] = bool(pcfg.get("quick_gelu", False))
            for key, arg in (("mean", "image_mean"), ("std", "image_std"),
                             ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
                if key in pcfg:
                    kwargs[arg] = pcfg[key]
            cached = _cached_tag_file(spec.architecture, w.value)
            if cached:
                pretrained = cached
            elif not _hub_reachable():
                raise OfflineError(
                    f"pretrained tag {w.value!r} needs a download from the model hub, which is not reachable "
                    "(offline, or HF_HUB_OFFLINE is set). Pass a local weights file (--pretrained "
                    "/path/model.safetensors) or an open_clip folder (--pretrained local-dir:/path), or go online."
                )
            else:
                pretrained = w.value
    if w.kind == "none":
        torch.manual_seed(int(w.value or 0))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError, OSError) as e:
        raise ModelError(f"could not load {spec.architecture} with weights {w.describe()}: {e}") from e
    model.eval()
    _check_precision_supported(model, spec.architecture, precision)
    if w.kind in ("file", "local-dir", "shipped"):
        ckpt = w.checkpoint()
        sha = file_sha256(ckpt) if ckpt else None
    elif w.kind == "tag" and pretrained and os.path.isfile(str(pretrained)):
        sha = file_sha256(pretrained)
    return LoadedModel(spec, model, preprocess, tokenizer, model_info(model), sha)


def _check_precision_supported(model: Any, architecture: str, precision: str) -> None:
    """open_clip's fp16/bf16 cast (``convert_weights_to_lp``) leaves layer-scale gains in float32, and such a
    model then fails inside its first block ("mat1 and mat2 must have the same dtype"): refuse it here."""
    if precision == "fp32":
        return
    blocks = model.visual.transformer.resblocks
    if any(getattr(b.ls_1, "gamma", None) is not None for b in blocks):
        raise ModelError(f"{architecture} has layer scale, which open_clip cannot run in {precision} "
                         "(its low-precision cast leaves the gains in float32); use --precision fp32")


def model_info(model: Any) -> ModelInfo:
    visual = model.visual
    blocks = visual.transformer.resblocks
    attn = blocks[0].attn
    heads = attn.num_heads
    width = visual.transformer.width
    gelu = blocks[0].mlp.gelu
    return ModelInfo(
        layers=len(blocks),
        heads=heads,
        width=width,
        head_width=width // heads,
        embed_dim=visual.output_dim,
        image_size=int(visual.image_size[0]),
        patch_size=int(visual.patch_size[0]),
        grid=int(visual.grid_size[0]),
        quick_gelu=type(gelu).__name__ == "QuickGELU",
    )


# --------------------------------------------------------------------------- catalogue


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
        why = decomposability(_builtin_config(arch))
        out.append(
            CatalogueEntry(arch, tuple(known_tags(arch)), why is None, why, arch in ours,
                           shipped_weights_dir(arch) is not None)
        )
    return out


def parse_layers(spec: str | None, n_layers: int) -> tuple[int, ...]:
    """'-4:' (a Python slice), '8,9,10,11', or '10' -> sorted absolute block indices."""
    if spec is None or spec.strip() == "":
        spec = "-4:"
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3:
                raise ValueError
            chosen = list(range(n_layers))[slice(*parts)]
        else:
            chosen = [int(p) for p in spec.split(",") if p.strip()]
            chosen = [c + n_layers if c < 0 else c for c in chosen]
    except ValueError:
        raise InputError(f"--layers {spec!r}: expected a slice like '-4:' or a list like '8,9,10,11'") from None
    bad = [c for c in chosen if not 0 <= c < n_layers]
    if bad or not chosen:
        raise InputError(f"--layers {spec!r}: the model has layers 0..{n_layers - 1}; got {bad or 'none'}")
    return tuple(sorted(set(chosen)))


def spec_from_manifest(model: Mapping, device: str = "auto") -> tuple[ModelSpec | None, str | None]:
    """The ModelSpec of a run (its manifest's ``model`` record, ``weights.migrate_model_record``'s form), or
    (None, why its weights are not available here).

    The one way back from a manifest to a model: the precompute (``pipeline.loaded_for_run``) and the
    dashboard (``state.model_spec``) both rebuild through it. A checkpoint must have the sha256 the run
    recorded; a path of another machine is reported, not guessed.
    """
    arch = model.get("architecture")
    if not arch or "weights" not in model:
        return None, "the run's manifest does not say which weights it used"
    try:
        source = WeightsSource.from_record(model["weights"])
    except ValueError as e:
        return None, f"the run's manifest: {e}"
    spec = ModelSpec(arch, source, device)
    if source.kind in ("none", "tag"):
        return spec, None
    folder = source.folder()
    where = Path(str(source.value)) if folder is None else folder
    if not where.exists():
        if source.kind == "shipped":
            return None, f"the run's weights are the shipped {source.value}, which this installation does not ship"
        return None, f"the run's weights {where} are not on this machine"
    expected = model["weights"].get("sha256")
    ckpt = source.checkpoint()
    if expected and ckpt and file_sha256(ckpt) != expected:
        return None, f"the weights at {where} differ from the ones the run was made with (sha256 mismatch)"
    return spec, None
