"""clip-interpret dashboard: page config and navigation over ``app_pages/``.

Serve it with ``clip-interpret dashboard --data-dir DIR`` or
``streamlit run dashboard/app.py -- --data-dir DIR``; without ``--data-dir`` the
runs come from $CLIP_INTERPRET_DATA_DIR, else ./runs in the current folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))

from precompute.runtime import passive_openmp  # noqa: E402

passive_openmp()  # before anything loads torch

import streamlit as st  # noqa: E402

from dashboard import state, widgets  # noqa: E402
from precompute.errors import InputError, InterpretError  # noqa: E402

PAGES = widgets.PAGES

st.set_page_config(page_title="clip-interpret", page_icon=":material/visibility:", layout="wide")

data_dir = widgets.data_dir()
try:
    catalog = state.catalog(data_dir)
except InputError:
    catalog = None

missing_run = None
if catalog is None or not catalog.runs:
    st.session_state["_problems"] = catalog.problems if catalog else []
    page = st.navigation([st.Page(PAGES / "welcome.py", title="Getting started", icon=":material/info:",
                                  url_path="welcome", default=True)])
else:
    missing_run = widgets.linked_run_missing(catalog)  # before the picker puts a run of its own in the URL
    widgets.run_picker(catalog)
    widgets.runs_health(catalog)
    st.sidebar.caption(f"{len(catalog.runs)} run{'s' if len(catalog.runs) != 1 else ''} in `{data_dir}`")
    page = st.navigation({
        "Explore": [
            # the root URL opens Rankings at /rankings: a default page has no path of its own
            st.Page(PAGES / "home.py", title="Home", url_path="home", default=True, visibility="hidden"),
            st.Page(PAGES / "rankings.py", title="Rankings", icon=":material/leaderboard:", url_path="rankings"),
            st.Page(PAGES / "head.py", title="Head explorer", icon=":material/grid_view:", url_path="head"),
            st.Page(PAGES / "search.py", title="Search heads", icon=":material/search:", url_path="search"),
            st.Page(PAGES / "ablations.py", title="Ablations", icon=":material/content_cut:", url_path="ablations"),
            st.Page(PAGES / "compare.py", title="Compare models", icon=":material/compare_arrows:",
                    url_path="compare"),
            st.Page(PAGES / "head_grid.py", title="All heads' maps", icon=":material/apps:", url_path="head-grid"),
            st.Page(PAGES / "image.py", title="Image", icon=":material/image:", url_path="image"),
        ],
        "Analyses": [
            st.Page(PAGES / "property_nn.py", title="1 · Property neighbours", icon=":material/category:",
                    url_path="property-neighbours"),
            st.Page(PAGES / "topic_map.py", title="2 · Topic map", icon=":material/blur_on:", url_path="topic-map"),
            st.Page(PAGES / "contrastive.py", title="3 · Contrastive map", icon=":material/contrast:",
                    url_path="contrastive-map"),
            st.Page(PAGES / "image_nn.py", title="4 · Image neighbours", icon=":material/image_search:",
                    url_path="image-neighbours"),
            st.Page(PAGES / "text_nn.py", title="5 · Text neighbours", icon=":material/text_fields:",
                    url_path="text-neighbours"),
        ],
        "Data": [
            st.Page(PAGES / "sql.py", title="SQL", icon=":material/database:", url_path="sql"),
        ],
    })
if missing_run is not None:
    widgets.refuse_run_link(catalog, missing_run)
try:
    page.run()
except InterpretError as e:  # a domain error no page caught (a damaged file, say): its message, never a traceback
    widgets.fail(e)
