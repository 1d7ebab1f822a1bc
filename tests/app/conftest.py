"""AppTest helpers: one data folder of real and synthetic runs per session, and a page opener."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.settings import ENV_DATA_DIR
from tests.fixtures.dashboard_runs import build_data_dir

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
TIMEOUT = 180  # seconds per script run: the CPU is shared, and the first live page loads the model


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    return build_data_dir(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="session")
def con(runs_dir):
    """A dashboard connection over the session's data folder."""
    from dashboard import data

    return data.connect(runs_dir)


@pytest.fixture(scope="session")
def tiny_model(con):
    """The tiny run's model, rebuilt from its manifest exactly as the dashboard does."""
    import json

    from dashboard import data
    from precompute import registry

    spec, why = registry.spec_from_manifest(json.loads(data.run_info(con, "tiny")["manifest"])["model"], "cpu")
    assert spec is not None, why
    return registry.load_model(spec)


def open_page(page: str | None = None, **params) -> AppTest:
    """The app with ``params`` in the URL, as if a link to ``app_pages/<page>.py`` had been pasted.

    AppTest starts on the default page (a first run registers the pages), then switches;
    URL parameters stay, so the target page reads them as a fresh session would.
    """
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = str(value)
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}.py").run()
    return at


@pytest.fixture
def app(runs_dir, monkeypatch):
    """``open_page`` over the session's data folder (via $CLIP_INTERPRET_DATA_DIR)."""
    monkeypatch.setenv(ENV_DATA_DIR, str(runs_dir))
    return open_page


def texts(at: AppTest, kind: str) -> list[str]:
    """The text of every element of one kind (markdown, caption, info, error, ...)."""
    return [str(e.value) for e in getattr(at, kind)]


def all_text(at: AppTest) -> str:
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success")
    return "\n".join(t for k in kinds for t in texts(at, k))


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def widget(at: AppTest, kind: str, key: str):
    """The widget of ``kind`` (selectbox, radio, ...) with ``key``."""
    found = [w for w in getattr(at, kind) if w.key == key]
    assert found, f"no {kind} with key {key!r}; keys: {[w.key for w in getattr(at, kind)]}"
    return found[0]
