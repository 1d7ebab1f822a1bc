"""Loading a model: a ModelSpec (architecture, weights, device, precision) -> a LoadedModel in eval mode.

Models are built exactly as open_clip builds them (stock blocks and their fused attention kernel); the
decomposition only adds hooks. The geometry the decomposition reads is asserted once, here, where a model
comes in: from the config before the build (``architectures.decomposability``) and on the built model
(``check_geometry``), so a model the decomposition cannot read fails with a ModelError naming why, not
inside a reshape. A run's manifest comes back to a ModelSpec through ``spec_from_manifest``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from precompute.architectures import (builtin_config, check_decomposable, local_dir_config, refusal,
                                      register_project_configs)
from precompute.errors import InputError, ModelError
from precompute.weights import WeightsSource, file_sha256, tag_checkpoint


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


def model_config(architecture: str, weights: WeightsSource) -> dict:
    """The config the model will be built from (a local-dir or shipped folder's own config wins)."""
    folder = weights.folder()
    if folder is not None:
        return local_dir_config(folder)
    return builtin_config(architecture)


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
            pretrained, tag_kwargs = tag_checkpoint(spec.architecture, str(w.value))
            kwargs |= tag_kwargs
    if w.kind == "none":
        torch.manual_seed(int(w.value or 0))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError, OSError) as e:
        raise ModelError(f"could not load {spec.architecture} with weights {w.describe()}: {e}") from e
    model.eval()
    check_geometry(model, spec.architecture)
    _check_precision_supported(model, spec.architecture, precision)
    if w.kind in ("file", "local-dir", "shipped"):
        ckpt = w.checkpoint()
        sha = file_sha256(ckpt) if ckpt else None
    elif w.kind == "tag" and pretrained and os.path.isfile(str(pretrained)):
        sha = file_sha256(pretrained)
    return LoadedModel(spec, model, preprocess, tokenizer, model_info(model), sha)


def check_geometry(model: Any, architecture: str) -> None:
    """The layout the decomposition reads, asserted on the built model: an open_clip VisionTransformer that
    pools with its class token, every block's attention batch-first with a fused ``in_proj_weight`` [3d, d]
    and ``out_proj``, the same number of heads in every block splitting the width evenly, and a square image
    on a square patch grid. A ModelError names the first thing that does not hold."""
    visual = getattr(model, "visual", None)
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or not len(blocks):
        raise refusal(architecture, "its vision tower is not an open_clip VisionTransformer (no transformer blocks)")
    if getattr(visual, "attn_pool", None) is not None:
        raise refusal(architecture, "its vision tower has an attentional pooler")
    if getattr(visual, "pool_type", "tok") != "tok":
        raise refusal(architecture, f"its vision tower pools with {visual.pool_type!r}, not the class token")
    width, heads = transformer.width, getattr(blocks[0].attn, "num_heads", 0)
    if heads < 1 or width % heads:
        raise refusal(architecture, f"its {heads} attention heads do not split the width {width} evenly")
    for i, block in enumerate(blocks):
        attn = block.attn
        w = getattr(attn, "in_proj_weight", None)
        if w is None or getattr(attn, "out_proj", None) is None:
            raise refusal(architecture, f"the attention of block {i} has no fused in_proj_weight and out_proj "
                                        "(the layout of nn.MultiheadAttention and open_clip's Attention)")
        if not getattr(attn, "batch_first", True):
            raise refusal(architecture, f"the attention of block {i} is not batch-first "
                                        "(open_clip >= 2.24 builds it so)")
        if getattr(attn, "num_heads", None) != heads or tuple(w.shape) != (3 * width, width):
            raise refusal(architecture, f"the attention of block {i} has {getattr(attn, 'num_heads', None)} heads "
                                        f"and in_proj_weight {list(w.shape)}; block 0 has {heads} heads and every "
                                        f"block needs in_proj_weight [{3 * width}, {width}]")
    sizes = {"image_size": visual.image_size, "patch_size": visual.patch_size, "patch grid": visual.grid_size}
    for what, (a, b) in sizes.items():
        if a != b:
            raise refusal(architecture, f"its {what} {a}x{b} is not square: the decomposition supports square "
                                        "images on a square patch grid")


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
    """The geometry of a model ``check_geometry`` accepted (square sizes: one side stands for both)."""
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
