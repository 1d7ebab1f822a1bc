"""Text pools: the descriptions TEXTSPAN chooses from, each optionally tagged with a property.

A pool is a file: ``.txt`` (one text per line, no property), ``.csv`` or
``.parquet`` (a ``text`` column and an optional ``property`` column). The
shipped pools live under ``data/pools/`` and are asked for by bare name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from precompute.errors import InputError
from precompute.paths import POOLS_DIR
SUFFIXES = (".txt", ".csv", ".parquet")
_SHOWN = 5  # how many offending rows an error message lists


@dataclass(frozen=True)
class Pool:
    """A validated text pool."""

    name: str
    texts: tuple[str, ...]
    properties: tuple[str | None, ...]
    source: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.texts)

    def property_names(self) -> list[str]:
        """Distinct property tags, sorted (untagged rows left out)."""
        return sorted({p for p in self.properties if p})


def list_pools() -> list[str]:
    """Names of the shipped pools (files under data/pools/)."""
    if not POOLS_DIR.is_dir():
        return []
    return sorted(p.stem for p in POOLS_DIR.iterdir() if p.suffix in SUFFIXES)


def resolve(name_or_path: str | Path) -> Path:
    """A bare shipped-pool name or a path -> an existing file path."""
    text = str(name_or_path)
    if not any(sep in text for sep in ("/", "\\")) and Path(text).suffix not in SUFFIXES:
        for suffix in SUFFIXES:
            candidate = POOLS_DIR / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
        raise InputError(f"unknown text pool {text!r}; shipped pools: {', '.join(list_pools()) or 'none'} "
                         f"(or give a path to a {', '.join(SUFFIXES)} file)")
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"text pool file {path} does not exist; shipped pools: {', '.join(list_pools()) or 'none'}")
    if path.is_dir():
        raise InputError(f"text pool {path} is a folder; give a {', '.join(SUFFIXES)} file")
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"text pool {path} has unsupported file type {path.suffix or '(none)'!r}; "
                         f"valid: {', '.join(SUFFIXES)}")
    return path


def _read_rows(path: Path, raw: bytes) -> tuple[list, list]:
    """(texts, properties) as read, before validation; rows are numbered from 1 in messages."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = raw.decode("utf-8-sig").splitlines()  # a final newline does not make an empty line
        return lines, [None] * len(lines)
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = list(reader)
        records = [{(k or "").strip(): v for k, v in row.items()} for row in rows]
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(raw))
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise InputError(f"text pool {path} is not a readable Parquet file: {e}") from e
        columns = table.column_names
        records = table.to_pylist()
    if "text" not in columns:
        raise InputError(f"text pool {path} has no 'text' column; columns found: {', '.join(columns) or 'none'} "
                         "(expected 'text' and optionally 'property')")
    texts = [r.get("text") for r in records]
    props = [r.get("property") if "property" in columns else None for r in records]
    return texts, props


def _rows(indices: list[int], first_row: int) -> str:
    shown = ", ".join(str(i + first_row) for i in indices[:_SHOWN])
    return shown + (f" and {len(indices) - _SHOWN} more" if len(indices) > _SHOWN else "")


def normalise(text: str) -> str:
    """The key under which two texts count as duplicates: case and spacing ignored."""
    return re.sub(r"\s+", " ", text).strip().lower()


def load_pool(name_or_path: str | Path) -> Pool:
    """Load and validate a pool by shipped name (``toyworld``, ``general``) or path."""
    path = resolve(name_or_path)
    raw = path.read_bytes()
    try:
        texts, props = _read_rows(path, raw)
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"text pool {path} is not readable UTF-8 {path.suffix[1:]} text: {e}") from e
    # Messages number rows as the user sees them: file lines for .txt/.csv (CSV line 1 is the header).
    first_row = {".txt": 1, ".csv": 2, ".parquet": 1}[path.suffix.lower()]
    where = "row" if path.suffix.lower() == ".parquet" else "line"
    if not texts:
        raise InputError(f"text pool {path} is empty: it has no texts")
    blank = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if blank:
        raise InputError(f"text pool {path} has {len(blank)} empty {where}(s): {where} {_rows(blank, first_row)}")
    clean = [str(t).strip() for t in texts]
    seen: dict[str, int] = {}
    dups = []
    for i, t in enumerate(clean):
        key = normalise(t)
        if key in seen:
            dups.append(f"{where} {i + first_row} {t!r} repeats {where} {seen[key] + first_row}")
        else:
            seen[key] = i
    if dups:
        more = f" and {len(dups) - _SHOWN} more" if len(dups) > _SHOWN else ""
        raise InputError(f"text pool {path} has {len(dups)} duplicate text(s) (case and spacing ignored): "
                         f"{'; '.join(dups[:_SHOWN])}{more}")
    properties = tuple((str(p).strip() or None) if p is not None else None for p in props)
    return Pool(name=path.stem, texts=tuple(clean), properties=properties, source=path.resolve(),
                sha256=hashlib.sha256(raw).hexdigest())


def source_record(pool: Pool) -> str:
    """How a run records where its pool came from: ``shipped:<name>`` for a shipped pool (never the absolute path
    of the machine that made the run, which differs wherever the package is installed), else the file's path."""
    try:
        pool.source.resolve().relative_to(POOLS_DIR.resolve())
    except ValueError:
        return str(pool.source)
    return f"shipped:{pool.source.stem}"
