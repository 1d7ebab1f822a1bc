"""Runs verify themselves: every table a stage writes is recorded in the manifest, and checked against it.

The manifest's ``files`` maps each table's path (relative to the run folder, '/' separated) to
``{"bytes", "rows", "sha256"}``, written by the stage that made it (``store.file_record``). Two checks:

- the cheap one (``full=False``; what the dashboard runs on every catalog build): each recorded file exists
  with its recorded size and a readable Parquet footer holding its recorded row count, and each head's parts
  together cover the run's images (a deleted part shrinks a head: ``coverage``). Only sizes and footers are
  read, never a data page.
- the full one (``full=True``; ``clip-interpret verify``, and each stage before it skips itself) also
  recomputes every sha256, so a flipped byte that leaves the footer readable is found too.

A run made before the record has only its footers and coverage checked (``Health.recorded`` is False).
No torch here: the dashboard imports this module.
"""

from __future__ import annotations

import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from precompute import schema, store, weights
from precompute.errors import RunDirError

KINDS = ("missing", "unreadable", "size", "rows", "checksum", "coverage")
MAGIC = b"PAR1"
CHECK_THREADS = 8  # files hashed at once by the full check


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the run folder, '/' separated
    kind: str  # one of KINDS
    detail: str  # one human sentence

    def line(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass(frozen=True)
class Health:
    run_dir: Path
    full: bool  # True: checksums recomputed as well; False: the cheap check (sizes, footers, coverage)
    problems: tuple[Problem, ...]
    checked: int = 0  # files looked at
    recorded: bool = True  # False: the run predates the manifest's file record (footers and coverage only)
    manifest: dict | None = None  # as read; None when it could not be

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.path for p in self.problems))

    @property
    def unfinished(self) -> list[str]:
        """Stages the manifest records as started but not done, in pipeline order: the run is still being made,
        or was interrupted (rerunning the same command resumes it). Not damage: what is there is intact."""
        stages = (self.manifest or {}).get("stages")
        if not isinstance(stages, dict):
            return []
        return [s for s in schema.STAGES if isinstance(stages.get(s), dict) and stages[s].get("done") is not True]

    def resume_command(self) -> str:
        """The command that finishes an unfinished run ('' when every started stage is done)."""
        return repair_command(self.run_dir, self.manifest or {}, self.unfinished) if self.unfinished else ""

    def summary(self) -> str:
        """One line: 'healthy (1,234 files checked)', 'incomplete: ...' or '3 damaged files: a, b, c'."""
        note = "" if self.recorded else "; the run predates checksums, so only footers and coverage were checked"
        if self.ok and self.unfinished:
            names = ", ".join(self.unfinished)
            return (f"incomplete: the {names} stage{'s' if len(self.unfinished) > 1 else ''} did not finish (still "
                    f"running, or interrupted); what is written is intact ({self._checked()}{note})")
        if self.ok:
            return f"healthy ({self._checked()}{note})"
        paths = self.damaged_paths
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3:,} more" if len(paths) > 3 else "")
        return f"{len(paths):,} damaged file{'s' if len(paths) != 1 else ''}: {shown}{note}"

    def _checked(self) -> str:
        return f"{self.checked:,} file{'s' if self.checked != 1 else ''} checked"

    def stages(self) -> list[str]:
        """The stages whose output is damaged, in pipeline order."""
        found = {stage_of(p.path) for p in self.problems}
        return [s for s in schema.STAGES if s in found]

    def repair_command(self) -> str:
        """The command that redoes what is damaged ('' when healthy): `run` for the decompose stage's files
        (it redoes only the damaged chunks), else the damaged stage's command and those after it."""
        return repair_command(self.run_dir, self.manifest or {}, self.stages()) if self.problems else ""


stage_of = schema.stage_of  # the stage that writes a file


sha256_file = weights.file_sha256  # the one hash of the project (checkpoints, run files)


def footer_rows(path: Path, size: int) -> tuple[int | None, str]:
    """(row count from the Parquet footer, '') or (None, why it cannot be read); reads the footer only."""
    if size < 12:
        return None, f"is {size:,} bytes, too short for a Parquet file"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, 2)
            tail = f.read(4)
        if head != MAGIC or tail != MAGIC:
            return None, "has no Parquet magic bytes at its start or end (truncated or overwritten)"
        return pq.read_metadata(path).num_rows, ""
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    except Exception as e:  # pyarrow's ArrowInvalid and friends: a damaged footer
        return None, f"has an unreadable Parquet footer ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def check_file(run_dir: Path, rel: str, record: dict | None, full: bool) -> tuple[Problem | None, int | None]:
    """One file against its record (or, with none, its footer alone): (the problem or None, its footer rows)."""
    path = Path(run_dir) / rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Problem(rel, "missing", "is missing"), None
    except OSError as e:
        return Problem(rel, "unreadable", f"cannot be read ({e.strerror or e})"), None
    if record is not None and size != record.get("bytes"):
        return Problem(rel, "size", f"is {size:,} bytes, the manifest records {record.get('bytes', 0):,}"), None
    rows, why = footer_rows(path, size)
    if rows is None:
        return Problem(rel, "unreadable", why), None
    if record is not None and rows != record.get("rows"):
        return Problem(rel, "rows", f"holds {rows:,} rows, the manifest records {record.get('rows', 0):,}"), rows
    if full and record is not None and record.get("sha256"):
        try:
            digest = sha256_file(path)
        except OSError as e:
            return Problem(rel, "unreadable", f"cannot be read ({e.strerror or e})"), None
        if digest != record["sha256"]:
            return Problem(rel, "checksum", "has the recorded size but not the recorded sha256 (corrupted bytes)"), rows
    return None, rows


def expected_tables(manifest: dict, run_dir: Path) -> list[str]:
    """Tables (not head parts) that the stages marked done must have written, for a run without the record."""
    stages = manifest.get("stages") or {}
    out = []
    for stage, names in schema.STAGE_FILES.items():
        if (stages.get(stage) or {}).get("done"):
            out += [n for n in names if n != schema.HEAD_VECTORS_DIR
                    and (n not in schema.OPTIONAL_FILES or (Path(run_dir) / n).exists())]
    return out


def _heads(manifest: dict) -> list[tuple[int, int]]:
    heads = manifest.get("heads") or 0
    return [(int(layer), h) for layer in manifest.get("layers") or [] for h in range(int(heads))]


def head_rel(layer: int, head: int) -> str:
    return f"{schema.HEAD_VECTORS_DIR}/layer={layer}/head={head}"


def check_manifest(run_dir: Path, manifest: dict, full: bool = False, stages: tuple[str, ...] | None = None
                   ) -> tuple[list[Problem], int, bool]:
    """(problems, files checked, recorded) of the files of ``stages`` (default: every stage marked done).

    A stage finished with the record (its manifest entry has ``recorded``) is checked against the manifest's
    ``files``; an older one by its expected tables' footers (and, for decompose, the head parts found).
    """
    info = {s: i for s, i in (manifest.get("stages") or {}).items() if isinstance(i, dict) and i.get("done")}
    wanted = [s for s in (stages if stages is not None else schema.STAGES) if s in info]
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    problems: list[Problem] = []
    rows_of: dict[str, int | None] = {}
    recorded = all(info[s].get("recorded") for s in wanted)
    targets: list[tuple[str, dict | None]] = []
    for stage in wanted:
        if info[stage].get("recorded"):
            targets += [(rel, rec) for rel, rec in files.items() if stage_of(rel) == stage]
            continue
        targets += [(rel, None) for rel in expected_tables(manifest, run_dir) if stage_of(rel) == stage]
        if stage == "decompose":
            base = Path(run_dir)
            targets += [(p.relative_to(base).as_posix(), None)
                        for p in sorted((base / schema.HEAD_VECTORS_DIR).glob("layer=*/head=*/part-*.parquet"))]
    def one(target: tuple[str, dict | None]) -> tuple[Problem | None, int | None]:
        return check_file(run_dir, target[0], target[1], full)

    if full:  # sha256 reads every byte; hashlib releases the GIL, so files are hashed side by side
        with ThreadPoolExecutor(min(CHECK_THREADS, os.cpu_count() or 1)) as pool:
            results = list(pool.map(one, targets))
    else:
        results = [one(t) for t in targets]
    for (rel, _), (problem, rows) in zip(targets, results):
        rows_of[rel] = rows
        if problem is not None:
            problems.append(problem)
    if "decompose" in wanted:
        problems = _coverage(manifest, rows_of, problems)
    return problems, len(targets), recorded


def stage_problems(run_dir: Path, manifest: dict, stage: str, full: bool = True) -> list[Problem]:
    """What is wrong with the files ``stage`` wrote (checksums too, by default): a stage checks this before
    it skips itself as current."""
    return check_manifest(run_dir, manifest, full, (stage,))[0]


def require(run_dir: Path, stage: str, command: str) -> dict:
    """``store.require_stage``, then the cheap check of ``stage`` and the stages before it: a RunDirError naming
    each damaged file the caller would read, and the command that repairs them, instead of a reader's error."""
    manifest = store.require_stage(run_dir, stage, command)
    needed = schema.STAGES[: schema.STAGES.index(stage) + 1]
    problems = check_manifest(run_dir, manifest, False, needed)[0]
    if problems:
        health = Health(Path(run_dir), False, tuple(problems), manifest=manifest)
        raise RunDirError(f"{run_dir}: {health.summary()} ({'; '.join(p.line() for p in problems[:3])}); "
                          f"repair it with `{health.repair_command()}`")
    return manifest


def intact(run_dir: Path, manifest: dict, stage: str) -> bool:
    """True when ``stage``'s files pass the full check; otherwise the stage and the later ones are reopened
    (``store.reopen_stage``, the damaged files deleted) and False: the caller recomputes the stage."""
    problems = stage_problems(run_dir, manifest, stage)
    if problems:
        store.reopen_stage(run_dir, manifest, stage, [p.path for p in problems])
    return not problems


def _coverage(manifest: dict, rows_of: dict[str, int | None], problems: list[Problem]) -> list[Problem]:
    """Each head's parts must hold images.count rows; a missing part is reported as the coverage it costs."""
    count = (manifest.get("images") or {}).get("count")
    if not isinstance(count, int):
        return problems
    per_head: dict[str, list[str]] = {}
    for rel in rows_of:
        if rel.startswith(schema.HEAD_VECTORS_DIR + "/"):
            per_head.setdefault(rel.rsplit("/", 1)[0], []).append(rel)
    out = []
    by_path = {p.path: p for p in problems}
    for layer, head in _heads(manifest):
        folder = head_rel(layer, head)
        parts = per_head.get(folder, [])
        have = sum(rows_of[p] or 0 for p in parts if p not in by_path or by_path[p].kind in ("checksum",))
        lost = [p for p in parts if p in by_path and by_path[p].kind == "missing"]
        for p in lost:  # the part is gone: say what the head lost
            rec = (manifest.get("files") or {}).get(p) or {}
            by_path[p] = Problem(p, "coverage", f"is missing: layer {layer} head {head} covers {have:,} of "
                                 f"{count:,} images (the part held {rec.get('rows', 0):,})")
        if not lost and not any(p in by_path for p in parts) and have != count:
            detail = f"layer {layer} head {head} covers {have:,} of {count:,} images"
            out.append(Problem(folder, "coverage", detail + (" (a part file is missing)" if have < count
                                                            else " (more rows than images)")))
    return [by_path.get(p.path, p) for p in problems] + out


def check_run(run_dir: Path, full: bool = False) -> Health:
    """The run's health: the cheap check (sizes, footers, coverage) or, with ``full``, checksums as well."""
    run_dir = Path(run_dir)
    try:
        manifest = store.read_manifest(run_dir)
    except RunDirError as e:
        return Health(run_dir, full, (Problem(schema.MANIFEST, "unreadable", str(e)),), 1)
    if manifest is None:
        return Health(run_dir, full, (Problem(schema.MANIFEST, "missing", "is missing: not a run folder"),), 1)
    problems, checked, recorded = check_manifest(run_dir, manifest, full)
    return Health(run_dir, full, tuple(problems), checked + 1, recorded, manifest)


# ------------------------------------------------------------------ the repair command


def run_command(run_dir: Path, manifest: dict) -> str:
    """The `clip-interpret run` command that made this run, as far as the manifest records it."""
    model = manifest.get("model") or {}
    images = manifest.get("images") or {}
    stages = manifest.get("stages") or {}
    args = ["clip-interpret", "run", "--model", str(model.get("architecture") or "MODEL"),
            *weights.cli_args(model.get("weights")), "--images", str(images.get("root") or "IMAGES")]
    if manifest.get("layers"):
        args += ["--layers", ",".join(str(x) for x in manifest["layers"])]
    if images.get("limit") is not None:
        args += ["--limit", str(images["limit"])]
    chunk = (stages.get("decompose") or {}).get("chunk_size")
    if chunk and chunk != 512:
        args += ["--chunk-size", str(chunk)]
    pool = (stages.get("textspan") or {}).get("pool")
    if pool:
        args += ["--pool", str(pool)]
    if "ablate" in stages:
        args += ["--ablate"]
    return shlex.join(args + ["--out", str(run_dir)])


def stage_command(run_dir: Path, manifest: dict, stage: str) -> str:
    info = (manifest.get("stages") or {}).get(stage) or {}
    args = ["clip-interpret", stage, "--out", str(run_dir)]
    if stage == "textspan" and info.get("pool"):
        args += ["--pool", str(info["pool"])]
    if stage == "label" and info.get("labeller") and info["labeller"] != "pool":
        args += ["--labeller", str(info["labeller"])]
    return shlex.join(args)


def repair_command(run_dir: Path, manifest: dict, stages: list[str]) -> str:
    if not stages or "decompose" in stages:
        return run_command(run_dir, manifest)
    first = schema.STAGES.index(stages[0])
    had = manifest.get("stages") or {}
    redo = [s for s in schema.STAGES[first:] if s == stages[0] or s not in schema.OPT_IN_STAGES or s in had]
    return " && ".join(stage_command(run_dir, manifest, s) for s in redo)
