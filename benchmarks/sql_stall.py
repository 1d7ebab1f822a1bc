"""Does one user's wide SQL result stall everyone else? Two sessions in one server process, measured side by side.

Session B renders the head explorer (AppTest, as a browser session would) again and again; meanwhile session A,
in another thread of the same process (Streamlit serves sessions in threads, so they share the GIL), runs the SQL
page's work for ``SELECT * FROM head_vectors`` (10,000 rows of FLOAT[512]) in a loop:

- now: the query and its DataFrame, as the page does on every rerun (downloads are built only when clicked);
- before: the same plus the eager pandas CSV the page used to build on every rerun.

Each of B's renders starts together with one of A's reruns. Prints B's median render time alone and under each
load, the ratios (target: within 1.5x of alone), and how long A's rerun took.

    python benchmarks/sql_stall.py [--images 10000] [--renders 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic_run import write_synthetic_run  # noqa: E402
from dashboard.settings import ENV_DATA_DIR  # noqa: E402
from dashboard.user_sql import run_user_sql  # noqa: E402

WIDE = "SELECT * FROM head_vectors"


def _app(data_dir: Path):
    """Session B on the head explorer of the wide run (a head's texts, scores and top images)."""
    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    at = AppTest.from_file(str(app), default_timeout=300)
    for key, value in (("run", "wide"), ("layer", "11"), ("head", "0")):
        at.query_params[key] = value
    at.run()
    at.switch_page("app_pages/head.py").run()  # the first visit builds the catalog and loads the head
    return at


def render(at) -> float:
    t0 = time.perf_counter()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return time.perf_counter() - t0


def wide_rerun(data_dir: Path, eager_csv: bool) -> float:
    """One rerun of the SQL page showing the wide result: the query, its DataFrame, and (before) the CSV."""
    t0 = time.perf_counter()
    frame = run_user_sql(WIDE, data_dir, row_limit=10_000).to_pandas()
    if eager_csv:
        frame.to_csv(index=False).encode("utf-8")  # what the page did on every rerun before
    return time.perf_counter() - t0


def paired(at, data_dir: Path, renders: int, eager_csv: bool) -> tuple[list[float], list[float]]:
    """B's render time while A's one wide rerun starts at the same moment, ``renders`` times."""
    b_times, a_times = [], []
    for _ in range(renders):
        result: list[float] = []
        worker = threading.Thread(target=lambda: result.append(wide_rerun(data_dir, eager_csv)))
        worker.start()
        b_times.append(render(at))
        worker.join()
        a_times.append(result[0])
    return b_times, a_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--renders", type=int, default=6)
    ap.add_argument("--data-dir", type=Path, default=None, help="Reuse a folder holding the synthetic run.")
    args = ap.parse_args()
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        data_dir = Path(tmp.name)
    if not any(data_dir.glob("*/manifest.json")):
        write_synthetic_run(data_dir / "wide", images=args.images, layers=1, heads=12, width=512, progress=False)
        from precompute.cli import app
        from typer.testing import CliRunner

        run = str(data_dir / "wide")
        for stage in (["textspan", "--quiet", "--device", "cpu"], ["label"], ["score", "--quiet", "--device", "cpu"]):
            done = CliRunner().invoke(app, [stage[0], "--out", run, *stage[1:]])  # B's page shows texts, scores
            assert done.exit_code == 0, done.output
    os.environ[ENV_DATA_DIR] = str(data_dir)
    rows = run_user_sql(WIDE, data_dir, row_limit=10_000).num_rows
    print(f"# sql_stall: {rows:,} rows of FLOAT[512] per wide query; head explorer re-rendered {args.renders} times")

    at = _app(data_dir)
    alone = statistics.median([render(at) for _ in range(args.renders)])
    now_b, now_a = paired(at, data_dir, args.renders, eager_csv=False)
    before_b, before_a = paired(at, data_dir, max(2, args.renders // 3), eager_csv=True)
    now, before = statistics.median(now_b), statistics.median(before_b)
    print(f"head explorer alone                                 {alone * 1000:7.0f} ms")
    print(f"  while another session shows the wide result   {now * 1000:7.0f} ms = {now / alone:.2f}x   "
          f"(that rerun: {statistics.median(now_a):.2f} s; target <= 1.5x)")
    print(f"  ... and builds its CSV eagerly (before)       {before * 1000:7.0f} ms = {before / alone:.2f}x   "
          f"(that rerun: {statistics.median(before_a):.2f} s)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
