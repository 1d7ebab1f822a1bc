"""A run's label corrections: an append-only history in ``label_overrides.csv`` (docs/design.md section 6.1).

Every correction is one row ``layer,head,property,author,note,time``; a second correction of the same head
is a new row, so nobody's author or note is lost. The latest row of a head (the last in the file: rows are
only ever appended) is the head's correction. Files written before the history have no ``time`` column, or
only ``layer,head,property``; they read the same way.

Two readers, one rule:

- the label stage (``stage_label``) applies ``load_latest`` and writes the result into head_labels.parquet;
- the dashboard applies ``apply_to_labels`` to head_labels as it reads it, so a correction shows at once on
  every page. The scores computed from the old label (association, CCS, entanglement, label agreement) are
  marked ``stale`` until ``clip-interpret label`` and ``score`` rerun.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from precompute.errors import InputError
from precompute.labels import Override, _index, _locked, _read_rows, head_name
from precompute.store import write_bytes_atomic

HISTORY_COLUMNS = ("layer", "head", "property", "author", "note", "time")
SOURCE_LABELLER = "labeller"  # the label the label stage wrote (which may itself be a correction it applied)
SOURCE_OVERRIDE = "override"  # a correction applied at read time, not yet in head_labels.parquet


@dataclass(frozen=True)
class Correction:
    """One row of the history: who relabelled which head as what, why and when (``line`` orders the rows)."""

    layer: int
    head: int
    property: str
    author: str | None
    note: str | None
    time: str | None  # ISO 8601 UTC; None in files written before the history
    line: int

    def override(self) -> Override:
        return Override(self.property, self.author, self.note)


def read_history(path: str | Path) -> list[Correction]:
    """Every correction in ``path`` in file order ([] when there is no file); InputError naming a bad line."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line, row in _read_rows(path):
        layer, head = _index(row["layer"], "layer", path, line), _index(row["head"], "head", path, line)
        prop = (row["property"] or "").strip()
        if not prop:
            raise InputError(f"{path}, line {line}: empty property for {head_name(layer, head)}")
        out.append(Correction(layer, head, prop, _text(row.get("author")), _text(row.get("note")),
                              _text(row.get("time")), line))
    return out


def _text(value: str | None) -> str | None:
    return (value or "").strip() or None


def latest(history: list[Correction]) -> dict[tuple[int, int], Correction]:
    """(layer, head) -> the head's latest correction (the last row that names it)."""
    out: dict[tuple[int, int], Correction] = {}
    for c in sorted(history, key=lambda c: c.line):
        out[(c.layer, c.head)] = c
    return out


def load_latest(path: str | Path) -> dict[tuple[int, int], Override]:
    """The overrides the label stage applies from a run's history file: the latest row per head."""
    return {key: c.override() for key, c in latest(read_history(path)).items()}


def head_history(history: list[Correction], layer: int, head: int) -> list[Correction]:
    """One head's corrections, newest first."""
    return sorted((c for c in history if (c.layer, c.head) == (int(layer), int(head))), key=lambda c: -c.line)


def append_correction(path: str | Path, layer: int, head: int, property: str, author: str | None = None,
                      note: str | None = None, now: datetime | None = None) -> Correction:
    """Append one correction, atomically under a lock (the whole file is rewritten to a temp file and renamed).

    An older file gains the ``time`` (and ``author``, ``note``) columns, its rows kept as they were; columns
    this module does not know are kept too.
    """
    path = Path(path)
    prop = (property or "").strip()
    if not prop:
        raise InputError("a correction needs a non-empty property")
    if int(layer) < 0 or int(head) < 0:
        raise InputError(f"layer={layer}, head={head}: both must be >= 0")
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    new = {"layer": str(int(layer)), "head": str(int(head)), "property": prop, "author": (author or "").strip(),
           "note": (note or "").strip(), "time": stamp}
    with _locked(path):
        rows = [row for _, row in _read_rows(path)] if path.is_file() else []
        extra = [c for c in (rows[0].keys() if rows else []) if c not in HISTORY_COLUMNS]
        columns = list(HISTORY_COLUMNS) + extra
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: row.get(c) or "" for c in columns} for row in [*rows, new])
        write_bytes_atomic(path, buf.getvalue().encode("utf-8"))
        line = len(rows) + 2  # header is line 1
    return Correction(int(layer), int(head), prop, new["author"] or None, new["note"] or None, stamp, line)


def apply_to_labels(labels: pa.Table, history_file: str | Path) -> pa.Table:
    """head_labels (or any table of layer, head, property[, labeller, association, ccs5, provenance]) with the
    run's corrections applied: the one place where a correction reaches what the dashboard shows.

    Adds ``label_source`` ('labeller' or 'override'), ``stale`` (True where the shown property differs from the
    one the label stage wrote, so the association, CCS and the score stage's numbers are of the old label) and
    ``stored_property`` (that label). A correction the label stage already applied (labeller 'manual', same
    property) is the labeller's. Association and CCS of a changed label are null until the label stage reruns.
    """
    found = latest(read_history(history_file))
    rows = labels.to_pylist()
    for row in rows:
        row["stored_property"] = row["property"]
        row["label_source"], row["stale"] = SOURCE_LABELLER, False
        c = found.get((int(row["layer"]), int(row["head"])))
        if c is None or (row.get("labeller") == "manual" and row["property"] == c.property):
            continue
        changed = c.property != row["property"]
        if "provenance" in row:
            row["provenance"] = json.dumps({
                "labeller": "manual", "file": str(history_file), "applied": "when read (label stage not rerun yet)",
                "replaced": {"labeller": row.get("labeller"), "property": row["property"]},
                **{k: v for k, v in (("author", c.author), ("note", c.note), ("time", c.time)) if v}},
                sort_keys=True)
        row.update(property=c.property, label_source=SOURCE_OVERRIDE, stale=changed)
        if "labeller" in row:
            row["labeller"] = "manual"
        if changed:
            for score in ("association", "ccs5"):
                if score in row:
                    row[score] = None
    fields = list(labels.schema) + [pa.field("stored_property", pa.string()), pa.field("label_source", pa.string()),
                                    pa.field("stale", pa.bool_())]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields)) if rows else pa.schema(fields).empty_table()
