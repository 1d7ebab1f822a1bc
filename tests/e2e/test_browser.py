"""Every dashboard page rendered by a real Streamlit server in headless Chromium (Playwright).

Fails on any ``stException`` element, checks each page's own text, and saves a
screenshot of each page to tests/e2e/screenshots/<page>.png. Needs Debian's
chromium at /usr/bin/chromium (browser downloads are blocked here): a missing
browser is a failure with the install command, never a silent skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.fixtures.dashboard_runs import build_data_dir

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DONE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
SERVER_START_S = 90
PAGE_S = 120

# (screenshot name, url path, query params, text the page must show)
PAGES = [
    ("rankings", "rankings", {"run": "tiny"}, "Heads by property"),
    ("head", "head", {"run": "tiny", "layer": "2", "head": "1"}, "TEXTSPAN texts"),
    ("head-decompose-only", "head", {"run": "tiny-decomp", "layer": "1", "head": "0"}, "clip-interpret textspan"),
    ("search", "search", {"run": "tiny", "q": "photo"}, "Closest in meaning"),
    ("property-neighbours", "property-neighbours", {"run": "tiny", "img": "1", "k": "6"}, "nearest images by"),
    ("topic-map", "topic-map", {"run": "tiny", "img": "1", "t": "a photo of a dog", "heads": "layers",
                                "layers": "1,2"}, "Colour scale symmetric"),
    ("contrastive-map", "contrastive-map", {"run": "tiny", "img": "1", "t1": "a dog", "t2": "a cat"},
     "one colour scale symmetric"),
    ("image-neighbours", "image-neighbours", {"run": "tiny", "img": "2", "layer": "2", "head": "3"},
     "nearest images by L2.H3"),
    ("text-neighbours", "text-neighbours", {"run": "tiny", "t": "a red circle", "layer": "1", "head": "0"},
     "writes most toward"),
    ("live-off", "topic-map", {"run": "synth/full"}, "Live analyses are off"),
    ("sql", "sql", {"sql": "SELECT run, architecture, image_count FROM runs"}, "4 rows"),
    ("head-grid", "head-grid", {"run": "tiny", "img": "1", "t": "a photo of a dog"}, "Which heads respond most"),
    ("image", "image", {"run": "tiny", "img": "1"}, "Its strongest heads"),
    ("ablations", "ablations", {"run": "tiny"}, "clip-interpret ablate --out"),
    ("compare", "compare", {"run": "tiny"}, "have not been compared yet"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run dashboard/app.py ... -- --data-dir DIR` on a free port of 127.0.0.1."""

    def __init__(self, data_dir: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(self.port),
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--", "--data-dir", str(data_dir)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"streamlit exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        pytest.fail(f"streamlit did not answer within {SERVER_START_S} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's package with "
                    "`apt-get install -y chromium` (browser downloads are blocked, so Playwright cannot fetch one)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    runs = build_data_dir(root)
    empty = root / "empty-runs"
    empty.mkdir()
    started = [Server(runs, root / "server.log"), Server(empty, root / "server-empty.log")]
    try:
        for s in started:
            s.wait_healthy()
        yield started
    finally:
        for s in started:
            s.stop()


def render(browser, url: str, name: str, expected: str) -> None:
    """Open ``url``, wait for the script run to finish, fail on exceptions, check ``expected``, screenshot."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=PAGE_S * 1000)
        page.wait_for_selector(DONE, timeout=PAGE_S * 1000)
        page.wait_for_timeout(1500)  # charts and images draw after the run; a rerun may start
        page.wait_for_selector(DONE, timeout=PAGE_S * 1000)
        errors = page.locator('[data-testid="stException"]')
        if errors.count():
            pytest.fail(f"{name}: exception on the page:\n{errors.first.inner_text()}")
        body = page.locator('[data-testid="stMain"]').inner_text()
        assert "Page not found" not in page.locator("body").inner_text(), f"{name}: {url} is not a page"
        # The main area scrolls inside its own container, so a full-page shot stops at the viewport: grow it.
        height = page.evaluate('document.querySelector(\'[data-testid="stMain"]\').scrollHeight')
        page.set_viewport_size({"width": 1400, "height": min(max(int(height), 1000), 8000)})
        page.wait_for_timeout(800)
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        assert expected in body, f"{name}: {expected!r} not on the page:\n{body[:2000]}"
    finally:
        page.close()


def test_clicking_a_head_in_the_rankings_grid_opens_it(browser, servers):
    full, _ = servers
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    try:
        page.goto(f"{full.url}/?run=tiny", timeout=PAGE_S * 1000)
        page.wait_for_selector(DONE, timeout=PAGE_S * 1000)
        grid = page.locator('[data-testid="stVegaLiteChart"]').nth(1)  # 0: the score bars; 1: the first head grid
        cell = grid.locator("g.mark-rect").last.locator("path").first  # the top layer: the cells that take clicks
        cell.wait_for(timeout=PAGE_S * 1000)
        cell.click()
        page.wait_for_url("**/head?**", timeout=PAGE_S * 1000)
        page.wait_for_selector(DONE, timeout=PAGE_S * 1000)
        assert "layer=" in page.url and "head=" in page.url, page.url
        assert "Head explorer" in page.locator('[data-testid="stMain"]').inner_text()
    finally:
        page.close()


def test_the_root_url_opens_rankings_at_its_own_address_keeping_the_link(browser, servers):
    full, _ = servers
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{full.url}/?run=tiny", timeout=PAGE_S * 1000)
        page.wait_for_url("**/rankings?run=tiny", timeout=PAGE_S * 1000)
        page.wait_for_selector(DONE, timeout=PAGE_S * 1000)
        assert "Heads by property" in page.locator('[data-testid="stMain"]').inner_text()
        assert "Page not found" not in page.locator("body").inner_text()
    finally:
        page.close()


def test_every_page_renders_without_exceptions(browser, servers):
    full, empty = servers
    render(browser, f"{empty.url}/", "welcome", "clip-interpret run")
    for name, path, params, expected in PAGES:
        render(browser, f"{full.url}/{path}?{urlencode(params)}", name, expected)

