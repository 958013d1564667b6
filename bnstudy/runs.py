"""Run folders: atomic files, the tidy metrics log, the summary, and the per-run lock.

A run folder holds ``config.yaml``, ``metrics.csv``, ``summary.json`` and, while
a run is unfinished, ``checkpoint.pt``. Nothing else is needed to skip, resume
or analyse it.
"""
from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

METRICS_HEADER = ["step", "split", "metric", "value", "seconds"]
DONE = ("completed", "diverged")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _finite(obj: Any) -> Any:
    # JSON has no NaN/inf: non-finite numbers are written as null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats become null)."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json, or None when absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


class MetricsLog:
    """Appends tidy rows ``step,split,metric,value,seconds`` to metrics.csv, flushed at each write."""

    def __init__(self, path: Path, resume_step: int | None = None, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        if resume_step is None or not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(METRICS_HEADER)
        else:
            self.truncate(resume_step)
        self._f = open(self.path, "a", newline="")
        self._w = csv.writer(self._f)
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` (those written after the checkpoint a run resumes from)."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(METRICS_HEADER) and int(r[0]) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, self.path)

    def write(self, step: int, rows: Iterable[tuple[str, str, float]], seconds: float) -> None:
        """Append (split, metric, value) rows measured at ``step`` after ``seconds`` of training."""
        rows = list(rows)
        for split, metric, value in rows:
            self._w.writerow([step, split, metric, repr(float(value)), f"{seconds:.4f}"])
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{metric}", value, step)
        self._f.flush()

    def close(self) -> None:
        """Flush and close the file (and the TensorBoard writer)."""
        self._f.close()
        if self._tb is not None:
            self._tb.close()


class RunLock:
    """An exclusive, non-blocking lock on a run folder (released when the process dies)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def now() -> float:
    """Wall-clock time, for the ``updated`` field of summaries."""
    return time.time()
