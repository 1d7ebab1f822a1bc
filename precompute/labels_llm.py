"""The ``llm`` labeller: a chat model over an OpenAI-compatible endpoint names each head's property.

Few-shot prompted with hand-labelled heads (Madasu et al. 2409.06579; docs/design.md section 6), temperature 0,
retries on timeouts, 5xx, 429 and dropped connections. A malformed or refused reply, or an endpoint that stays
down, falls back to the pool label with a ``LabelFallbackWarning``, recorded in the provenance. The API key never
appears in a repr, the provenance or a warning.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from precompute.errors import InputError
from precompute.labels import MIXED, HeadLabel, LabelFallbackWarning, head_name
from precompute.paths import LLM_EXAMPLES as DEFAULT_EXAMPLES

ENV_BASE_URL = "CLIP_INTERPRET_LLM_BASE_URL"
ENV_MODEL = "CLIP_INTERPRET_LLM_MODEL"
ENV_API_KEY = "CLIP_INTERPRET_LLM_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


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
            f"LLM labeller, {head_name(layer, head)}: {reason}; keeping the {fallback.labeller} label {fallback.property!r}",
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
