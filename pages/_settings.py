"""What the workbench is working on: the settings every page reads, starting from environment variables,
so a test or a deployment can point the app at any models:

    REFORM_POLICY          policy model id or directory        (default: the offline SmolLM2-135M-Instruct)
    REFORM_REWARD_MODEL    RM checkpoint directory             (default: <project>/runs/base-rm/checkpoint once the
                                                                project has trained one there, else the shipped demo RM)
    REFORM_COMPARE_RM      a second RM for side-by-side traces (default: none)
    REFORM_DATA            preference data: file path or hub id (default: the embedded demo set)
    REFORM_ROWS            'a:b' rows of the data to work on   (default: all)
    REFORM_PROJECT_DIR     where uploads, runs and the project database live (default: ./project_data)
    REFORM_DEVICE          torch device for the app's models    (default: auto)
    REFORM_TRUST_REMOTE_CODE  1: let models run Python code they ship (default: off; also a Home toggle)
    REFORM_SCORE_MAX_LENGTH   tokens per prompt + response when scoring data (default: 1024; longer pairs are skipped)
    REFORM_REVIEWER        the reviewer name decisions are stored with (default: asked in the sidebar)
    REFORM_BACKUP_EVERY, REFORM_BACKUP_KEEP, REFORM_BACKUP_DIR   snapshots of the project database (backups.BackupConfig)
    REFORM_MAX_JOBS        background jobs running at once; the others wait, queued (default: one per 4 cores)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from pages._keys import SETTINGS
from reform_engine.data import DEMO_PATH, parse_rows
from reform_engine.runtime import Runtime
from reform_engine.scoring import SCORE_MAX_LENGTH

UPLOAD_LIMIT_MB = 200        # also server.maxUploadSize in .streamlit/config.toml


@dataclass(frozen=True)
class Settings:
    policy: str
    reward_model: str            # "" = none yet
    data: str
    rows: str                    # 'a:b' source rows of the data to work on, '' = all
    project_dir: str
    compare_rm: str
    device: str
    trust_remote_code: bool = False             # models may run Python code they ship (auto_map): only by the user's leave
    score_max_length: int = SCORE_MAX_LENGTH    # tokens per prompt + response when scoring data; longer pairs are skipped

    def __post_init__(self):
        parse_rows(self.rows)

    def runtime(self, seed: int = 0) -> Runtime:
        """The Runtime of a job started from the app: the app's device and remote-code leave."""
        return Runtime(device=self.device, trust_remote_code=self.trust_remote_code, seed=seed)


def project_rm(project_dir: str) -> Path:
    """Where Home trains the project's own base RM."""
    return Path(project_dir) / "runs" / "base-rm" / "checkpoint"


def default_reward_model(project_dir: str) -> str:
    """The project's own base RM when it has trained one, else the demo RM shipped in data/demo_rm/."""
    from reform_engine.reward_model import DEMO_RM_PATH

    own = project_rm(project_dir)
    return str(own) if rm_exists(str(own)) else str(DEMO_RM_PATH)


def is_demo_rm(path: str) -> bool:
    from reform_engine.reward_model import DEMO_RM_PATH

    return bool(path) and Path(path).expanduser().resolve() == DEMO_RM_PATH.resolve()


def default_settings(env: dict | None = None) -> Settings:
    from reform_engine.models import DEFAULT_MODEL

    env = os.environ if env is None else env
    project = env.get("REFORM_PROJECT_DIR") or "project_data"
    limit = env.get("REFORM_SCORE_MAX_LENGTH", "")
    return Settings(policy=env.get("REFORM_POLICY") or DEFAULT_MODEL,
                    reward_model=env.get("REFORM_REWARD_MODEL") or default_reward_model(project),
                    data=env.get("REFORM_DATA") or str(DEMO_PATH), rows=env.get("REFORM_ROWS", ""), project_dir=project,
                    compare_rm=env.get("REFORM_COMPARE_RM", ""), device=env.get("REFORM_DEVICE") or "auto",
                    trust_remote_code=env.get("REFORM_TRUST_REMOTE_CODE", "").strip().lower() in ("1", "true", "yes", "on"),
                    score_max_length=max(16, int(limit)) if limit.strip().isdigit() else SCORE_MAX_LENGTH)


def settings() -> Settings:
    if SETTINGS not in st.session_state:
        st.session_state[SETTINGS] = default_settings()
    return st.session_state[SETTINGS]


def update_settings(**changes: Any) -> Settings:
    """Change the settings in use; a bad value (a row range) raises ValueError and changes nothing."""
    st.session_state[SETTINGS] = dataclasses.replace(settings(), **changes)
    return st.session_state[SETTINGS]


def rm_exists(path: str) -> bool:
    """A local REFORM checkpoint, or anything that is not a local path (a hub id is tried when loaded)."""
    from reform_engine.reward_model import SPEC_FILE
    from reform_engine.runs import recover_directory

    if not path:
        return False
    p = Path(path).expanduser()
    recover_directory(p)  # a save killed between its two renames left the checkpoint as .old
    if p.exists():
        return (p / SPEC_FILE).is_file() or (p / "config.json").is_file()
    return not path.startswith((".", "/", "~")) and path.count("/") <= 1  # "org/name": a hub id


def file_stamp(path: str) -> int:
    """Changes when a local file or checkpoint is replaced, so cached copies are reloaded."""
    try:
        return os.stat(Path(path).expanduser()).st_mtime_ns
    except OSError:
        return 0
