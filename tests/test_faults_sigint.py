"""Fault injection: a Ctrl-C at every moment of ``bnstudy-train``'s start-up, from 0 to 200 ms after the process begins.

Each press ends the command without a traceback and writes no folder. What remains outside bnstudy's reach is Python's
own start-up, before bnstudy's first line runs (docs/faults.md measures it): a press there either ends the process
silently (before Python installs its handler) or is Python's fatal start-up error, whose traceback holds no bnstudy
frame. Any traceback through a bnstudy file fails.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import ROOT

DELAYS_MS = list(range(0, 201, 10))
AT_ONCE = 4  # commands started together: the sweep takes seconds, and a loaded machine stretches the early phases
SCRIPT = Path(sys.executable).parent / "bnstudy-train"


def _command() -> list[str]:
    """``bnstudy-train`` as installed (the console script), else ``python -m bnstudy.train``."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "bnstudy.train"]


def _bnstudy_frames(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(rf'File "{re.escape(str(ROOT / "bnstudy"))}/', line)]


def outcome(code: int, stderr: str) -> str:
    """What a Ctrl-C at start-up did: one of the allowed outcomes, or a description that fails the test."""
    if code == -signal.SIGINT and not stderr:
        return "ended by the signal before Python installed its handler"
    if "Traceback" in stderr or "Fatal Python error" in stderr:
        frames = _bnstudy_frames(stderr)
        if frames:
            return f"a traceback through bnstudy: {frames[-1].strip()}"
        return "Python's own start-up error, before bnstudy's first line"
    lines = stderr.strip().splitlines()
    if code == 130 and len(lines) == 1 and lines[0].startswith("interrupted before training began"):
        return "one line, exit 130"
    return f"exit {code}: {stderr.strip()[-300:]}"


ALLOWED = ("ended by the signal before Python installed its handler", "Python's own start-up error, before bnstudy's first line",
           "one line, exit 130")


def test_ctrl_c_at_every_moment_of_start_up_is_quiet_and_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["BNSTUDY_DATA_DIR"] = str(tmp_path / "data")
    results: dict[int, str] = {}
    for first in range(0, len(DELAYS_MS), AT_ONCE):
        batch = []
        for ms in DELAYS_MS[first:first + AT_ONCE]:
            out = tmp_path / f"after{ms}ms" / "out"
            out.parent.mkdir()
            args = [*_command(), "data=synthetic", "train.steps=100000", "train.progress=off", f"out_dir={out}"]
            proc = subprocess.Popen(args, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            batch.append((ms, out, proc, time.monotonic()))
        for ms, out, proc, started in sorted(batch, key=lambda b: b[0]):
            time.sleep(max(0.0, started + ms / 1000 - time.monotonic()))
            proc.send_signal(signal.SIGINT)
        for ms, out, proc, _ in batch:
            _, err = proc.communicate(timeout=120)
            results[ms] = outcome(proc.returncode, err)
            assert not out.exists(), f"Ctrl-C after {ms} ms wrote {sorted(map(str, out.rglob('*')))}"
    bad = {ms: what for ms, what in results.items() if what not in ALLOWED}
    assert not bad, f"Ctrl-C after these delays (ms): {bad}"
    assert "one line, exit 130" in results.values(), results  # the sweep reached bnstudy's own start-up
