"""End to end in a real browser: ``streamlit run app.py`` on localhost with tiny models, driven by
Playwright in headless Debian chromium. Opens every page, runs a short controlled decoding until it
finds a true inversion, sends it to curation, approves it there, checks the decision row in the
project's DuckDB file, and saves a screenshot of each page under test-output/e2e/ (REFORM_TEST_OUTPUT
overrides).

Chromium: the system's (REFORM_CHROMIUM, or chromium on PATH); if missing and we are root with apt,
the test installs Debian's package itself, as on a fresh CI machine. It skips, saying how to install,
only where that is impossible."""
import os
from pathlib import Path

import pytest

from browser_support import (INSTALL_HINT, ROOT, find_chromium, install_chromium, launch_chromium, streamlit_server)
from reform_engine.reward_model import RewardModelSpec, build_reward_model
from reform_engine.store import Store
from reform_engine.tiny import save_tiny_model

TIMEOUT_MS = 120_000  # generous: the machine may be shared with training jobs


@pytest.fixture(scope="module")
def out_dir() -> Path:
    path = Path(os.environ.get("REFORM_TEST_OUTPUT") or ROOT / "test-output") / "e2e"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def chromium(out_dir) -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: .venv/bin/pip install playwright==1.65.2")
    path = find_chromium()
    if path is None:
        path, why = install_chromium(log=out_dir / "apt.log")
        if path is None:
            pytest.skip(f"no chromium for the browser test ({why}): {INSTALL_HINT}")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, out_dir):
    root = tmp_path_factory.mktemp("e2e")
    policy = str(save_tiny_model(root / "policy", seed=1, ascii_only=True))
    rm = build_reward_model(RewardModelSpec(base_model=policy, finetune="full", max_length=256), device="cpu", seed=3)
    env = {"REFORM_POLICY": policy, "REFORM_REWARD_MODEL": str(rm.save(root / "rm")), "REFORM_PROJECT_DIR": str(root / "project"),
           "REFORM_DEVICE": "cpu", "REFORM_DATA": "", "REFORM_ROWS": "0:40", "REFORM_COMPARE_RM": "",
           "REFORM_REVIEWER": "e2e"}
    with streamlit_server(env, out_dir / "streamlit.log") as url:
        yield url, env["REFORM_PROJECT_DIR"]


def test_every_page_in_a_real_browser_and_a_short_decoding(chromium, server, out_dir):
    from playwright.sync_api import expect, sync_playwright

    url, project = server

    with sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        idle = page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')

        def settle():  # the rerun has finished drawing: no stale elements in the screenshot
            expect(idle).to_have_count(1)

        def screenshot(name: str) -> None:
            """The page once it has settled, as out_dir/<name>.png."""
            settle()
            page.screenshot(path=out_dir / f"{name}.png", full_page=True)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            # The server's first visit goes straight to a page's URL: it must still run through app.py's
            # router (Streamlit would otherwise treat pages/ as a legacy multipage folder).
            page.goto(f"{url}/data_browser")
            expect(page.get_by_role("heading", name="Preference data")).to_be_visible()
            nav = page.locator('[data-testid="stSidebarNav"] a')
            expect(nav.filter(has_text="Controlled decoding")).to_have_count(1)
            expect(nav).to_have_count(9)  # the app's pages, not every file in pages/
            page.goto(url)
            expect(page.get_by_text("RM accuracy")).to_be_visible()  # models loaded, data scored
            expect(page.get_by_text("Pairs", exact=True)).to_be_visible()
            screenshot("1-home")

            # Sidebar links keep the browser session (and so the queued pairs and the curation list).
            page.get_by_role("link", name="Influential samples").click()
            expect(page.get_by_text("Selected pairs", exact=True)).to_be_visible()
            expect(page.get_by_text("Bradley-Terry loss")).to_be_visible()  # the Plotly chart drew
            screenshot("2-influential")
            page.get_by_role("button", name="Attack these pairs in controlled decoding").click()

            expect(page.get_by_role("heading", name="Controlled decoding")).to_be_visible()
            # α = 0: the RM alone steers, so the tiny random RM is pushed across the pair's other side.
            page.get_by_role("slider", name="α fluency weight").focus()
            page.keyboard.press("Home")
            expect(page.get_by_role("slider", name="α fluency weight")).to_have_attribute("aria-valuetext", "0.00")
            inverted = False
            for direction in ("lower", "raise"):
                page.get_by_text(f"{direction}: start from").click()
                page.get_by_role("button", name="Run", exact=True).click()
                verdict = page.get_by_text("True inversion.").or_(page.get_by_text("Not an inversion:"))
                expect(verdict.first).to_be_visible()
                expect(page.get_by_role("button", name="Send to curation")).to_be_visible()  # the page drew to its end
                settle()  # this run's verdict, not the last direction's still on screen
                if page.get_by_text("True inversion.").count():
                    inverted = True
                    break
            assert inverted, "neither direction inverted the first influential pair"
            expect(page.get_by_text("Inspect step")).to_be_visible()
            expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()   # the step's candidates
            screenshot("3-decoding")
            page.get_by_role("button", name="Send to curation").click()
            expect(page.get_by_text("Queued for curation (1 waiting).")).to_be_visible()

            page.get_by_role("link", name="Curation").click()
            expect(page.get_by_role("heading", name="Queue")).to_be_visible()
            expect(page.get_by_text("A true inversion: the RM scores the variant")).to_be_visible()
            page.get_by_label("Note (optional: why)").fill("e2e: approved in the browser")
            page.get_by_label("Note (optional: why)").press("Enter")
            page.get_by_role("button", name="Approve", exact=True).click()
            expect(page.get_by_text("Approved variant #")).to_be_visible()
            expect(page.get_by_text("Nothing here.")).to_be_visible()  # the queue is empty again
            screenshot("4-curation")
            approved = Store(Path(project) / "reform.duckdb").list_variants(decision="approved")
            assert len(approved) == 1, approved
            assert (approved.iloc[0]["note"], approved.iloc[0]["reviewer"]) == ("e2e: approved in the browser", "e2e")

            page.get_by_role("link", name="Retrain & evaluate").click()
            expect(page.get_by_role("heading", name="Retrain & evaluate")).to_be_visible()
            expect(page.get_by_role("heading", name="Run history")).to_be_visible()
            screenshot("5-retrain")

            page.get_by_role("link", name="Reward explorer").click()
            expect(page.get_by_text("Token by token")).to_be_visible()
            page.get_by_text("Start from a pair of the data, or from the last decoded variant").click()
            page.get_by_role("button", name="Load the last decoded variant").click()
            expect(page.get_by_text("Token by token")).to_be_visible()
            screenshot("6-explorer")

            page.get_by_role("link", name="Data").click()
            expect(page.get_by_role("heading", name="Preference data")).to_be_visible()
            screenshot("7-data")

            page.get_by_role("link", name="Adversarial attack").click()
            expect(page.get_by_role("heading", name="Adversarial attack")).to_be_visible()
            expect(page.get_by_role("button", name="Start the attack")).to_be_visible()  # the page drew to its form's end
            screenshot("8-adversarial")

            page.get_by_role("link", name="REFORM vs Adv-RM").click()
            expect(page.get_by_role("heading", name="REFORM vs Adv-RM")).to_be_visible()
            screenshot("9-compare")
        finally:
            page.screenshot(path=out_dir / "last.png", full_page=True)
            browser.close()
    assert not errors, errors
    log = (out_dir / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    for name in ("1-home", "2-influential", "3-decoding", "4-curation", "5-retrain", "6-explorer", "7-data", "8-adversarial", "9-compare"):
        assert (out_dir / f"{name}.png").stat().st_size > 10_000
