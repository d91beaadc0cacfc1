"""The app starts and draws on the embedded defaults (page-by-page tests arrive with the app itself)."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


def test_home_page_renders_with_the_demo_set():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "REFORM workbench"
    assert [m.value for m in at.metric][0] == "165"


def test_data_page_shows_pairs_and_reports_a_bad_path():
    at = AppTest.from_file(str(ROOT / "pages" / "data_browser.py"), default_timeout=60).run()
    assert not at.exception and len(at.dataframe) == 1
    at.text_input(key="data_path").set_value("/nonexistent/pairs.jsonl").run()
    assert not at.exception and "no such file" in at.error[0].value
