"""Text pools: the shipped pools validate and cover the toy world; bad pools fail with clear messages."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from precompute.errors import InputError
from precompute.pools import POOLS_DIR, Pool, list_pools, load_pool, normalise
from precompute.toyworld.captions import ATTRIBUTE_NAMES, ATTRIBUTES, mentioned

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BUILD_POOLS = Path(__file__).resolve().parents[2] / "scripts" / "build_pools.py"


def _pool_builder():
    """scripts/build_pools.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_pools", BUILD_POOLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_pools_are_listed_and_load_by_name():
    assert {"toyworld", "general"} <= set(list_pools())
    pool = load_pool("toyworld")
    assert isinstance(pool, Pool)
    assert pool.name == "toyworld" and pool.source == (POOLS_DIR / "toyworld.csv").resolve()
    assert len(pool.sha256) == 64 and len(pool.texts) == len(pool.properties)


def test_toyworld_pool_covers_every_value_of_every_attribute():
    pool = load_pool("toyworld")
    assert 200 <= len(pool) <= 600
    assert set(pool.property_names()) == set(ATTRIBUTE_NAMES)
    for attribute, values in ATTRIBUTES.items():
        texts = [t for t, p in zip(pool.texts, pool.properties) if p == attribute]
        for value in values:
            hits = [t for t in texts if re.search(rf"\b{re.escape(value)}\b", t)]
            assert len(hits) >= 3, (attribute, value)


def test_toyworld_descriptions_name_one_attribute_only():
    pool = load_pool("toyworld")
    for text, prop in zip(pool.texts, pool.properties):
        found = mentioned(text)
        assert set(found) <= {prop}, text
        assert len(found.get(prop, [])) <= 1, text


def test_general_pool_size_and_properties():
    pool = load_pool("general")
    counts = Counter(pool.properties)
    assert len(pool) >= 3000
    assert None not in counts
    assert len(counts) >= 20
    assert min(counts.values()) >= 50, counts.most_common()[-3:]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", p) for p in counts)
    assert len({normalise(t) for t in pool.texts}) == len(pool)


def test_shipped_csvs_are_what_the_builder_writes(tmp_path):
    written = _pool_builder().build(tmp_path)
    for path in written:
        assert path.read_bytes() == (POOLS_DIR / path.name).read_bytes(), path.name


def test_build_pools_script_runs_and_writes_where_asked(tmp_path):
    done = subprocess.run([sys.executable, str(BUILD_POOLS), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["general.csv", "toyworld.csv"]
    assert (tmp_path / "toyworld.csv").read_bytes() == (POOLS_DIR / "toyworld.csv").read_bytes()


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_pool_has_no_properties(tmp_path):
    pool = load_pool(_write(tmp_path / "mine.txt", "a red car\nphoto of a dog\n"))
    assert pool.texts == ("a red car", "photo of a dog") and pool.properties == (None, None)
    assert pool.name == "mine"


def test_parquet_pool(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "property": ["x", None]}), path)
    pool = load_pool(path)
    assert pool.texts == ("a", "b") and pool.properties == ("x", None)


def test_blank_rows_are_reported_with_their_lines(tmp_path):
    path = _write(tmp_path / "blank.txt", "a red car\n\nphoto of a dog\n   \n")
    with pytest.raises(InputError, match=r"2 empty line\(s\): line 2, 4") as err:
        load_pool(path)
    assert str(path) in str(err.value)


def test_duplicates_are_reported(tmp_path):
    path = _write(tmp_path / "dup.csv", "text,property\na red car,colors\nA  Red car,colors\nsnow,weather\n")
    with pytest.raises(InputError, match=r"line 3 'A  Red car' repeats line 2"):
        load_pool(path)


def test_missing_text_column(tmp_path):
    path = _write(tmp_path / "cols.csv", "description,property\na red car,colors\n")
    with pytest.raises(InputError, match=r"no 'text' column; columns found: description, property"):
        load_pool(path)


def test_empty_pool(tmp_path):
    with pytest.raises(InputError, match="is empty"):
        load_pool(_write(tmp_path / "empty.csv", "text,property\n"))
    with pytest.raises(InputError, match="is empty"):
        load_pool(_write(tmp_path / "empty.txt", ""))


def test_unknown_file_type_and_missing_files(tmp_path):
    with pytest.raises(InputError, match=r"unsupported file type '\.json'; valid: \.txt, \.csv, \.parquet"):
        load_pool(_write(tmp_path / "pool.json", "[]"))
    with pytest.raises(InputError, match=r"does not exist; shipped pools: .*general.*toyworld"):
        load_pool(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=r"unknown text pool 'nope'; shipped pools: .*general"):
        load_pool("nope")


def test_a_shipped_pool_is_recorded_by_name_and_a_file_by_its_path(tmp_path):
    from precompute.pools import load_pool, source_record

    assert source_record(load_pool("toyworld")) == "shipped:toyworld"
    own = tmp_path / "mine.txt"
    own.write_text("a red thing\na blue thing\n")
    assert source_record(load_pool(str(own))) == str(own.resolve())
