"""The app's frame: its pages in one list, the router, the sidebar every page shows, and the recovery
page shown instead of any page while the project database cannot be read. app.py calls it; so does
every page, first thing, for the runs that do not start in app.py."""
from pathlib import Path

import streamlit as st

# (script, title, icon); the first is the default page
PAGES = (
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/influential.py", "Influential samples", ":material/target:"),
    ("pages/decoding.py", "Controlled decoding", ":material/route:"),
    ("pages/adversarial.py", "Adversarial attack", ":material/swords:"),
    ("pages/compare.py", "REFORM vs Adv-RM", ":material/compare_arrows:"),
    ("pages/curation.py", "Curation", ":material/fact_check:"),
    ("pages/retrain.py", "Retrain & evaluate", ":material/model_training:"),
    ("pages/crossval.py", "Recipe check", ":material/rule:"),
    ("pages/explorer.py", "Reward explorer", ":material/query_stats:"),
    ("pages/data_browser.py", "Data", ":material/table:"),
)
FLASH_KEY = "app_flash"
# The browser tab's icon: Streamlit's own, served by this server. Without one, the frontend makes each page's
# :material/…: icon the favicon, fetched from fonts.gstatic.com on every page switch (an offline tool fetches nothing).
FAVICON = Path(st.__file__).parent / "static" / "favicon.png"


class _Guarded:
    """A page whose store errors end as a message, not a traceback: a damaged database turns every
    page into the recovery page; any other StoreError (busy, disk full) is shown where it happened."""

    def __init__(self, page):
        self.page = page

    def run(self) -> None:
        from pages._draw import show_error
        from pages._project import mark_damaged
        from reform_engine.store import StoreCorrupt, StoreError

        try:
            self.page.run()
        except StoreCorrupt as exc:
            mark_damaged(exc)
            st.rerun()  # drawn again from the top: the recovery page alone, not below half a page
        except StoreError as exc:
            show_error(exc, "Project database")


class _Recovery:
    def __init__(self, error: Exception):
        self.error = error

    def run(self) -> None:
        recovery_page(self.error)


def app_frame():
    """Register the pages and draw the sidebar's summary of what the tool is working on -> the page to
    run (the recovery page while the project database cannot be read)."""
    from pages._draw import md_code, short, show_flash, show_trust_warning
    from pages._project import damage, queue_caption, reviewer_input
    from pages._settings import settings

    st.set_page_config(page_title="REFORM workbench", page_icon=FAVICON, layout="wide")
    page = st.navigation([st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)])
    s = settings()
    with st.sidebar:
        st.caption(f"Policy: {md_code(short(s.policy, 40))}  \nRM: {md_code(short(s.reward_model or 'none', 40))}  \n"
                   f"Data: {md_code(short(s.data, 40))}" + (f" rows {md_code(s.rows)}" if s.rows else ""))
        show_trust_warning()
        reviewer_input()
        line = queue_caption() if damage() is None else "The project database cannot be read."
        if line:
            st.caption(line)
    show_flash(FLASH_KEY)
    error = damage()
    return _Guarded(page) if error is None else _Recovery(error)


def _restore() -> None:
    from pages._draw import flash
    from pages._project import forget_damage, project_db_path
    from reform_engine.backups import BackupConfig
    from reform_engine.store import StoreError, restore_database

    try:
        done = restore_database(project_db_path(), config=BackupConfig.from_env())
    except (StoreError, ValueError) as exc:
        st.session_state["app_recovery_error"] = exc
        return
    forget_damage()
    skipped = f" Newer snapshots that did not read back: {'; '.join(done.skipped)}." if done.skipped else ""
    flash(FLASH_KEY, f"Restored the project database from `{done.restored_from.name}`. The damaged file is kept "
                     f"at `{done.kept_aside}`.{skipped}")


def _start_fresh() -> None:
    from pages._draw import flash
    from pages._project import forget_damage, project_db_path
    from reform_engine.store import StoreError, set_aside

    try:
        aside = set_aside(project_db_path())
    except StoreError as exc:
        st.session_state["app_recovery_error"] = exc
        return
    forget_damage()
    flash(FLASH_KEY, f"Started a fresh, empty project database. The damaged file is kept at `{aside}`.")


def recovery_page(error: Exception) -> None:
    """What happened, the file, its snapshots and the ways out; nothing here deletes anything."""
    import pandas as pd

    from pages._draw import show_error
    from pages._project import forget_damage, project_db_path
    from reform_engine.backups import BackupConfig, describe, list_backups

    path = project_db_path()
    st.title("The project database cannot be read")
    st.error(f"{getattr(error, 'detail', None) or error}")
    st.markdown(f"DuckDB found damaged data in `{path}`: the file was cut short or partly overwritten (a full disk, a "
                "crash while copying it, another program writing to it). Every page stays closed until it is repaired, "
                "so that nothing is written on top of it. **Nothing has been deleted**: whatever you choose below, the "
                "damaged file is kept beside it under a new name.")
    show_error(st.session_state.pop("app_recovery_error", None), "Not done")
    try:
        config = BackupConfig.from_env()
        snapshots = list_backups(path, config)
    except ValueError as exc:
        show_error(exc, "Backup settings")
        config, snapshots = None, []
    if snapshots:
        st.subheader(f"Snapshots ({len(snapshots)}, newest first)")
        st.dataframe(pd.DataFrame([describe(p, path) for p in snapshots]), hide_index=True, key="app_recovery_snapshots")
        st.button("Restore the newest good snapshot", type="primary", key="app_recovery_restore", on_click=_restore,
                  help="Reads each snapshot back in full, newest first, and puts the first good one in place; "
                       "the damaged file is renamed aside first.")
    else:
        st.info(f"There are no snapshots of this database in `{config.folder(path) if config else 'the backup folder'}`.")
    st.button("Start a fresh, empty database (keep the damaged file aside)", key="app_recovery_fresh", on_click=_start_fresh)
    st.button("Check again", key="app_recovery_check", on_click=forget_damage,
              help="After repairing or restoring the file by other means.")
    st.markdown("From a shell (the app may keep running):")
    st.code(f"python -m reform_engine restore --db {path} --list\n"
            f"python -m reform_engine restore --db {path}                 # the newest snapshot that reads back\n"
            f"python -m reform_engine restore --db {path} --from SNAPSHOT", language="bash")


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


def store_page(title: str, flash_key: str = ""):
    """The top of a page that works on the project database: routed (through_router), titled, and the
    message its last action left under ``flash_key`` ('' = the page shows it itself, further down)
    -> (the settings in use, the project store)."""
    from pages._draw import show_flash
    from pages._project import project_store
    from pages._settings import settings

    through_router()
    st.title(title)
    s, store = settings(), project_store()
    if flash_key:
        show_flash(flash_key)
    return s, store
