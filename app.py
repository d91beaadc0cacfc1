"""REFORM workbench: entry point. Routes to the pages and shows, on every page, what the tool is working on.

    streamlit run app.py        (binds to localhost: see .streamlit/config.toml)

Models and data come from the Home page's switches, starting from the environment (see pages/_shared.py).
"""
from __future__ import annotations

import streamlit as st

from pages._shared import pending_variants, settings, short

st.set_page_config(page_title="REFORM workbench", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/influential.py", title="Influential samples", icon=":material/target:"),
    st.Page("pages/decoding.py", title="Controlled decoding", icon=":material/route:"),
    st.Page("pages/curation.py", title="Curation", icon=":material/fact_check:"),
    st.Page("pages/retrain.py", title="Retrain & evaluate", icon=":material/model_training:"),
    st.Page("pages/explorer.py", title="Reward explorer", icon=":material/query_stats:"),
    st.Page("pages/data_browser.py", title="Data", icon=":material/table:"),
]
page = st.navigation(pages)

s = settings()
with st.sidebar:
    st.caption(f"Policy: `{short(s.policy, 40)}`  \nRM: `{short(s.reward_model or 'none', 40)}`  \n"
               f"Data: `{short(s.data, 40)}`" + (f" rows `{s.rows}`" if s.rows else ""))
    waiting = len(pending_variants())
    if waiting:
        st.caption(f"{waiting} variant(s) waiting for curation")
page.run()
