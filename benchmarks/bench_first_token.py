"""Bar (issue 6): from clicking "Run" on the Controlled decoding page to the first streamed token
<= 2 s, with the models already loaded. Measured in a real browser, the way a person sees it:

    .venv/bin/python benchmarks/bench_first_token.py --rm benchmarks/out/train_hh/checkpoint [--runs 5]

Goal (issue 16): from ``streamlit run`` on a fresh checkout to the first streamed token within a
minute, the one-time model conversion included. ``--from-start`` measures that: a fresh project
directory, the app's own defaults (SmolLM2 and the demo RM shipped in data/demo_rm/, no --rm), the
clock started just before the server process; the script opens the decoding page, waits until Run
shows (the page's own readiness: both models loaded) and clicks it once. ``--cold`` points
REFORM_CACHE at an empty directory, so the packaged GGUF is converted again on the way:

    .venv/bin/python benchmarks/bench_first_token.py --from-start [--cold]

It starts ``streamlit run app.py`` on a free localhost port with the given policy (default: the offline
SmolLM2-135M-Instruct) and RM, opens the decoding page in headless Debian chromium (Playwright), waits
until both models are loaded, then clicks Run ``--runs`` times. A script in the page records, on the
page's own clock, the click and the moment the first live token caption ("step i/N · running reward")
is drawn; the latency is their difference. The first click after loading is reported apart (it pays
one-time warm-up in torch); the figure is the median of the later ones. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import (FIRST_TOKEN_PROBE, INSTALL_HINT, find_chromium, launch_chromium,  # noqa: E402
                             streamlit_server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rm", default="", help="reward-model checkpoint directory (from train-rm); '' = the app's default "
                                                 "(the shipped demo RM on a fresh project)")
    parser.add_argument("--from-start", action="store_true", help="time from `streamlit run` to the first streamed token")
    parser.add_argument("--cold", action="store_true", help="with --from-start: an empty REFORM_CACHE (convert SmolLM2 again)")
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="policy id or directory")
    parser.add_argument("--runs", type=int, default=5, help="clicks on Run after the models are loaded")
    parser.add_argument("--rows", default="0:20", help="rows of the demo set the page offers")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "first_token.json"))
    args = parser.parse_args()
    if args.from_start:
        return from_start(args)
    if not args.rm:
        parser.error("--rm is required unless --from-start")

    from playwright.sync_api import expect, sync_playwright

    chromium = find_chromium()
    if chromium is None:
        print(f"no chromium: {INSTALL_HINT}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    project = tempfile.mkdtemp(prefix="bench-first-token-")
    env = {"REFORM_POLICY": args.policy, "REFORM_REWARD_MODEL": str(Path(args.rm).resolve()), "REFORM_PROJECT_DIR": project,
           "REFORM_ROWS": args.rows, "REFORM_DATA": "", "REFORM_COMPARE_RM": ""}
    latencies, runs = [], []
    with streamlit_server(env, out.with_suffix(".log")) as url, sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        expect.set_options(timeout=600_000)  # the first start may convert the GGUF model
        page.set_default_timeout(600_000)
        page.goto(f"{url}/decoding")
        run = page.get_by_role("button", name="Run", exact=True)
        expect(run).to_be_visible()  # drawn only once the policy and the RM are loaded
        page.get_by_text("Also decode the plain policy").click()  # untick: later runs start sooner, first token unaffected
        page.evaluate(FIRST_TOKEN_PROBE)
        idle = page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')
        for i in range(args.runs + 1):
            expect(idle).to_have_count(1)  # the last run has finished drawing
            run.click()
            page.wait_for_function("() => window.__reform && window.__reform.first !== null")
            t = page.evaluate("() => window.__reform")
            latency = (t["first"] - t["click"]) / 1000
            runs.append({"run": i, "first_after_load": i == 0, "seconds": round(latency, 3)})
            print(f"run {i}{' (first after load)' if i == 0 else ''}: {latency:.3f} s", flush=True)
            if i:
                latencies.append(latency)
            expect(idle).to_have_count(1)
            expect(page.get_by_text("True inversion.").or_(page.get_by_text("Not an inversion:")).first).to_be_visible()
        page.screenshot(path=str(out.with_suffix(".png")), full_page=True)
        browser.close()
    result = {"policy": args.policy, "rm": args.rm, "runs": runs, "median_s": round(statistics.median(latencies), 3),
              "max_s": round(max(latencies), 3), "bar_s": 2.0}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def from_start(args) -> int:
    """Seconds from starting ``streamlit run`` (fresh project, app defaults) to the first streamed token."""
    from playwright.sync_api import expect, sync_playwright

    chromium = find_chromium()
    if chromium is None:
        print(f"no chromium: {INSTALL_HINT}", file=sys.stderr)
        return 2
    out = Path(args.out).with_name(f"first_token_from_start_{'cold' if args.cold else 'warm'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"REFORM_POLICY": "", "REFORM_REWARD_MODEL": args.rm, "REFORM_DATA": "", "REFORM_COMPARE_RM": "", "REFORM_ROWS": "",
           "REFORM_PROJECT_DIR": tempfile.mkdtemp(prefix="bench-first-token-project-")}
    if args.cold:
        env["REFORM_CACHE"] = tempfile.mkdtemp(prefix="bench-first-token-cache-")
    marks = {}
    with sync_playwright() as p:
        browser = launch_chromium(p, chromium)  # started before the clock: a browser is already open for a person
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(1_800_000)
        expect.set_options(timeout=1_800_000)
        t0 = time.monotonic()
        with streamlit_server(env, out.with_suffix(".log"), start_timeout=600) as url:
            marks["server_answers"] = time.monotonic() - t0
            page.goto(f"{url}/decoding")
            page.evaluate(FIRST_TOKEN_PROBE)
            run = page.get_by_role("button", name="Run", exact=True)
            expect(run).to_be_visible()  # drawn only once the policy and the RM are loaded
            marks["models_loaded"] = time.monotonic() - t0
            clicked = time.monotonic()
            run.click()
            page.wait_for_function("() => window.__reform && window.__reform.first !== null")
            t = page.evaluate("() => window.__reform")
            marks["first_token"] = clicked - t0 + (t["first"] - t["click"]) / 1000
            page.screenshot(path=str(out.with_suffix(".png")), full_page=True)
        browser.close()
    result = {"cache": "cold (empty REFORM_CACHE: GGUF converted)" if args.cold else "warm (converted model cached)",
              "rm": args.rm or "the app's default (data/demo_rm/checkpoint)", "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
              **{k: round(v, 1) for k, v in marks.items()}, "goal_s": 60}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
