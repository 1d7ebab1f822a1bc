"""The upload limit: Streamlit reads dashboard/.streamlit/config.toml for `streamlit run dashboard/app.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit import config

from dashboard import imagesource, upload

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


@pytest.fixture
def as_streamlit_run(monkeypatch):
    """Streamlit's config as `streamlit run dashboard/app.py` parses it (from any working directory)."""
    monkeypatch.chdir("/")
    monkeypatch.setattr(config, "_main_script_path", str(APP))  # what `streamlit run` sets before parsing
    config.get_config_options(force_reparse=True)
    yield config
    monkeypatch.undo()
    config.get_config_options(force_reparse=True)


def test_the_script_level_config_sets_the_upload_limit_the_upload_check_uses(as_streamlit_run):
    limit_mb = as_streamlit_run.get_option("server.maxUploadSize")
    assert limit_mb == 20
    assert limit_mb * 2**20 == upload.MAX_UPLOAD_BYTES
    assert imagesource.UPLOAD_MB == limit_mb  # the widget's own limit says the same
    assert as_streamlit_run.get_option("browser.gatherUsageStats") is False
