"""What the AppTest files share: the app's entry file and settings, running a page until its
background model loads settle, and re-running it until a background job it started has ended."""
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from job_support import HANG_GUARD
from pages._draw import WAIT
from reform_engine.jobs import ACTIVE
from reform_engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
# the settings of the app that the AppTest files give or clear (pages/_settings.py, backups.BackupConfig.from_env)
APP_SETTINGS = ("REFORM_POLICY", "REFORM_REWARD_MODEL", "REFORM_PROJECT_DIR", "REFORM_DEVICE", "REFORM_DATA", "REFORM_ROWS",
                "REFORM_COMPARE_RM", "REFORM_REVIEWER", "REFORM_BACKUP_EVERY", "REFORM_BACKUP_KEEP", "REFORM_BACKUP_DIR")


def app_env(monkeypatch, project: Path, **settings) -> Path:
    """The app's settings for one test: its project directory ``project``, the CPU, and REFORM_<NAME>
    for each other one given (``policy=...``); every other one of APP_SETTINGS unset, so the environment
    the tests run in cannot leak in. -> the project database the app will use."""
    for name in APP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"project_dir": project, "device": "cpu", **settings}.items():
        monkeypatch.setenv(f"REFORM_{name.upper()}", str(value))
    return project / "reform.duckdb"


@pytest.fixture(scope="module", autouse=True)
def no_thread_outlives_the_tests():
    """A test that fails mid-load must not leave a model loading while the interpreter exits (a test
    module that imports this fixture gets it)."""
    yield
    from reform_engine.background import wait_all
    wait_all()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def loading(at: AppTest) -> bool:
    """A background model load is still drawing its progress (a job's progress bar is no load)."""
    return any(WAIT in el.value for el in at.info) or any(
        WAIT in el.proto.text and "job #" not in el.proto.text for el in at.get("progress"))


def settle(at: AppTest, page: str | None = None, tries: int = 400) -> AppTest:
    """Run (or switch to ``page``) and re-run while a model is still loading in the background."""
    (at.switch_page(page) if page else at).run()
    for _ in range(tries):
        if not loading(at):
            break
        time.sleep(0.05)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not loading(at), "a background load never finished"
    return at


def until_stored(read, what: str):
    """``read()`` once it returns something other than None, polled until HANG_GUARD: a background task
    that has drawn its result may still be writing it to the store on a loaded machine."""
    deadline = time.monotonic() + HANG_GUARD
    while (value := read()) is None:
        assert time.monotonic() < deadline, f"{what} never reached the store"
        time.sleep(0.1)
    return value


def job_progress(at: AppTest) -> list[str]:
    return [el.proto.text for el in at.get("progress") if "job #" in el.proto.text]


def until_job_ends(at: AppTest, db: Path, job_id: int) -> dict:
    """Re-run the page (as its live panel's timer does) until the job has ended; -> the job."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        run(at)
        job = Store(db).get_job(job_id)
        if job["state"] not in ACTIVE:
            run(at)  # the page as it is once the job's results are in
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job['message']}"
        time.sleep(0.3)
