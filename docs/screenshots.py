"""Screenshots of every dashboard page over the shipped toy runs, for the README.

Run from the repository after the README's main command has written runs/toy-{s,m,l}, and
`clip-interpret ablate --out runs/toy-s` and `clip-interpret compare --run runs/toy-m --run runs/toy-l` have
ablated and compared them (the Ablations and Compare pages show those):

    .venv/bin/python docs/screenshots.py [--data-dir runs] [--out docs/screenshots]

Uses the browser test's server and page renderer (headless Debian Chromium), so a page that shows an
exception or lacks its expected text fails here too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from precompute import paths  # noqa: E402
from tests.e2e import test_browser as tb  # noqa: E402

# (file name, url path, query params, text the page must show); toy-l, image 0 is a circle on the probe set.
PAGES = [
    ("rankings", "rankings", {"run": "toy-l"}, "Heads by property"),
    ("head", "head", {"run": "toy-l", "layer": "6", "head": "1", "t": "a checkered pattern", "maps": "1"},
     "Test the head"),
    ("head-grid", "head-grid", {"run": "toy-l", "img": "0", "t": "a checkered pattern"},
     "Which heads respond most"),
    ("image", "image", {"run": "toy-l", "img": "0", "maps": "1"}, "Its strongest heads"),
    ("search", "search", {"run": "toy-l", "q": "stripes"}, "Closest in meaning"),
    ("property-neighbours", "property-neighbours", {"run": "toy-l", "img": "0", "k": "8"}, "nearest images by"),
    ("topic-map", "topic-map", {"run": "toy-l", "img": "0", "t": "a grid pattern", "heads": "layers",
                                "layers": "6,7"}, "Colour scale symmetric"),
    ("contrastive-map", "contrastive-map", {"run": "toy-l", "img": "0", "t1": "a circle", "t2": "a grid pattern"},
     "one colour scale symmetric"),
    ("image-neighbours", "image-neighbours", {"run": "toy-l", "img": "0", "layer": "6", "head": "1"},
     "nearest images by L6.H1"),
    ("text-neighbours", "text-neighbours", {"run": "toy-l", "t": "a dotted background", "layer": "6", "head": "1"},
     "writes most toward"),
    ("ablations", "ablations", {"run": "toy-s"}, "Per group"),  # after `clip-interpret ablate --out runs/toy-s`
    ("compare", "compare", {"run": "toy-m", "other": "toy-l"}, "Each head's best match"),  # after `compare`
    ("sql", "sql", {"sql": "SELECT run, association, entanglement, label_agreement FROM model_scores ORDER BY run"},
     "3 rows"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=paths.runs_dir())
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = ap.parse_args()
    tb.SCREENSHOTS = args.out
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    server = tb.Server(args.data_dir.resolve(), args.out / "server.log")
    try:
        server.wait_healthy()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.CHROMIUM_ARGS)
            for name, path, params, expected in PAGES:
                tb.render(browser, f"{server.url}/{path}?{urlencode(params)}", name, expected)
                print(f"wrote {args.out / (name + '.png')}")
            browser.close()
    finally:
        server.stop()
        (args.out / "server.log").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
