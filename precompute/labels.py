"""Property labels for heads, each recording who made it (docs/design.md section 6).

Three labellers, in increasing precedence:

- ``pool`` (default, offline): the property tag most of the head's top TEXTSPAN
  picks share in the text pool;
- ``llm`` (``precompute/labels_llm.py``): a chat model over an OpenAI-compatible
  endpoint, few-shot prompted with hand-labelled heads; any failure falls back to
  the pool label, recorded in the provenance;
- ``manual``: a CSV of overrides (``layer,head,property[,author,note]``) that a
  team edits through the dashboard.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from precompute.errors import InputError

MIXED = "mixed"  # the property of a head whose texts share none
OVERRIDE_COLUMNS = ("layer", "head", "property", "author", "note")


def head_name(layer: int, head: int) -> str:
    """How a head is written everywhere (messages, file names, the dashboard): ``L{layer}.H{head}``."""
    return f"L{layer}.H{head}"


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
            raise InputError(f"{path}, line {line}: empty property for {head_name(*key)}")
        if key in out and out[key].property != prop:
            raise InputError(
                f"{path}: {head_name(*key)} is labelled {out[key].property!r} on line {seen_at[key]} "
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
