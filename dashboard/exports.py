"""Result tables as downloadable bytes, built only when a user clicks (no streamlit here).

The SQL page's results can be wide (10,000 rows of FLOAT[768] vectors), and pandas'
``to_csv`` formats such a table in Python for tens of seconds while holding the GIL, so
every other session of the server waits. CSV goes through DuckDB's writer instead
(C++, the GIL released, ~0.7 s for 10,000 x 512 floats), Parquet through pyarrow, both
in memory per call, so users never collide on a file. A CSV larger than
``MAX_CSV_BYTES`` (estimated before any work) is refused in favour of Parquet, which
keeps vectors typed and is 3x smaller.
"""

from __future__ import annotations

import io
import os
import tempfile

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MAX_CSV_BYTES = 64 * 2**20
_CSV_PER_BINARY_BYTE = 3.0  # a float32 (4 bytes) prints as ~11 characters plus a separator


def as_table(data: pa.Table | pd.DataFrame) -> pa.Table:
    return data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)


def estimated_csv_bytes(table: pa.Table) -> int:
    """A cheap upper-end guess of the CSV's size from the Arrow buffers (no formatting done)."""
    return int(table.nbytes * _CSV_PER_BINARY_BYTE)


def csv_allowed(table: pa.Table, limit: int = MAX_CSV_BYTES) -> bool:
    return estimated_csv_bytes(table) <= limit


def to_csv(data: pa.Table | pd.DataFrame) -> bytes:
    """CSV with a header row, lists as ``[a, b, ...]``, written by DuckDB."""
    table = as_table(data)
    with tempfile.TemporaryDirectory(prefix="clip-interpret-csv-") as tmp:
        path = os.path.join(tmp, "result.csv")
        con = duckdb.connect()  # in-memory, this call's own: sessions run in threads
        try:
            con.from_arrow(table).write_csv(path)
        finally:
            con.close()
        with open(path, "rb") as f:
            return f.read()


def to_parquet(data: pa.Table | pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(as_table(data), buf, compression="zstd")
    return buf.getvalue()
