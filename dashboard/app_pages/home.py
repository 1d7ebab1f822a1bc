"""The root URL: Rankings, at its own address (/rankings), so every page has a path a link can name."""

import streamlit as st

from dashboard import widgets

st.switch_page(widgets.PAGES / "rankings.py", query_params=dict(st.query_params))
