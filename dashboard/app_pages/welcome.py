"""Shown when the data folder is missing or holds no runs: how to make some."""

import os

import streamlit as st

from dashboard import hints, widgets

data_dir = widgets.data_dir()
st.title("clip-interpret")
st.markdown("What do the attention heads of a CLIP vision transformer do? This dashboard shows the "
            "precomputed answer (TEXTSPAN texts, property labels, interpretability scores) and runs the five "
            "analyses of the paper's demo on your own images.")
st.warning("No runs to show yet.")
st.markdown(hints.getting_started(data_dir, os.path.isdir(data_dir), st.session_state.get("_problems", [])))
