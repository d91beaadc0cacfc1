"""End to end in a real browser, as a newcomer starts: ``streamlit run app.py`` on localhost on a fresh
project directory with the app's own defaults (the offline SmolLM2 as policy, the demo RM shipped in
data/demo_rm/ as reward model, the demo set) and no training step, driven by Playwright in headless
Debian chromium. Opens every page, runs controlled decoding until it finds a true inversion (its
perplexity is written to decoding.json), sends it to curation, approves it there, checks the decision
row in the project's DuckDB file, and saves a screenshot of each page under test-output/e2e/
(REFORM_TEST_OUTPUT overrides).

Waits: loading the models and scoring take minutes on a busy 2-core machine, so a step that loads or
computes waits on the app itself (``wait_ready``: the page's script has finished and nothing shows
a loading panel) for up to READY_S, never on a fixed delay; clicks and redraws get ACTION_MS.

Chromium: the system's (REFORM_CHROMIUM, or chromium on PATH); if missing and we are root with apt,
the test installs Debian's package itself, as on a fresh CI machine. It skips, saying how to install,
only where that is impossible."""
import json
import os
import re
import time
from pathlib import Path

import pytest

from browser_support import (INSTALL_HINT, ROOT, find_chromium, install_chromium, launch_chromium, streamlit_server)
from reform_engine.reward_model import DEMO_RM_PATH
from reform_engine.store import Store
from pages._routes import PAGES

READY_S = 1800       # loading SmolLM2 (converting it on a cold cache), scoring, a decoding: generous under any load
ACTION_MS = 300_000  # a click's redraw, with the models loaded
ROWS = "132:165"     # the demo set's rows the shipped RM was not trained on: Home scores 33 pairs


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
    project = tmp_path_factory.mktemp("e2e") / "project"  # fresh: no database, no runs, no RM of its own
    env = {"REFORM_POLICY": "", "REFORM_REWARD_MODEL": "", "REFORM_DATA": "", "REFORM_COMPARE_RM": "",
           "REFORM_PROJECT_DIR": str(project), "REFORM_DEVICE": "cpu", "REFORM_ROWS": ROWS, "REFORM_REVIEWER": "e2e"}
    with streamlit_server(env, out_dir / "streamlit.log") as url:
        yield url, str(project)


def wait_ready(page, done, what: str, limit: float = READY_S) -> float:
    """Wait until the app has drawn ``done`` (a locator) with its script finished and no loading panel
    on screen; -> seconds waited. Fails after ``limit`` s saying what was still loading."""
    start, seen = time.monotonic(), ""
    idle = page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')
    loading = page.locator('[data-testid="stProgress"], [data-testid="stAlert"]').filter(has_text=re.compile(r"\(\d+ s"))
    while time.monotonic() - start < limit:
        if done.first.is_visible() and idle.count() == 1 and loading.count() == 0:
            return time.monotonic() - start
        if loading.count():
            seen = loading.first.inner_text()
        page.wait_for_timeout(1000)
    raise AssertionError(f"{what}: not ready after {limit:.0f} s; last loading panel: {seen!r}")


def test_every_page_in_a_real_browser_and_a_short_decoding(chromium, server, out_dir):
    from playwright.sync_api import expect, sync_playwright

    url, project = server
    assert not (Path(project) / "runs").exists() and (DEMO_RM_PATH / "reward_model.json").is_file()

    with sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.set_default_timeout(ACTION_MS)
        expect.set_options(timeout=ACTION_MS)
        waits = {}
        idle = page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')

        def settle():  # the rerun has finished drawing: no stale elements in the screenshot
            expect(idle).to_have_count(1)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            # The server's first visit goes straight to a page's URL: it must still run through app.py's
            # router (Streamlit would otherwise treat pages/ as a legacy multipage folder).
            page.goto(f"{url}/data_browser")
            expect(page.get_by_role("heading", name="Preference data")).to_be_visible()
            nav = page.locator('[data-testid="stSidebarNav"] a')
            expect(nav.filter(has_text="Controlled decoding")).to_have_count(1)
            expect(nav).to_have_count(len(PAGES))  # the app's pages, not every file in pages/
            page.goto(url)
            waits["home: models loaded, data scored"] = wait_ready(page, page.get_by_text("RM accuracy"), "Home")
            expect(page.get_by_text("Pairs", exact=True)).to_be_visible()
            expect(page.get_by_text("The demo RM shipped in")).to_be_visible()  # no training step: the shipped RM is in use
            expect(page.get_by_text("Held-out accuracy")).to_be_visible()      # 132:165 are outside its training rows
            assert page.get_by_text("No reward model").count() == 0
            settle()
            page.screenshot(path=out_dir / "1-home.png", full_page=True)

            # Sidebar links keep the browser session (and so the queued pairs and the curation list).
            page.get_by_role("link", name="Influential samples").click()
            waits["influential"] = wait_ready(page, page.get_by_text("Selected pairs", exact=True), "Influential samples")
            expect(page.get_by_text("Bradley-Terry loss")).to_be_visible()  # the Plotly chart drew
            settle()
            page.screenshot(path=out_dir / "2-influential.png", full_page=True)
            page.get_by_role("button", name="Attack these pairs in controlled decoding").click()

            expect(page.get_by_role("heading", name="Controlled decoding")).to_be_visible()
            assert page.get_by_text("No reward model").count() == 0
            # The default α first (fluency weighs in), then α = 0 (the RM alone steers), each direction in turn.
            found = None
            for alpha in ("default", "0.00"):
                if alpha == "0.00":
                    page.get_by_role("slider", name="α fluency weight").focus()
                    page.keyboard.press("Home")
                    expect(page.get_by_role("slider", name="α fluency weight")).to_have_attribute("aria-valuetext", "0.00")
                for direction in ("lower", "raise"):
                    page.get_by_text(f"{direction}: start from").click()
                    page.get_by_role("button", name="Run", exact=True).click()
                    # this run has started streaming, so the verdict awaited below is its own, not the last run's
                    expect(page.get_by_text(re.compile(r"step \d+/\d+ · running reward"))).to_be_visible()
                    verdict = page.get_by_text("True inversion").or_(page.get_by_text("Not an inversion"))
                    waits[f"decoding {direction}, alpha {alpha}"] = wait_ready(page, verdict, "Controlled decoding")
                    expect(page.get_by_role("button", name="Send to curation")).to_be_visible()  # the page drew to its end
                    settle()  # this run's verdict, not the last direction's still on screen
                    captions = page.get_by_text(re.compile(r"\d+ tokens · reward .* · perplexity")).all_inner_texts()
                    caption = captions[0]  # the variant's; the plain policy's greedy continuation is the second
                    if page.get_by_text("True inversion").count():
                        found = {"direction": direction, "alpha": alpha, "caption": caption, "plain_policy": captions[1:],
                                 "perplexity": float(re.search(r"perplexity ([\d.]+)", caption).group(1))}
                        break
                if found:
                    break
            assert found, "neither direction inverted the first influential pair, at the default α or at α = 0"
            print(f"true inversion ({found['direction']}, α {found['alpha']}): perplexity {found['perplexity']}")
            expect(page.get_by_text("Inspect step")).to_be_visible()
            expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()   # the step's candidates
            settle()
            page.screenshot(path=out_dir / "3-decoding.png", full_page=True)
            page.get_by_role("button", name="Send to curation").click()
            expect(page.get_by_text("Queued for curation (1 waiting).")).to_be_visible()

            page.get_by_role("link", name="Curation").click()
            waits["curation"] = wait_ready(page, page.get_by_role("heading", name="Queue"), "Curation")
            assert page.get_by_text("No reward model").count() == 0
            expect(page.get_by_text("A true inversion: the RM scores the variant")).to_be_visible()
            page.get_by_label("Note (optional: why)").fill("e2e: approved in the browser")
            page.get_by_label("Note (optional: why)").press("Enter")
            page.get_by_role("button", name="Approve", exact=True).click()
            expect(page.get_by_text("Approved variant #")).to_be_visible()
            expect(page.get_by_text("Nothing here.")).to_be_visible()  # the queue is empty again
            settle()
            page.screenshot(path=out_dir / "4-curation.png", full_page=True)
            approved = Store(Path(project) / "reform.duckdb").list_variants(decision="approved")
            assert len(approved) == 1, approved
            assert (approved.iloc[0]["note"], approved.iloc[0]["reviewer"]) == ("e2e: approved in the browser", "e2e")
            found.update(text=str(approved.iloc[0]["text"]), stored_perplexity=float(approved.iloc[0]["perplexity"]))
            (out_dir / "decoding.json").write_text(json.dumps(found, indent=2, ensure_ascii=False))

            page.get_by_role("link", name="Retrain & evaluate").click()
            expect(page.get_by_role("heading", name="Retrain & evaluate")).to_be_visible()
            expect(page.get_by_role("heading", name="Run history")).to_be_visible()
            settle()
            page.screenshot(path=out_dir / "5-retrain.png", full_page=True)

            page.get_by_role("link", name="Reward explorer").click()
            waits["explorer"] = wait_ready(page, page.get_by_text("Token by token"), "Reward explorer")
            page.get_by_text("Start from a pair of the data, or from the last decoded variant").click()
            page.get_by_role("button", name="Load the last decoded variant").click()
            waits["explorer: the variant's trace"] = wait_ready(page, page.get_by_text("Token by token"), "Reward explorer")
            assert page.get_by_text("No reward model").count() == 0
            settle()
            page.screenshot(path=out_dir / "6-explorer.png", full_page=True)

            page.get_by_role("link", name="Data").click()
            expect(page.get_by_role("heading", name="Preference data")).to_be_visible()
            settle()
            page.screenshot(path=out_dir / "7-data.png", full_page=True)

            page.get_by_role("link", name="Adversarial attack").click()
            expect(page.get_by_role("heading", name="Adversarial attack")).to_be_visible()
            expect(page.get_by_role("button", name="Start the attack")).to_be_visible()  # the page drew to its form's end
            settle()
            page.screenshot(path=out_dir / "8-adversarial.png", full_page=True)

            page.get_by_role("link", name="REFORM vs Adv-RM").click()
            expect(page.get_by_role("heading", name="REFORM vs Adv-RM")).to_be_visible()
            settle()
            page.screenshot(path=out_dir / "9-compare.png", full_page=True)
        finally:
            page.screenshot(path=out_dir / "last.png", full_page=True)
            browser.close()
            (out_dir / "waits.json").write_text(json.dumps({k: round(v, 1) for k, v in waits.items()}, indent=2))
    assert not errors, errors
    log = (out_dir / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    for name in ("1-home", "2-influential", "3-decoding", "4-curation", "5-retrain", "6-explorer", "7-data", "8-adversarial", "9-compare"):
        assert (out_dir / f"{name}.png").stat().st_size > 10_000
