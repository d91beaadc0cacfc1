"""End to end in a real browser: ``streamlit run app.py`` on localhost with tiny models, driven by
Playwright in headless Debian chromium. Opens every page, runs a short controlled decoding, sends the
variant to curation, and saves a screenshot of each page under test-output/e2e/ (REFORM_TEST_OUTPUT
overrides).

Chromium: the system's (REFORM_CHROMIUM, or chromium on PATH); if missing and we are root with apt,
the test installs Debian's package itself, as on a fresh CI machine. It skips, saying how to install,
only where that is impossible."""
import os
from pathlib import Path

import pytest

from browser_support import (INSTALL_HINT, ROOT, find_chromium, install_chromium, launch_chromium, streamlit_server)
from reform_engine.reward_model import RewardModelSpec, build_reward_model
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
           "REFORM_DEVICE": "cpu", "REFORM_DATA": "", "REFORM_ROWS": "0:40", "REFORM_COMPARE_RM": ""}
    with streamlit_server(env, out_dir / "streamlit.log") as url:
        yield url


def test_every_page_in_a_real_browser_and_a_short_decoding(chromium, server, out_dir):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(server)
            expect(page.get_by_text("RM accuracy")).to_be_visible()  # models loaded, data scored
            expect(page.get_by_text("Pairs", exact=True)).to_be_visible()
            page.screenshot(path=out_dir / "1-home.png", full_page=True)

            # Sidebar links keep the browser session (and so the queued pairs and the curation list).
            page.get_by_role("link", name="Influential samples").click()
            expect(page.get_by_text("Selected pairs", exact=True)).to_be_visible()
            expect(page.get_by_text("Bradley-Terry loss")).to_be_visible()  # the Plotly chart drew
            page.screenshot(path=out_dir / "2-influential.png", full_page=True)
            page.get_by_role("button", name="Attack these pairs in controlled decoding").click()

            expect(page.get_by_role("heading", name="Controlled decoding")).to_be_visible()
            page.get_by_role("button", name="Run", exact=True).click()
            verdict = page.get_by_text("True inversion.").or_(page.get_by_text("Not an inversion:"))
            expect(verdict.first).to_be_visible()
            expect(page.get_by_text("Inspect step")).to_be_visible()
            expect(page.get_by_role("button", name="Send to curation")).to_be_visible()  # the page drew to its end
            expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()   # the step's candidates
            page.screenshot(path=out_dir / "3-decoding.png", full_page=True)
            page.get_by_role("button", name="Send to curation").click()
            expect(page.get_by_text("Queued for curation (1 waiting).")).to_be_visible()
            # TODO(issue 6, curation): approve the variant on the Curation page and check the decision
            # row in the DuckDB file (Store(default_store_path()).list_variants(decision="approved")),
            # once reform_engine/store.py and the Curation page land.

            page.get_by_role("link", name="Reward explorer").click()
            expect(page.get_by_text("Token by token")).to_be_visible()
            page.get_by_text("Start from a pair of the data, or from the last decoded variant").click()
            page.get_by_role("button", name="Load the last decoded variant").click()
            expect(page.get_by_text("Token by token")).to_be_visible()
            page.screenshot(path=out_dir / "4-explorer.png", full_page=True)

            page.get_by_role("link", name="Data").click()
            expect(page.get_by_role("heading", name="Preference data")).to_be_visible()
            page.screenshot(path=out_dir / "5-data.png", full_page=True)
        finally:
            page.screenshot(path=out_dir / "last.png", full_page=True)
            browser.close()
    assert not errors, errors
    log = (out_dir / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    for name in ("1-home", "2-influential", "3-decoding", "4-explorer", "5-data"):
        assert (out_dir / f"{name}.png").stat().st_size > 10_000
