"""What checking a run costs: the cheap check (sizes, footers, coverage) and the full one (sha256 as well).

    python benchmarks/verify_cost.py [IMAGES] [FOLDER]

Writes a synthetic run (benchmarks/synthetic_run.py; default 50,000 images, 4 layers x 12 heads at D = 512,
98 chunks: 4,704 head parts) unless FOLDER already holds one, then times ``verify.check_run`` both ways,
each three times (the page cache warm after the first), and prints the seconds, the files and the bytes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.synthetic_run import write_synthetic_run  # noqa: E402
from precompute import verify  # noqa: E402


def main() -> None:
    images = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    folder = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/verify-cost") / f"run-{images}"
    if not (folder / "manifest.json").is_file():
        write_synthetic_run(folder, images=images)
    total = sum(p.stat().st_size for p in folder.rglob("*.parquet"))
    for full in (False, True):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            health = verify.check_run(folder, full=full)
            times.append(time.perf_counter() - t0)
        assert health.ok, health.summary()
        print(f"{'full ' if full else 'cheap'} check: {health.checked:,} files, {total / 1e9:.2f} GB: "
              f"{times[0]:.2f} s first, {min(times):.2f} s best of 3")


if __name__ == "__main__":
    main()
