"""A multirun's bookkeeping: the callback that tags its jobs and reports their endings; threads per job."""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnstudy.cli.leftovers import note_missing
from bnstudy.runs import read_summary
from bnstudy.sweep_log import keep_sweep_record, sweep_record_before

SWEEP_ENV = "BNSTUDY_SWEEP_ID"


class SweepCallback(Callback):
    """Tags the jobs of one multirun, and at its end reports the runs that failed or were interrupted."""

    failed: list[str] = []
    interrupted: list[str] = []
    unrecorded: list[str] = []  # jobs that failed before training wrote a summary (added by the app)
    running: tuple[Path, bytes | None] | None = None  # the sweep under way: its out_dir and multirun.yaml before it

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from bnstudy.archive import PackError
        from bnstudy.archive_write import refuse_damaged

        try:
            refuse_damaged(Path(config.hydra.sweep.dir))  # before multirun.yaml is written or any job starts
        except PackError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)  # SystemExit: Hydra turns a callback's Exception into a warning and goes on
        os.environ[SWEEP_ENV] = uuid.uuid4().hex[:12]
        root = Path(config.hydra.sweep.dir)
        note_missing(root)  # Hydra creates it next: a sweep that trains nothing leaves no folder it made
        self._record = sweep_record_before(root)  # before Hydra rewrites multirun.yaml
        SweepCallback.running = (root, self._record)

    @classmethod
    def stopped(cls) -> None:
        """A job ended the whole sweep (bad input, Ctrl-C, a damaged pack, a full disk): keep its record as at a
        normal end (empty job folders go; multirun.yaml as it was if no job trained, else the command in sweeps.log)."""
        if cls.running is not None:
            root, before = cls.running
            cls.running = None
            with contextlib.suppress(OSError):  # a full disk that stopped the sweep may refuse the record too
                keep_sweep_record(root, before, os.environ.get(SWEEP_ENV))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SweepCallback.running = None
        sweep_id = os.environ.get(SWEEP_ENV)
        root = Path(config.hydra.sweep.dir)
        failed, interrupted = [], []
        for path in sorted(root.glob("**/summary.json")):
            s = read_summary(path.parent)
            if not s or s.get("sweep_id") != sweep_id:
                continue
            if s.get("status") == "failed":
                failed.append(str(path.parent))
            elif s.get("status") in ("interrupted", "running"):  # running: its job died without a word
                interrupted.append(f"{path.parent}  (step {s.get('step')}: {s.get('reason', 'stopped')})")
        failed += SweepCallback.unrecorded
        SweepCallback.failed, SweepCallback.interrupted = failed, interrupted
        keep_sweep_record(root, getattr(self, "_record", None), sweep_id)  # a sweep that trained nothing changes nothing
        if failed:
            which = "those that began training" if SweepCallback.unrecorded else "each"
            print(f"{len(failed)} run(s) failed (traceback in error.txt of {which}):", file=sys.stderr)
            for f in failed:
                print(f"  {f}", file=sys.stderr)
        if interrupted:
            print(f"{len(interrupted)} run(s) interrupted, checkpoint kept:", file=sys.stderr)
            for f in interrupted:
                print(f"  {f}", file=sys.stderr)
            command = shlex.join(["bnstudy-train", *sys.argv[1:]])
            if config.get("force"):  # the same command would discard their checkpoints
                print(f"force=true trains them again from step 0; to resume them, run the command without force=true "
                      f"(which also skips every finished run):\n  {command}", file=sys.stderr)
            else:
                print(f"resume them (finished runs are skipped) with the same command:\n  {command}", file=sys.stderr)


def launcher_share() -> tuple[int, int | None]:
    """(parallel jobs sharing this machine's cores, cpus per job) of the launcher, for :mod:`bnstudy.threads`."""
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return 1, None
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs", 1) or 1)
        return (os.cpu_count() or 1) if n_jobs < 0 else n_jobs, None  # joblib's -1: one job per core
    if "submitit" in target and launcher.get("cpus_per_task"):
        return 1, int(launcher.cpus_per_task)
    return 1, None
