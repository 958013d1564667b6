"""Shared fixtures: isolated data folders, Hydra composition, the command (run or started), and a data-source probe."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import forked

ROOT = Path(__file__).resolve().parents[1]

# Variants from plugins join every test that derives from the registry: BNSTUDY_TEST_PLUGINS=path/to/module.py[,...]
# (a module file beside its conf/ folder, laid out as docs/plugins.md says). Loaded here, before collection, so
# the tests parametrized over NORMS cover them; compose() finds their YAML. tests/test_plugins.py runs the
# variant-wide tests (marker ``variants``) so over a throwaway variant; `make test` with the variable set runs all.
TEST_PLUGINS = [str(Path(p).resolve()) for p in os.environ.get("BNSTUDY_TEST_PLUGINS", "").split(",") if p.strip()]
PLUGIN_CONFS = [Path(p).parent / "conf" for p in TEST_PLUGINS if (Path(p).parent / "conf").is_dir()]
if TEST_PLUGINS:
    from bnstudy.plugins import load as _load_plugins

    _load_plugins(TEST_PLUGINS)


def plugin_variants() -> set[str]:
    """The variants the test plugins registered (none without BNSTUDY_TEST_PLUGINS)."""
    from bnstudy.norm import NORMS

    return {n for n, v in NORMS.items() if not getattr(v.build, "__module__", "").startswith(("bnstudy.", "tests."))}


def pytest_collection_modifyitems(config, items):
    """BNSTUDY_TEST_PLUGINS_ONLY=1: of the tests parametrized by variant, only the plugins' variants' cases."""
    if os.environ.get("BNSTUDY_TEST_PLUGINS_ONLY") != "1":
        return
    from bnstudy.norm import NORMS

    mine = plugin_variants()
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        named = [v for k, v in params.items() if k in ("norm", "name", "option") and isinstance(v, str) and v in NORMS]
        (drop if named and not set(named) & mine else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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

    if TEST_PLUGINS:  # as a user runs a plugin's variant: the module named, its YAML on the search path
        overrides = [f"plugins=[{','.join(TEST_PLUGINS)}]", *overrides]
        overrides += [f"hydra.searchpath=[{','.join('file://' + str(c) for c in PLUGIN_CONFS)}]"] if PLUGIN_CONFS else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


@contextlib.contextmanager
def private_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """For a module-wide fixture (``tmp_data`` is per test): a private prepared-data folder while the block runs."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("data")
    mp.setenv("BNSTUDY_DATA_DIR", str(d))
    try:
        yield d
    finally:
        mp.undo()


def _command_env(env: dict | None) -> dict:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return full_env


def cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m bnstudy.train ARGS`` as a user would, capturing output.

    In a child forked from a warm interpreter (:mod:`tests.forked`), unless ``fresh`` or ``env`` sets a variable that
    acts at start-up: then in a new interpreter.
    """
    full_env = _command_env(env)
    if not fresh and not forked.needs_fresh(full_env):
        return forked.run(args, cwd, full_env, timeout)
    return subprocess.run(
        [sys.executable, "-m", "bnstudy.train", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(args: list[str], cwd: Path, env: dict | None = None, fresh: bool = False):
    """Start ``python -m bnstudy.train ARGS`` (to signal or kill it); ``.communicate()`` gives its text output.

    Forked as :func:`cli` does, unless ``fresh`` or ``env`` says otherwise. SIGINT acts as in a terminal even where
    the suite itself was started in the background (which makes children ignore it).
    """
    full_env = _command_env(env)
    if not fresh and not forked.needs_fresh(full_env):
        return forked.Child(args, cwd, full_env)
    return subprocess.Popen(
        [sys.executable, "-m", "bnstudy.train", *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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

