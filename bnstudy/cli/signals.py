"""Signals as stop requests: Ctrl-C, and the signals a cluster sends a job (scancel, time limit, pre-emption)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Iterator

from bnstudy.train.stops import StopRequest

log = logging.getLogger("bnstudy")

CTRL_C = "Ctrl-C"
TERM = "SIGTERM"  # outside a cluster job: kill, timeout, a container or the machine shutting down


@contextlib.contextmanager
def ctrl_c_stops(stop: StopRequest) -> Iterator[None]:
    """While training, a first Ctrl-C asks the loop to stop after the current step (checkpointed there);
    a second one interrupts the step at once, unless the loop has already stopped and is saving."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # signals go to the main thread only; an ignored SIGINT stays ignored
        return

    def on_ctrl_c(signum: int, _frame: Any) -> None:
        if stop.reason is None:
            stop.set(CTRL_C, signum)
        elif not stop.seen:
            raise KeyboardInterrupt  # a step that takes long: the run resumes from its last checkpoint
        # else the checkpoint and summary of the stop are being written: a press 10 ms later must not cut them short

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        # after a Ctrl-C stop the command only prints its last line and exits: a late press must not turn
        # that into a traceback or the wrong line
        signal.signal(signal.SIGINT, signal.SIG_IGN if stop.reason == CTRL_C else previous)


@contextlib.contextmanager
def term_stops(stop: StopRequest) -> Iterator[None]:
    """Outside a cluster job, SIGTERM asks the loop to stop after the current step, as a first Ctrl-C does.

    ``kill PID``, ``timeout``, ``docker stop`` and a machine shutting down send SIGTERM, and a run started in the
    background (``nohup ... &``) ignores Ctrl-C: without this, such a stop lost every step since the last checkpoint
    and left the run marked ``running``. A second SIGTERM changes nothing (the step ends within seconds, and whoever
    sends it escalates to SIGKILL, which no handler sees). Inside a submitit job, :func:`stop_on_job_signals` handles it.
    """
    if ("SUBMITIT_EXECUTOR" in os.environ or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN):
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: stop.set(TERM, signum))
    try:
        yield
    finally:
        # after a SIGTERM stop the command only prints its last line and exits: a second one must not cut that short
        signal.signal(signal.SIGTERM, signal.SIG_IGN if stop.reason == TERM else previous)


def _job_signals() -> dict[int, str]:
    """Inside a submitit job: the signals that stop a run cleanly, with the reason recorded for each."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return {}
    import submitit

    usr = submitit.JobEnvironment._usr_sig()  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
    return {
        signal.SIGTERM: "SIGTERM (scancel, or the job's time limit passed)",
        usr: f"{usr.name} (the job's time limit is near, or the job is pre-empted)",
    }


@contextlib.contextmanager
def stop_on_job_signals(stop: StopRequest) -> Iterator[dict]:
    """While training inside a submitit job, the job's signals ask the loop to stop (yields the replaced handlers).

    submitit's own handlers act at once, wherever the signal lands: its USR2 handler
    requeues the job by raising out of the middle of a step, and it ignores SIGTERM
    until SLURM's SIGKILL. Here the loop first stops between two steps, checkpoints
    and records the run as interrupted; then :func:`requeue` hands over to submitit.
    """
    previous = {}
    for signum, reason in _job_signals().items():
        previous[signum] = signal.signal(signum, lambda n, _frame, r=reason: stop.set(r, n))
    try:
        yield previous
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def requeue(stop: StopRequest, previous: dict) -> None:
    """After a stop by submitit's requeue signal, let submitit requeue the job (it exits the process)."""
    handler = previous.get(stop.signum)
    if stop.signum == signal.SIGTERM or not callable(handler):
        return  # scancel: the job ends; its result says interrupted
    try:
        handler(stop.signum, None)  # dumps the job for its next start, `scontrol requeue`, sys.exit
    except Exception as e:  # noqa: BLE001 - e.g. "timed-out too many times" (max_num_timeout)
        log.warning("not requeued (%s); submitting the sweep again resumes the run", e)
