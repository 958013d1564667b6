"""Command-line entry points: ``bnstudy-train`` (Hydra app), ``bnstudy-runs`` and ``bnstudy-report``."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bnstudy.config import RunConfig, run_name
from bnstudy.errors import BnstudyError
from bnstudy.runs import DONE, RunLock, read_summary
from bnstudy.train.loop import validate

log = logging.getLogger("bnstudy")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
SWEEP_ENV = "BNSTUDY_SWEEP_ID"


def _run_name_resolver(*, _root_: DictConfig) -> str:
    # Hydra resolves hydra.run.dir / hydra.sweep.subdir with this, so its own
    # outputs (.hydra/, the job log) land inside the run folder.
    plain = {k: OmegaConf.to_container(_root_[k], resolve=True) if OmegaConf.is_config(_root_[k]) else _root_[k] for k in _root_ if k != "hydra"}
    return run_name(plain)


OmegaConf.register_new_resolver("bnstudy_run", _run_name_resolver, replace=True)


class SweepCallback(Callback):
    """Tags the jobs of one multirun, and at its end reports the runs that failed."""

    failed: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_ENV] = uuid.uuid4().hex[:12]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = os.environ.get(SWEEP_ENV)
        root = Path(config.hydra.sweep.dir)
        failed = []
        for path in sorted(root.glob("**/summary.json")):
            s = read_summary(path.parent)
            if s and s.get("sweep_id") == sweep_id and s.get("status") == "failed":
                failed.append(str(path.parent))
        SweepCallback.failed = failed
        if failed:
            print(f"{len(failed)} run(s) failed (traceback in error.txt of each):", file=sys.stderr)
            for f in failed:
                print(f"  {f}", file=sys.stderr)


def _threads_for_launcher() -> int:
    """Torch threads per job: the cores divided between the launcher's parallel jobs."""
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return 0
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        cores = os.cpu_count() or 1
        n_jobs = int(launcher.get("n_jobs", 1) or 1)
        n_jobs = cores if n_jobs < 0 else n_jobs  # joblib's -1: one job per core
        return max(1, cores // n_jobs)
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return 0


def run_job(cfg: DictConfig) -> str:
    """One training job: skip if done, else train (resuming if interrupted). Returns the final status."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    rcfg = RunConfig.from_dict(plain)  # type: ignore[arg-type]
    run_dir = Path(rcfg.out_dir) / run_name(plain)  # type: ignore[arg-type]
    prev = read_summary(run_dir)
    if prev and prev.get("status") in DONE and not rcfg.force:
        log.info("skipped %s: already %s at step %s (force=true retrains)", run_dir, prev["status"], prev.get("step"))
        return prev["status"]
    validate(rcfg)  # before the lock and any file of ours: bad input leaves nothing behind
    if rcfg.train.threads == 0:
        rcfg.train.threads = _threads_for_launcher()
    lock = RunLock(run_dir)
    if not lock.acquire():
        log.info("skipped %s: another process is training it", run_dir)
        return "locked"
    with lock:
        from bnstudy.train import train_run, extra_hooks

        result = train_run(rcfg, run_dir, extra_hooks=extra_hooks(rcfg), sweep_id=os.environ.get(SWEEP_ENV))
    final = result["final"]
    log.info(
        "%s %s: step %d, test acc %s, %.1f s",
        result["status"],
        run_dir,
        result["step"],
        "n/a" if final["test/acc"] is None else f"{final['test/acc']:.4f}",
        result["seconds"],
    )
    return result["status"]


def _remove_if_empty(run_dir: Path) -> None:
    """Remove a run folder that holds only what Hydra and the lock put there (bad input, nothing trained)."""
    if not run_dir.is_dir() or (run_dir / "summary.json").exists():
        return
    if {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", ".lock"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only if no other seed lives there


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> str:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        return run_job(cfg)
    except BnstudyError as e:
        _remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
        if full_error:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if full_error or not multirun:
            if not full_error:
                print(f"error: run failed: {type(e).__name__}: {e} (traceback in the run folder's error.txt)", file=sys.stderr)
                sys.exit(1)
            raise
        log.error("failed: %s: %s (traceback in error.txt; the sweep goes on)", type(e).__name__, e)
        return "failed"


def train() -> None:
    """``bnstudy-train``: the Hydra app; exits non-zero if any run of a sweep failed."""
    SweepCallback.failed = []
    _hydra_main()
    if SweepCallback.failed:
        sys.exit(1)


def runs(argv: list[str] | None = None) -> None:
    """``bnstudy-runs DIR``: one row per run folder under DIR (factors, status, step, final test accuracy)."""
    import argparse

    import pandas as pd

    from bnstudy.analysis import load_runs

    p = argparse.ArgumentParser(prog="bnstudy-runs", description=runs.__doc__)
    p.add_argument("dir", nargs="?", default="results", help="folder holding run folders (searched recursively)")
    p.add_argument("--status", help="only runs with this status (comma-separated: completed,diverged,failed,running)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    a = p.parse_args(argv)
    if not Path(a.dir).is_dir():
        p.exit(2, f"error: {a.dir} is not a folder; give the out_dir of a run or sweep\n")
    df = load_runs(a.dir)
    if a.status and len(df):
        df = df[df["status"].isin(a.status.split(","))]
    if df.empty:
        print(f"no runs under {a.dir}" + (f" with status {a.status}" if a.status else ""))
        return
    cols = [c for c in ["run", "data", "model", "norm", "optim", "lr", "batch_size", "depth", "width", "activation", "seed", "status", "step", "final_test_acc"] if c in df.columns]
    out = df[cols].sort_values([c for c in ["data", "model", "norm", "lr", "seed"] if c in cols])
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(out.to_csv(index=False) if a.csv else out.to_string(index=False))
    counts = df["status"].value_counts().to_dict()
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), file=sys.stderr)


def report(argv: list[str] | None = None) -> None:
    """``bnstudy-report DIR [--out OUT]``: tables, figures and report.md for the runs under DIR."""
    from bnstudy.analysis.report import main

    main(argv)


if __name__ == "__main__":
    train()
