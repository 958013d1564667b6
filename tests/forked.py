"""``bnstudy-train`` in a child process forked from a warm interpreter: the tests' fast way to run the command.

A new interpreter spends about 3 s importing torch (and torch._dynamo, which the
first optimizer pulls in) before bnstudy does anything; the suite starts the
command about a hundred times. Here a multiprocessing fork server imports torch,
Hydra and bnstudy once per test process, and each command runs in a child forked
from it: its own process (pid, signals, exit code, kill -9), its own argv, working
folder and environment, stdout and stderr in files, and the interpreter's exit
handlers run at the end as they would at a normal exit.

What a fork cannot show is what happens while modules load or what the
environment changes at start-up (PYTHONPATH, LD_PRELOAD, OMP_*, ...): a test of
that asks for a fresh interpreter (``fresh=True`` in :func:`tests.conftest.cli`),
and so does any environment that sets such a variable.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENTRY = str(Path(__file__).resolve().parents[1] / "bnstudy" / "train" / "__main__.py")
# what a command imports before its first step: the app and, lazily, the training code, torch and torch._dynamo
PRELOAD = ["tests.forked", "bnstudy.cli.app", "bnstudy.cli.job", "bnstudy.devices", "bnstudy.train.loop", "torch._dynamo"]
# variables read while the interpreter or torch starts: a forked child would not see them take effect
AT_START = ("PYTHON", "LD_", "OMP_", "KMP_", "MKL_", "ATEN_", "ONEDNN_", "DNNL_", "TORCH_", "CUDA_")

_context = None


def needs_fresh(env: dict[str, str]) -> bool:
    """Whether ``env`` sets or changes a variable that acts at start-up (compared with this process)."""
    return any(k.startswith(AT_START) and os.environ.get(k) != v for k, v in env.items()) or any(
        k.startswith(AT_START) and k not in env for k in os.environ
    )


def _fork_context():
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


def _main(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The child: the command's argv, folder, environment and output files, then bnstudy-train's own entry point."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the fork server ignores Ctrl-C; a command does not
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [ENTRY, *args]
    from bnstudy.startup import main

    try:
        main()
    finally:
        # what the interpreter does at exit: wait for threads and run their exit hooks (joblib's workers are told to
        # stop there), then the atexit functions (logging's flush, torch's hooks)
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()


class Child:
    """A started command with the part of :class:`subprocess.Popen` the tests use."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.args = args
        self._dir = tempfile.TemporaryDirectory(prefix="bnstudy-cli-")  # removed with this object
        self._out, self._err = os.path.join(self._dir.name, "stdout"), os.path.join(self._dir.name, "stderr")
        self._texts: tuple[str, str] | None = None
        self._proc = _fork_context().Process(target=_main, args=(args, str(cwd), env, self._out, self._err))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        if self._texts is None:
            out, err = (Path(p).read_text(errors="replace") for p in (self._out, self._err))
            self._texts = (out, err)
        return self._texts


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(..., capture_output=True, text=True, timeout=timeout)`` for a forked command."""
    child = Child(args, cwd, env)
    t0 = time.monotonic()
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(30)
        raise subprocess.TimeoutExpired(args, time.monotonic() - t0) from None
    return subprocess.CompletedProcess(args, child.returncode, out, err)
