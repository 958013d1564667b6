"""Whether a job skips its run (finished, undamaged), and the run's ``train.log`` handler a skip must not touch."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bnstudy.config import RunConfig
from bnstudy.runs import DONE, read_summary, summary_damage

log = logging.getLogger("bnstudy")

_SAID_DAMAGED: set[tuple[str, Any]] = set()


def skip_finished(run_dir: Path, prev: dict[str, Any]) -> bool:
    """Whether a sweep skips a finished run (one log line either way): not when it is damaged; stale ones with a warning."""
    from bnstudy.provenance import commit_label, stale_files
    from bnstudy.runs import check_run

    damage = check_run(run_dir, prev)
    if damage and not (run_dir / "summary.json").exists():  # a packed run: its record is the pack, not to be shadowed
        from bnstudy.archive import PackError

        raise PackError(
            f"{run_dir} is damaged in its pack ({'; '.join(damage)}); restore the pack from git, "
            "or retrain the run beside it with force=true"
        )
    if damage:
        key = (str(run_dir), prev.get("updated"))
        if key not in _SAID_DAMAGED:  # the job checks again under the lock: one line is enough
            _SAID_DAMAGED.add(key)
            log.warning("retraining %s: it says %s but is damaged (%s)", run_dir, prev.get("status"), "; ".join(damage))
        return False
    changed = stale_files(prev)
    if changed:
        log.warning(
            "skipped %s: already %s, but trained by other code (commit %s; changed since: %s); force=true retrains",
            run_dir, prev["status"], commit_label(prev), ", ".join(changed),
        )
    else:
        log.info("skipped %s: already %s at step %s (force=true retrains)", run_dir, prev["status"], prev.get("step"))
    return True


class RunLogFile(logging.FileHandler):
    """``train.log`` in the run folder (conf/hydra/job_logging): opened at the first record, so a skipped job
    never creates or touches it; when it cannot be written (a full disk) it says so once and goes quiet."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = True) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as e:
            self._give_up(e)

    def close(self) -> None:
        try:
            super().close()  # closes the file even when its last flush fails
        except OSError as e:
            self._give_up(e)

    def handleError(self, record: logging.LogRecord) -> None:
        self._give_up(sys.exc_info()[1])

    def _give_up(self, e: BaseException | None) -> None:
        if not self.broken:  # instead of logging's "--- Logging error ---" traceback at every record
            self.broken = True
            print(f"warning: cannot write {self.baseFilename} ({e}); the log goes on on the console only", file=sys.stderr)


def run_log_files() -> list[RunLogFile]:
    """Take this job's train.log handlers off the root logger (the caller closes or restores them)."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, RunLogFile)]
    for h in files:
        root.removeHandler(h)
    return files


def refuse_damaged_pack(run_dir: Path) -> None:
    """Raise :class:`bnstudy.archive.PackError` (one line, exit 2) when the pack that would hold ``run_dir`` is damaged:
    a sweep never retrains the runs of a pack it cannot read, nor writes beside it."""
    from bnstudy.archive import PackError
    from bnstudy.archive_write import damaged_line, pack_holding, pack_problems

    holder = pack_holding(run_dir)
    problems = pack_problems(holder) if holder is not None else []
    if problems:
        raise PackError(damaged_line(holder, problems))


def skip(run_dir: Path, rcfg: RunConfig) -> str | None:
    """The status of a finished run this job skips, else None; a skipped run's folder is left exactly as it was."""
    refuse_damaged_pack(run_dir)
    prev = read_summary(run_dir)
    if prev is None and (why := summary_damage(run_dir)) and (str(run_dir), why) not in _SAID_DAMAGED:
        _SAID_DAMAGED.add((str(run_dir), why))  # the job checks again under the lock: one line is enough
        log.warning("retraining %s: %s", run_dir, why)
    if not (prev and prev.get("status") in DONE and not rcfg.force):
        return None
    files = run_log_files()  # the skip line goes to the console only, never into the finished run's train.log
    if skip_finished(run_dir, prev):
        for h in files:
            h.close()
        return prev["status"]
    for h in files:
        logging.getLogger().addHandler(h)
    return None


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run folder that holds only what Hydra and the lock put there (bad input, nothing trained)."""
    if not run_dir.is_dir() or (run_dir / "summary.json").exists():
        return
    if {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", ".lock"}:
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, RunLogFile) and Path(h.baseFilename).parent == Path(os.path.abspath(run_dir))]:
            root.removeHandler(h)  # a later record (torch logs at exit) would write into a folder that is gone
            h.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only if no other seed lives there
