"""Where a model's weights come from, as a value and as the record a run's manifest keeps.

Kinds of source (``WeightsSource.kind``) and what ``value`` holds:

    tag        an open_clip pretrained tag ('openai'); loaded from the hub or its cache
    file       a checkpoint file (.safetensors / .bin / .pt / .pth), absolute path
    local-dir  an open_clip folder (open_clip_config.json + checkpoint), absolute path
    shipped    a model shipped with the package under ``paths.MODELS_DIR`` ('toy-s'): the name,
               never the path, so a run made on one machine names the same weights on another
    none       random init, seeded: the seed ('0')

The manifest's ``model.weights`` is ``{"kind", "value"}`` plus ``"sha256"`` of the checkpoint
file where there is one (``WeightsSource.record``); ``WeightsSource.from_record`` reads it back.
Manifests written before the record spelled the source as a string (``pretrained``: a tag, a path,
``local-dir:PATH`` or ``random-init:seed=N``) with ``weights_kind`` and ``weights_sha256``;
``migrate_model_record`` turns those into the record when a manifest is read
(``store.parse_manifest``), and a folder of shipped weights recorded by its absolute path
becomes ``shipped`` when its checkpoint has the sha256 the run recorded.

Turning the user's ``--pretrained`` / ``--random-init`` into a source is ``parse_weights``; a tag is
resolved to its cached checkpoint, or to a download when the hub is reachable, by ``tag_checkpoint``
(a 1 s probe in a daemon thread, skipped when ``HF_HUB_OFFLINE`` is set): open_clip's ``pretrained.py``.

No torch here: reading a manifest must not load it (open_clip is imported only where a tag is resolved).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

from precompute.architectures import builtin_config, known_tags
from precompute.errors import InputError, OfflineError
from precompute.paths import MODELS_DIR

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WeightsKind = Literal["tag", "file", "local-dir", "shipped", "none"]
KINDS: tuple[str, ...] = ("tag", "file", "local-dir", "shipped", "none")
_LEGACY_FIELDS = ("pretrained", "weights_kind", "weights_sha256")
HUB_HOST = ("huggingface.co", 443)


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from (see the module docstring for ``kind`` and ``value``)."""

    kind: WeightsKind
    value: str | None = None

    def describe(self) -> str:
        """One line for people and tables: the tag, the path, ``local-dir:PATH``, ``shipped:NAME`` or
        ``random-init:seed=N``."""
        if self.kind == "none":
            return f"random-init:seed={self.value or 0}"
        if self.kind in ("local-dir", "shipped"):
            return f"{self.kind}:{self.value}"
        return str(self.value)

    def folder(self) -> Path | None:
        """The open_clip folder of a local-dir or shipped source; None for the other kinds."""
        if self.kind == "local-dir":
            return Path(str(self.value))
        if self.kind == "shipped":
            return MODELS_DIR / str(self.value)
        return None

    def checkpoint(self) -> str | None:
        """The checkpoint file this source loads, where it is a file on this machine."""
        if self.kind == "file":
            return str(self.value)
        folder = self.folder()
        return local_dir_checkpoint(folder) if folder is not None and folder.is_dir() else None

    def record(self, sha256: str | None) -> dict:
        """The manifest's ``model.weights``: kind, value, and the checkpoint's sha256 where there is one."""
        return {"kind": self.kind, "value": self.value, **({"sha256": sha256} if sha256 else {})}

    @classmethod
    def from_record(cls, record: Mapping) -> WeightsSource:
        """The source a ``record`` names; ValueError naming what is wrong with it."""
        if not isinstance(record, Mapping):
            raise ValueError(f"the weights record is a {type(record).__name__}, not an object")
        kind, value = record.get("kind"), record.get("value")
        if kind not in KINDS:
            raise ValueError(f"unknown weights kind {kind!r}; known: {', '.join(KINDS)}")
        if not isinstance(value, str) or not value:
            raise ValueError(f"the {kind} weights record has no value")
        return cls(kind, value)


def describe_record(record: object) -> str | None:
    """``WeightsSource.describe()`` of a manifest's weights record; None when it is not a valid record."""
    try:
        return WeightsSource.from_record(record).describe()  # type: ignore[arg-type]
    except ValueError:
        return None


def cli_args(record: object) -> list[str]:
    """A manifest's weights record as `clip-interpret` options (a placeholder when it is not a valid record)."""
    try:
        source = WeightsSource.from_record(record)  # type: ignore[arg-type]
    except ValueError:
        return ["--pretrained", "WEIGHTS"]
    if source.kind == "none":
        return ["--random-init", "--seed", str(source.value or 0)]  # explicit: the command reproduces the run
    if source.kind == "shipped":
        return []  # a shipped model's default weights
    return ["--pretrained", source.describe()]


def shipped_weights_dir(architecture: str) -> Path | None:
    """The shipped open_clip folder of ``architecture``, or None when none is shipped."""
    d = MODELS_DIR / architecture
    return d if (d / "open_clip_config.json").is_file() else None


def local_dir_checkpoint(path: Path) -> str | None:
    """The checkpoint file in an open_clip folder (open_clip's own names first)."""
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return str(path / name)
    found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return str(found[0]) if found else None


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=None)
def _shipped_sha256(name: str) -> str | None:
    """sha256 of a shipped model's checkpoint (shipped files do not change while a process runs)."""
    folder = shipped_weights_dir(name)
    ckpt = local_dir_checkpoint(folder) if folder is not None else None
    return file_sha256(ckpt) if ckpt else None


def _legacy_source(pretrained: str, kind: str, sha256: str | None) -> WeightsSource:
    if kind == "none":
        return WeightsSource("none", pretrained.rsplit("seed=", 1)[-1] if "seed=" in pretrained else "0")
    if kind == "local-dir":
        path = pretrained.removeprefix("local-dir:")
        name = Path(path).name
        if sha256 and shipped_weights_dir(name) is not None and _shipped_sha256(name) == sha256:
            return WeightsSource("shipped", name)  # the shipped folder, by the path of the machine that made the run
        return WeightsSource("local-dir", path)
    return WeightsSource(kind, pretrained)  # type: ignore[arg-type]  # tag or file: the string is the value


def migrate_model_record(model: Mapping) -> dict:
    """A manifest's ``model`` in the current form: ``weights`` in place of ``pretrained`` / ``weights_kind`` /
    ``weights_sha256`` (manifests written before the record); a current record is returned as it is."""
    model = dict(model)
    if "weights" in model or model.get("weights_kind") not in KINDS:
        return model
    sha = model.get("weights_sha256")
    source = _legacy_source(str(model.get("pretrained") or ""), model["weights_kind"], sha)
    out = {}
    for key, value in model.items():
        if key == "pretrained":
            out["weights"] = source.record(sha)
        elif key not in _LEGACY_FIELDS:
            out[key] = value
    out.setdefault("weights", source.record(sha))
    return out


def legacy_pretrained(source: WeightsSource) -> str:
    """The string manifests spelled ``source`` as before the record (shipped weights as their folder on this
    machine): the decompose stage's key hashes it, so runs made before the record stay current."""
    if source.kind == "shipped":
        return f"local-dir:{MODELS_DIR / str(source.value)}"
    return source.describe()


# --------------------------------------------------------------------------- from the user's options


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
        builtin_config(architecture)  # an unknown name gets its close matches before any talk of weights
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


# --------------------------------------------------------------------------- pretrained tags


def hub_reachable(timeout: float = 1.0) -> bool:
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


def cached_tag_file(architecture: str, tag: str) -> str | None:
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


def tag_checkpoint(architecture: str, tag: str) -> tuple[str, dict[str, Any]]:
    """What open_clip builds a tag from: the cached checkpoint (or the tag, to download it) and the build
    arguments of the tag's pretrained config (QuickGELU, normalisation, resize); OfflineError when the tag is
    neither cached nor reachable."""
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(architecture, tag)
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(pcfg.get("quick_gelu", False))}
    for key, arg in (("mean", "image_mean"), ("std", "image_std"),
                     ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
        if key in pcfg:
            kwargs[arg] = pcfg[key]
    cached = cached_tag_file(architecture, tag)
    if cached:
        return cached, kwargs
    if not hub_reachable():
        raise OfflineError(
            f"pretrained tag {tag!r} needs a download from the model hub, which is not reachable "
            "(offline, or HF_HUB_OFFLINE is set). Pass a local weights file (--pretrained "
            "/path/model.safetensors) or an open_clip folder (--pretrained local-dir:/path), or go online."
        )
    return tag, kwargs
