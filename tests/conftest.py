"""Shared fixtures: isolated data folders, Hydra composition, and a data-source probe."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmp_data(tmp_path, monkeypatch) -> Path:
    """A private prepared-data folder, so a test never writes into the project's data/."""
    d = tmp_path / "data"
    monkeypatch.setenv("BNSTUDY_DATA_DIR", str(d))
    return d


def compose(overrides: list[str]):
    """The real config (conf/ + experiments/) with overrides, as bnstudy-train would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import bnstudy.cli  # noqa: F401  (registers the run-name resolver)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m bnstudy.train ARGS`` as a user would, capturing output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "bnstudy.train", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def have_real(name: str) -> str | None:
    """None if ``name`` can be loaded here, else the reason (for skip messages)."""
    from bnstudy.config import DataConfig
    from bnstudy.data import load_raw
    from bnstudy.errors import DataError

    try:
        load_raw(DataConfig(name=name, download=False))
    except DataError as e:
        return f"no {name} source on this machine ({e})"
    return None


def resumes_from(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120) -> bool:
    """Whether ``proc`` (started on ``run``'s command) logs that it resumed ``run`` from ``step``; it is stopped with a
    Ctrl-C as soon as it says it resumed, or when ``timeout`` passes."""
    import signal
    import time

    log = run / "train.log"
    deadline = time.time() + timeout
    while time.time() < deadline and not (log.exists() and "resumed" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    return log.exists() and f"resumed {run} from step {step}" in log.read_text()

