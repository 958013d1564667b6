"""The Hydra app behind ``bnstudy-train``: one job per composed config, and the exit code of the whole command."""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bnstudy.cli import resolvers  # noqa: F401  (the resolvers and the schema the config needs)
from bnstudy.cli.hydra_errors import FULL_ERROR_ENV, command_line_error, full_error
from bnstudy.cli.job import run_job
from bnstudy.cli.leftovers import remove_made
from bnstudy.cli.signals import TERM
from bnstudy.cli.skip import remove_if_empty
from bnstudy.cli.sweep import SweepCallback
from bnstudy.errors import INTERRUPTED_AT_START, BnstudyError, causes, no_space
from bnstudy.runs import read_summary
from bnstudy.train.stops import Interrupted

log = logging.getLogger("bnstudy")

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> str:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    full = full_error()
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run_job(cfg)
    except Interrupted as e:
        if cfg.get("force"):  # force=true discards the checkpoint: say so, and how to keep it
            print(f"interrupted at step {e.step}; force=true trains this run again from step 0: "
                  f"run the command without force=true to resume from step {e.step}", file=sys.stderr)
        else:
            print(f"interrupted at step {e.step}; run the same command to resume", file=sys.stderr)
        _ends_here(out, multirun)
        sys.exit(128 + signal.SIGTERM if e.reason == TERM else 130)  # as the shell reports each signal
    except KeyboardInterrupt:
        _ends_here(out, multirun)
        print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.exit(130)
    except BnstudyError as e:
        _ends_here(out, multirun)
        if full:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if no_space(e) and not full:
            # every later job would fail the same way: stop the sweep; the run resumes once there is space
            print(f"error: no space left on the device holding {out}; free some and run the same command to resume", file=sys.stderr)
            _ends_here(out, multirun)
            sys.exit(1)
        if full or not multirun:
            if not full:
                print(f"error: run failed: {type(e).__name__}: {e} (traceback in the run folder's error.txt)", file=sys.stderr)
                sys.exit(1)
            raise
        if (read_summary(out) or {}).get("status") == "failed":
            log.error("failed: %s: %s (traceback in error.txt; the sweep goes on)", type(e).__name__, e)
        else:  # failed before training wrote its record: no error.txt, and the sweep's end must still count it
            log.error("failed: %s: %s (before training began, so no error.txt; the sweep goes on)", type(e).__name__, e)
            SweepCallback.unrecorded.append(f"{out}  ({type(e).__name__}: {e})")
        return "failed"


def _ends_here(out: Path, multirun: bool) -> None:
    """The command stops at this job: it leaves what a finished command leaves, and none of the folders it made for
    nothing (this job's run folder when it holds no run, the folders Hydra made above it, a sweep's empty job folders
    and, when no job trained, its rewritten multirun.yaml)."""
    remove_if_empty(out)
    if multirun:
        SweepCallback.stopped()
    remove_made()


def train() -> None:
    """``bnstudy-train``: the Hydra app; exits non-zero if any run of a sweep failed.

    A bad command line (unknown option or key, a value of the wrong type) is one
    line on stderr and exit code 2: Hydra is told to raise its errors
    (HYDRA_FULL_ERROR=1) so they can be reported here in bnstudy's words.
    """
    SweepCallback.failed, SweepCallback.interrupted, SweepCallback.unrecorded = [], [], []
    SweepCallback.running = None
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", FULL_ERROR_ENV)}
    user_full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ[FULL_ERROR_ENV] = "1" if user_full else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except KeyboardInterrupt:  # while Hydra composes the config or sets a job up
        SweepCallback.stopped()
        remove_made()
        print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        SweepCallback.stopped()
        remove_made()
        if user_full or any(isinstance(x, BrokenPipeError) for x in causes(e)):
            raise  # a closed stdout (``--help | head``) is bnstudy.startup's to end quietly
        line = command_line_error(e)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)
        bad_path = next((x for x in causes(e) if isinstance(x, OSError) and x.filename and not no_space(x)), None)
        if bad_path is not None:  # Hydra creating the run folder: out_dir is where it cannot
            print(f"error: cannot create {bad_path.filename}: {bad_path.strerror}; pick another out_dir", file=sys.stderr)
            sys.exit(2)
        print(f"error: {type(e).__name__}: {e} (set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if SweepCallback.failed:
        sys.exit(1)
    if SweepCallback.interrupted:
        sys.exit(3)
