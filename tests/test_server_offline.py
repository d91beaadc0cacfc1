"""The app's server, started the README's way (only the repo's .streamlit/config.toml), makes the browser ask
no other host for anything while pages are opened and switched: an offline tool must work with no network.
A browser session once made 47 requests to fonts.gstatic.com (each page's material icon as the tab icon)."""
from urllib.parse import urlparse

from browser_support import launch_chromium, streamlit_server
from reform_engine.tiny import save_tiny_model
from test_e2e_browser import chromium, out_dir  # noqa: F401  (fixtures: find or install chromium)

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def test_opening_and_switching_pages_requests_nothing_from_another_host(chromium, out_dir, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    policy = str(save_tiny_model(tmp_path / "policy", seed=1, ascii_only=True))
    env = {"REFORM_POLICY": policy, "REFORM_REWARD_MODEL": str(tmp_path / "no-rm-yet"),
           "REFORM_PROJECT_DIR": str(tmp_path / "project"), "REFORM_DEVICE": "cpu", "REFORM_DATA": "",
           "REFORM_ROWS": "0:20", "REFORM_COMPARE_RM": ""}
    remote: list[str] = []
    with streamlit_server(env, out_dir / "streamlit-offline.log", as_configured=True) as url, sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        page = browser.new_page()
        page.set_default_timeout(300_000)
        page.on("request", lambda r: remote.append(r.url) if r.url.startswith(("http:", "https:", "ws:", "wss:"))
                and urlparse(r.url).hostname not in LOCAL_HOSTS else None)
        page.goto(url)
        expect(page.get_by_role("heading", name="REFORM workbench")).to_be_visible(timeout=300_000)
        # a page switch is when the tab icon changes; the models need not be loaded for that
        for link, title in (("Data", "Preference data"), ("Reward explorer", "Reward explorer"), ("Home", "REFORM workbench")):
            page.get_by_role("link", name=link).first.click()
            expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=300_000)
            page.wait_for_timeout(2000)  # the icon is set after the page's first message
        page.screenshot(path=str(out_dir / "offline-pages.png"))
        browser.close()
    assert remote == [], f"{len(remote)} request(s) to other hosts, first: {remote[:5]}"
