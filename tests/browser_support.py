"""A real browser against a real server, for the end-to-end test and the first-token benchmark:
find (or, as root with apt, install) Debian's chromium, and run ``streamlit run app.py`` on a free
localhost port with the models given in the environment.

Playwright drives the system chromium through ``executable_path``; Playwright's own browser downloads
are never used (they are not reachable from here, and Debian's package is)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = ("install Debian's chromium with `apt-get install -y chromium` (as root), "
                "or point REFORM_CHROMIUM at a Chromium/Chrome binary")


def find_chromium() -> str | None:
    for candidate in (os.environ.get("REFORM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def install_chromium(log: Path | None = None, timeout: float = 900) -> tuple[str | None, str]:
    """apt-get install chromium when we are root and apt exists (REFORM_NO_APT=1 forbids it).
    -> (binary or None, why not)."""
    if os.environ.get("REFORM_NO_APT"):
        return None, "REFORM_NO_APT is set"
    if shutil.which("apt-get") is None:
        return None, "apt-get is not available"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "not root, so apt-get cannot install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = open(log, "a") if log else subprocess.DEVNULL
    try:
        for cmd in (["apt-get", "install", "-y", "--no-install-recommends", "chromium"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            if cmd[1] == "install" and done.returncode == 0:
                break
    except (subprocess.TimeoutExpired, OSError) as exc:
        return None, f"apt-get failed ({exc})"
    finally:
        if log:
            out.close()
    path = find_chromium()
    return path, "" if path else "apt-get could not install chromium (offline, or no Debian package source)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


url_pids: dict[str, int] = {}  # server URL -> pid of its process (for CPU accounting)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children, from /proc (clock ticks -> s)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def streamlit_server(env: dict[str, str], log_path: Path, start_timeout: float = 180,
                     *, as_configured: bool = False) -> Iterator[str]:
    """``streamlit run app.py`` on localhost and a free port, in its own process group -> its URL.
    Stopped (SIGTERM, then SIGKILL) on exit. ``as_configured``: only the port and headless flags, so
    the server runs on the repo's .streamlit/config.toml as the README's command does."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
           "--server.headless", "true"]
    if not as_configured:
        cmd += ["--server.address", "localhost", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://localhost:{port}"
    url_pids[url] = proc.pid
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {start_timeout:.0f} s; see {log_path}")
            time.sleep(0.25)
        yield url
    except BaseException:
        _show_server_state(proc, log_path)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _show_server_state(proc: subprocess.Popen, log_path: Path, lines: int = 120) -> None:
    """When a test fails with the server up: ask it for every thread's stack (app.py registers SIGUSR1 with
    faulthandler) and print the end of its log, so a hang in CI says where it hangs."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(1.0)
        except OSError:
            pass
    try:
        tail = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    print(f"--- last {len(tail)} lines of {log_path} (thread stacks at the end) ---", *tail, sep="\n")


def launch_chromium(playwright, executable: str):
    """Headless chromium; --no-sandbox because tests often run as root, where its sandbox refuses to start."""
    return playwright.chromium.launch(executable_path=executable, headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])


# Records, in the page, when "Run" is clicked and when the first streamed token is drawn (the first
# live caption "step i/N · running reward ..."), both on the page's own clock.
FIRST_TOKEN_PROBE = """
() => {
  window.__reform = {click: null, first: null};
  document.addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (b && b.innerText.trim() === 'Run') { window.__reform = {click: performance.now(), first: null}; }
  }, true);
  new MutationObserver(() => {
    const r = window.__reform;
    if (r.click !== null && r.first === null && /step \\d+\\/\\d+ · running reward/.test(document.body.innerText)) { r.first = performance.now(); }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""
