"""`run --models FILE`: a list of models (CSV or YAML) planned as one `run` each (docs/design.md section 9.1).

A row is an architecture, its weights and its probe folder; every other option is the command's. A row's run folder
is what a single `run --model ... --pretrained ... --images ...` would write: its ``out`` when it has one, else the
default name (``pipeline.default_out``), placed under the command's ``--out`` when that is given. A row without
``images`` takes the command's ``--images`` (a shipped zoo list names no probe folder), or a toy model's generated
probe set. Paths are read as on the command line (relative to the current folder). ``data/zoo/study.csv`` and
``data/zoo/vit_zoo.csv`` are such files.

No torch here: the file is read and checked before any model loads.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from precompute.errors import InputError
from precompute.paths import ASSETS_DIR

ZOO_DIR = ASSETS_DIR / "zoo"  # the shipped lists: study.csv (the paper's six models), vit_zoo.csv (scripts/build_zoo.py)
COLUMNS = ("model", "pretrained", "images", "out")  # 'model' is required; the rest may be empty or left out
ALIASES = {"architecture": "model", "weights": "pretrained", "tag": "pretrained", "probe": "images"}
IGNORED = ("note", "source", "decomposable")  # documentation columns of the shipped lists
SUFFIXES = (".csv", ".yaml", ".yml")


@dataclass(frozen=True)
class ModelRow:
    """One row of a models file: where it came from, and what it asks for."""

    line: int  # 1-based: the CSV line, or the YAML list item
    model: str
    pretrained: str | None = None
    images: Path | None = None
    out: Path | None = None


def shipped_lists() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.csv"))


def resolve(path: str | Path) -> Path:
    """A models file: a path, or the name of a shipped list (``study``, ``vit_zoo``)."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = ZOO_DIR / f"{path.name}.csv"
    if path.parent == Path(".") and not path.suffix and shipped.is_file():
        return shipped
    raise InputError(f"--models {path}: no such file (shipped lists: {', '.join(shipped_lists())})")


def read_models_file(path: str | Path) -> list[ModelRow]:
    """The rows of a CSV (header ``model,pretrained,images[,out]``) or YAML (a list of such mappings) file."""
    path = resolve(path)
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"--models {path}: expected a {', '.join(SUFFIXES)} file, got {path.suffix or 'no suffix'!r}")
    text = path.read_text(encoding="utf-8")
    raw = _yaml_rows(path, text) if path.suffix.lower() != ".csv" else _csv_rows(text)
    rows = [_row(path, line, record) for line, record in raw]
    if not rows:
        raise InputError(f"--models {path}: no models in it (expected columns {', '.join(COLUMNS)})")
    seen: dict[tuple, int] = {}
    for r in rows:
        key = (r.model, r.pretrained, r.images, r.out)
        if key in seen:
            raise InputError(f"--models {path}: line {r.line} repeats line {seen[key]} ({r.model} {r.pretrained or ''})")
        seen[key] = r.line
    return rows


def _csv_rows(text: str) -> list[tuple[int, dict]]:
    lines = [(n, s) for n, s in enumerate(text.splitlines(), start=1) if s.strip() and not s.lstrip().startswith("#")]
    if not lines:
        return []
    reader = csv.reader([s for _, s in lines])
    header = [h.strip().lower() for h in next(reader)]
    out = []
    for (n, _), values in zip(lines[1:], reader):
        if len(values) > len(header):
            raise InputError(f"line {n} has {len(values)} values for {len(header)} columns ({', '.join(header)})")
        out.append((n, dict(zip(header, (v.strip() for v in values)))))
    return out


def _yaml_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    try:
        import yaml
    except ImportError:
        raise InputError(f"--models {path}: reading YAML needs PyYAML (pip install pyyaml), or use a CSV") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"--models {path} is not valid YAML ({e})".replace("\n", " ")) from None
    if isinstance(data, dict) and "models" in data:
        data = data["models"]
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise InputError(f"--models {path}: expected a list of mappings with keys {', '.join(COLUMNS)}")
    return [(i, {str(k).strip().lower(): "" if v is None else str(v).strip() for k, v in x.items()})
            for i, x in enumerate(data, start=1)]


def _row(path: Path, line: int, record: dict) -> ModelRow:
    fields: dict[str, str] = {}
    for key, value in record.items():
        name = ALIASES.get(key, key)
        if name in IGNORED:
            continue
        if name not in COLUMNS:
            raise InputError(f"--models {path}: unknown column {key!r}; the columns are {', '.join(COLUMNS)} "
                             f"(or {', '.join(ALIASES)})")
        fields[name] = value
    if not fields.get("model"):
        raise InputError(f"--models {path}: line {line} names no model (the 'model' column is required)")
    return ModelRow(line, fields["model"], fields.get("pretrained") or None,
                    Path(fields["images"]).expanduser() if fields.get("images") else None,
                    Path(fields["out"]).expanduser() if fields.get("out") else None)
