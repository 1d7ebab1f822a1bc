"""Property labels for heads, each recording who made it (DESIGN.md section 6).

Three labellers, in increasing precedence:

- ``pool`` (default, offline): the property tag most of the head's top TEXTSPAN
  picks share in the text pool;
- ``llm``: a chat model over an OpenAI-compatible endpoint, few-shot prompted
  with hand-labelled heads (Madasu et al. 2409.06579, method_notes.md section 5);
  any failure falls back to the pool label, recorded in the provenance;
- ``manual``: a CSV of overrides (``layer,head,property[,author,note]``) that a
  team edits through the dashboard.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from precompute.errors import InputError

MIXED = "mixed"
ENV_BASE_URL = "CLIP_INTERPRET_LLM_BASE_URL"
ENV_MODEL = "CLIP_INTERPRET_LLM_MODEL"
ENV_API_KEY = "CLIP_INTERPRET_LLM_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "llm_examples.json"
OVERRIDE_COLUMNS = ("layer", "head", "property", "author", "note")


@dataclass(frozen=True)
class HeadLabel:
    """A head's property and the labeller ('pool' | 'llm' | 'manual') and inputs that made it."""

    layer: int
    head: int
    property: str  # MIXED when no property dominates
    labeller: str
    provenance: dict = field(hash=False)

    def provenance_json(self) -> str:
        return json.dumps(self.provenance, sort_keys=True)


class LabelFallbackWarning(UserWarning):
    """The LLM labeller could not label a head; the pool label was kept."""


# ---------------------------------------------------------------- pool labeller


def pool_vote(
    properties: Sequence[str | None], variance_explained: Sequence[float], top_k: int = 5, min_share: float = 0.4
) -> tuple[str, dict]:
    """The property most of the top-k picks share, or MIXED; and the vote details.

    Ties in count go to the property whose picks explain more variance (sum of
    per-pick increments of the cumulative ``variance_explained``), then to the
    earlier pick. Texts without a property (None) never win. MIXED when the
    winner's count is below ``min_share`` of the picks considered.
    """
    if len(properties) != len(variance_explained):
        raise InputError(f"{len(properties)} pick properties but {len(variance_explained)} variance values; one per pick")
    if top_k < 1 or not 0 < min_share <= 1:
        raise InputError(f"top_k={top_k}, min_share={min_share}: need top_k >= 1 and 0 < min_share <= 1")
    top = list(properties[:top_k])
    cumulative = [float(v) for v in variance_explained[:top_k]]
    increments = [v - p for v, p in zip(cumulative, [0.0] + cumulative[:-1])]
    votes = Counter(p for p in top if p is not None)
    weight = {p: sum(w for q, w in zip(top, increments) if q == p) for p in votes}
    details = {"votes": dict(votes), "variance": weight, "considered": len(top)}
    if not votes:
        return MIXED, {**details, "share": 0.0}
    winner = max(votes, key=lambda p: (votes[p], weight[p], -top.index(p)))
    share = votes[winner] / len(top)
    details["share"] = share
    return (winner if share >= min_share - 1e-12 else MIXED), details


def label_pool(
    layer: int,
    head: int,
    properties: Sequence[str | None],
    variance_explained: Sequence[float],
    *,
    pool: str,
    top_k: int = 5,
    min_share: float = 0.4,
) -> HeadLabel:
    """Pool label of one head from its picks' property tags, in rank order (see ``pool_vote``)."""
    prop, details = pool_vote(properties, variance_explained, top_k=top_k, min_share=min_share)
    provenance = {"labeller": "pool", "top_k": top_k, "min_share": min_share, "pool": pool, **details}
    return HeadLabel(int(layer), int(head), prop, "pool", provenance)


# ----------------------------------------------------------------- LLM labeller


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask. The key never appears in repr, provenance or warnings."""

    base_url: str
    model: str
    api_key: str = field(repr=False)
    timeout: float = 30.0
    retries: int = 2  # extra attempts on timeout, 5xx, 429 or a dropped connection
    backoff: float = 1.0  # seconds before the first retry, doubled each time


@dataclass(frozen=True)
class LabelExample:
    """A hand-labelled head for the few-shot prompt."""

    texts: tuple[str, ...]
    property: str


def llm_config(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    *,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 1.0,
    env: Mapping[str, str] | None = None,
) -> LLMConfig:
    """Config from options, else CLIP_INTERPRET_LLM_* env vars (OPENAI_API_KEY for the key)."""
    env = os.environ if env is None else env
    base_url = base_url or env.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    model = model or env.get(ENV_MODEL)
    api_key = api_key or env.get(ENV_API_KEY) or env.get("OPENAI_API_KEY")
    if not model:
        raise InputError(f"the llm labeller needs a model name: pass --llm-model or set {ENV_MODEL}")
    if not api_key:
        raise InputError(f"the llm labeller needs an API key: set {ENV_API_KEY} or OPENAI_API_KEY")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise InputError(f"LLM base URL {_safe_url(base_url)!r} must start with http:// or https://")
    if timeout <= 0 or retries < 0 or backoff < 0:
        raise InputError(f"timeout={timeout}, retries={retries}, backoff={backoff}: need timeout > 0, retries >= 0, backoff >= 0")
    return LLMConfig(base_url.rstrip("/"), model, api_key, float(timeout), int(retries), float(backoff))


def load_examples(path: str | Path = DEFAULT_EXAMPLES) -> tuple[LabelExample, ...]:
    """Few-shot examples from a JSON list of {"texts": [...], "property": "..."}."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read LLM examples from {path}: {exc}") from exc
    ok = isinstance(raw, list) and raw and all(
        isinstance(e, dict)
        and isinstance(e.get("property"), str)
        and isinstance(e.get("texts"), list)
        and e["texts"]
        and all(isinstance(t, str) for t in e["texts"])
        for e in raw
    )
    if not ok:
        raise InputError(f'{path}: expected a non-empty JSON list of {{"texts": [str, ...], "property": str}}')
    return tuple(LabelExample(tuple(e["texts"]), e["property"]) for e in raw)


SYSTEM_PROMPT = (
    "You label attention heads of CLIP vision transformers. Each head is described by the texts "
    "that best explain its outputs (TEXTSPAN), most important first. Name the one property the "
    "texts share (for example colours, locations or animals). Answer with exactly one property "
    "from the allowed list, spelled as listed; answer \"mixed\" when no property dominates. "
    'Reply with JSON only: {"property": "..."}.'
)
FREE_FORM = "any short property name (one to three words), or mixed"  # when the pool has no property tags
USER_TEMPLATE = 'Texts of the head, most important first:\n{texts}\n\nAllowed properties: {allowed}\nReply with JSON only: {{"property": "<one allowed property>"}}'


def prompt_sha256(examples: Sequence[LabelExample]) -> str:
    """Hash of the prompt template and the few-shot examples: which prompt made a label."""
    blob = {"system": SYSTEM_PROMPT, "user": USER_TEMPLATE, "examples": [[list(e.texts), e.property] for e in examples]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode("utf-8")).hexdigest()


def build_messages(texts: Sequence[str], allowed: Sequence[str], examples: Sequence[LabelExample]) -> list[dict]:
    """Chat messages: system, then one user/assistant turn per example, then the head."""

    def user(head_texts: Sequence[str], choices: Sequence[str]) -> dict:
        listed = "\n".join(f"{i}. {t}" for i, t in enumerate(head_texts, 1))
        named = ", ".join(choices) if set(choices) - {MIXED} else FREE_FORM
        return {"role": "user", "content": USER_TEMPLATE.format(texts=listed, allowed=named)}

    example_choices = sorted({e.property for e in examples} - {MIXED}) + [MIXED]
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for e in examples:
        messages += [user(e.texts, example_choices), {"role": "assistant", "content": json.dumps({"property": e.property})}]
    return messages + [user(texts, allowed)]


def label_llm(
    layer: int,
    head: int,
    texts: Sequence[str],
    allowed: Sequence[str],
    fallback: HeadLabel,
    config: LLMConfig,
    examples: Sequence[LabelExample],
) -> HeadLabel:
    """Ask the chat model for one head's property; the fallback (pool) label on any failure.

    ``allowed`` are the pool's property names; MIXED is added. With no names
    (an untagged pool) the model names the property freely, as in the paper. POST
    {base_url}/chat/completions, temperature 0, Bearer key; retries with
    exponential backoff on timeout / 5xx / 429 / connection errors; a refusal
    (other 4xx, content filter), a malformed reply or a property outside
    ``allowed`` falls back with a ``LabelFallbackWarning``.
    """
    choices = list(dict.fromkeys([*allowed, MIXED]))
    messages = build_messages(texts, choices, examples)
    meta = {"model": config.model, "base_url": _safe_url(config.base_url), "prompt_sha256": prompt_sha256(examples)}
    attempts = 0
    try:
        reply, attempts = _chat(config, {"model": config.model, "messages": messages, "temperature": 0})
        prop = _parse_property(reply, choices)
    except _LLMFailure as exc:
        reason = _redact(str(exc), config.api_key)
        warnings.warn(
            f"LLM labeller, L{layer}.H{head}: {reason}; keeping the {fallback.labeller} label {fallback.property!r}",
            LabelFallbackWarning,
            stacklevel=2,
        )
        fell = {**meta, "reason": reason, "attempts": max(attempts, exc.attempts)}
        return HeadLabel(fallback.layer, fallback.head, fallback.property, fallback.labeller, {**fallback.provenance, "llm_fallback": fell})
    provenance = {
        "labeller": "llm",
        **meta,
        "temperature": 0,
        "examples": len(examples),
        "allowed": choices,
        "attempts": attempts,
        "reply": _redact(reply[:200], config.api_key),
        "pool_property": fallback.property,
    }
    return HeadLabel(int(layer), int(head), prop, "llm", provenance)


class _LLMFailure(Exception):
    def __init__(self, message: str, attempts: int = 0, retry: bool = False):
        super().__init__(message)
        self.attempts, self.retry = attempts, retry


def _chat(config: LLMConfig, body: dict) -> tuple[str, int]:
    """POST with retries; (message content, attempts made)."""
    for attempt in range(config.retries + 1):
        try:
            return _post_once(config, body), attempt + 1
        except _LLMFailure as exc:
            exc.attempts = attempt + 1
            if not exc.retry or attempt == config.retries:
                raise
        time.sleep(config.backoff * 2**attempt)
    raise AssertionError("unreachable")


def _post_once(config: LLMConfig, body: dict) -> str:
    request = urllib.request.Request(
        f"{config.base_url}/chat/completions",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {config.api_key}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        retry = exc.code >= 500 or exc.code == 429
        raise _LLMFailure(f"HTTP {exc.code} {exc.reason}", retry=retry) from None
    except (TimeoutError, socket.timeout) as exc:
        raise _LLMFailure(f"no reply within {config.timeout} s ({type(exc).__name__})", retry=True) from None
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise _LLMFailure(f"no reply within {config.timeout} s (connect)", retry=True) from None
        raise _LLMFailure(f"connection failed: {reason}", retry=True) from None
    try:
        choice = json.loads(raw)["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _LLMFailure(f"malformed reply body: {raw[:120]!r}") from None
    if choice.get("finish_reason") == "content_filter" or message.get("refusal") or not isinstance(message.get("content"), str):
        raise _LLMFailure(f"the model refused (finish_reason={choice.get('finish_reason')!r})")
    return message["content"]


def _parse_property(reply: str, allowed: Sequence[str]) -> str:
    """The allowed property named by a reply like {"property": "x"}, possibly inside ``` fences."""
    by_key = {a.strip().casefold(): a for a in allowed}
    free = not set(allowed) - {MIXED}
    text = reply.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    text = fenced.group(1).strip() if fenced else text
    found = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if found:
        try:
            value = json.loads(found.group(0)).get("property")
        except (ValueError, AttributeError):
            value = None
    else:  # a bare allowed name is unambiguous enough; any other prose is malformed
        bare = text.strip("\"'. ").casefold()
        value = by_key[bare] if bare in by_key else None
    if free and isinstance(value, str) and 0 < len(value.strip()) <= 40 and "\n" not in value:
        return by_key.get(value.strip().casefold(), value.strip())
    if not isinstance(value, str) or not value.strip():
        raise _LLMFailure(f"malformed reply, no JSON property in {reply[:120]!r}")
    if value.strip().casefold() not in by_key:
        raise _LLMFailure(f"property {value!r} is not one of the allowed: {', '.join(allowed)}")
    return by_key[value.strip().casefold()]


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _safe_url(url: str) -> str:
    """The URL without credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ------------------------------------------------------------- manual overrides


@dataclass(frozen=True)
class Override:
    """A human's label for one head, from the overrides CSV."""

    property: str
    author: str | None = None
    note: str | None = None


def load_overrides(path: str | Path, missing_ok: bool = False) -> dict[tuple[int, int], Override]:
    """Overrides from a CSV with columns layer,head,property and optional author,note."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return {}
        raise InputError(f"overrides file {path} does not exist")
    out: dict[tuple[int, int], Override] = {}
    seen_at: dict[tuple[int, int], int] = {}
    for line, row in _read_rows(path):
        key = (_index(row["layer"], "layer", path, line), _index(row["head"], "head", path, line))
        prop = (row["property"] or "").strip()
        if not prop:
            raise InputError(f"{path}, line {line}: empty property for L{key[0]}.H{key[1]}")
        if key in out and out[key].property != prop:
            raise InputError(
                f"{path}: L{key[0]}.H{key[1]} is labelled {out[key].property!r} on line {seen_at[key]} "
                f"and {prop!r} on line {line}; keep one row per head"
            )
        out[key] = Override(prop, (row.get("author") or "").strip() or None, (row.get("note") or "").strip() or None)
        seen_at[key] = line
    return out


def apply_overrides(
    labels: Sequence[HeadLabel], overrides: Mapping[tuple[int, int], Override | str], source: str | Path
) -> list[HeadLabel]:
    """Labels with every overridden head replaced by a 'manual' label (wins over pool and llm).

    Overrides for heads not in ``labels`` are ignored.
    """
    out = []
    for label in labels:
        found = overrides.get((label.layer, label.head))
        if found is None:
            out.append(label)
            continue
        override = found if isinstance(found, Override) else Override(str(found))
        provenance = {"labeller": "manual", "file": str(source), "replaced": {"labeller": label.labeller, "property": label.property}}
        provenance.update({k: v for k, v in (("author", override.author), ("note", override.note)) if v})
        out.append(HeadLabel(label.layer, label.head, override.property, "manual", provenance))
    return out


def write_override(
    path: str | Path, layer: int, head: int, property: str, author: str | None = None, note: str | None = None
) -> None:
    """Add or replace the override row of one head, atomically (temp file + rename, under a lock)."""
    path = Path(path)
    prop = (property or "").strip()
    if not prop:
        raise InputError("an override needs a non-empty property")
    if int(layer) < 0 or int(head) < 0:
        raise InputError(f"layer={layer}, head={head}: both must be >= 0")
    new = {"layer": str(int(layer)), "head": str(int(head)), "property": prop, "author": author or "", "note": note or ""}
    with _locked(path):
        rows = [row for _, row in _read_rows(path)] if path.exists() else []
        columns = list(OVERRIDE_COLUMNS) + [c for c in (rows[0].keys() if rows else []) if c not in OVERRIDE_COLUMNS]
        kept, replaced = [], False
        for row in rows:
            if (row["layer"].strip(), row["head"].strip()) == (new["layer"], new["head"]):
                if not replaced:
                    kept.append({**row, **new})
                replaced = True
            else:
                kept.append(row)
        if not replaced:
            kept.append(new)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows({c: row.get(c) or "" for c in columns} for row in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in OVERRIDE_COLUMNS[:3] if c not in columns]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}; "
                f"expected layer,head,property[,author,note]"
            )
        reader.fieldnames = columns
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _index(value: str | None, name: str, path: Path, line: int) -> int:
    try:
        number = int((value or "").strip())
    except ValueError:
        raise InputError(f"{path}, line {line}: {name} {value!r} is not an integer") from None
    if number < 0:
        raise InputError(f"{path}, line {line}: {name} {number} must be >= 0")
    return number


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on a sidecar file, so two dashboard sessions do not lose each other's rows."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename is still atomic, only concurrent writers may race
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
