"""The app's frame: its pages in one list, the router and the sidebar every page shows. app.py calls
it; so does every page, first thing, for the runs that do not start in app.py."""
import streamlit as st

# (script, title, icon); the first is the default page
PAGES = (
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/influential.py", "Influential samples", ":material/target:"),
    ("pages/decoding.py", "Controlled decoding", ":material/route:"),
    ("pages/adversarial.py", "Adversarial attack", ":material/swords:"),
    ("pages/curation.py", "Curation", ":material/fact_check:"),
    ("pages/retrain.py", "Retrain & evaluate", ":material/model_training:"),
    ("pages/explorer.py", "Reward explorer", ":material/query_stats:"),
    ("pages/data_browser.py", "Data", ":material/table:"),
)


def app_frame():
    """Register the pages and draw the sidebar's summary of what the tool is working on -> the page to run."""
    from pages._shared import md_code, pending_variants, settings, short, show_trust_warning

    st.set_page_config(page_title="REFORM workbench", layout="wide")
    page = st.navigation([st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)])
    s = settings()
    with st.sidebar:
        st.caption(f"Policy: {md_code(short(s.policy, 40))}  \nRM: {md_code(short(s.reward_model or 'none', 40))}  \n"
                   f"Data: {md_code(short(s.data, 40))}" + (f" rows {md_code(s.rows)}" if s.rows else ""))
        show_trust_warning()
        waiting = len(pending_variants())
        if waiting:
            st.caption(f"{waiting} variant(s) waiting for curation")
    return page


def through_router() -> None:
    """Call first in every page. Until some run of a server process has called ``st.navigation``,
    Streamlit treats a folder named ``pages/`` as a legacy multipage app and runs the file of the page
    asked for on its own, without app.py (a fresh server's first visit straight to ``/decoding``;
    every run under AppTest), with a sidebar listing every file in the folder, helpers included.
    Here such a run becomes the app's own: the frame registers the real pages (which ends the legacy
    mode for the process) and runs this page inside it, as app.py would; then this bare run stops."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        app_frame().run()
        st.stop()
