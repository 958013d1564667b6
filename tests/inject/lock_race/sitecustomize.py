"""Loaded (through PYTHONPATH) only by the lock-race test: widens the gap between a job's
"is this run finished?" check and its taking the run's lock.

Before taking a lock, the job touches ``$BNSTUDY_INJECT_LOCK_WAIT`` (so the test knows the
check is behind it), waits until the run's summary.json says it finished and then takes the
lock as soon as it is free: the moment when another process has trained the run in between.
"""
import json
import os
import time
from pathlib import Path

from bnstudy import runs

_signal = os.environ.get("BNSTUDY_INJECT_LOCK_WAIT")
_acquire = runs.RunLock.acquire


def _late_acquire(self):
    Path(_signal).touch()
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads((self.path.parent / "summary.json").read_text()).get("status") in runs.DONE:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    while time.time() < deadline:  # and until the process that finished it has let go of the lock
        if _acquire(self):
            return True
        time.sleep(0.05)
    return _acquire(self)


if _signal:
    runs.RunLock.acquire = _late_acquire
