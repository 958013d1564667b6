"""Command-line entry points: ``bnstudy-train`` (Hydra app), ``bnstudy-runs`` and ``bnstudy-report``."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bnstudy.config import RunConfig, run_name
from bnstudy.errors import BnstudyError
from bnstudy.runs import DONE, RunLock, read_summary
from bnstudy.train.loop import Interrupted, StopRequest, validate

log = logging.getLogger("bnstudy")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
SWEEP_ENV = "BNSTUDY_SWEEP_ID"
FULL_ERROR_ENV = "BNSTUDY_FULL_ERROR"  # the user's HYDRA_FULL_ERROR, for jobs (train() sets Hydra's to 1)


def _run_name_resolver(*, _root_: DictConfig) -> str:
    # Hydra resolves hydra.run.dir / hydra.sweep.subdir with this, so its own
    # outputs (.hydra/, the job log) land inside the run folder.
    plain = {k: OmegaConf.to_container(_root_[k], resolve=True) if OmegaConf.is_config(_root_[k]) else _root_[k] for k in _root_ if k != "hydra"}
    return run_name(plain)


OmegaConf.register_new_resolver("bnstudy_run", _run_name_resolver, replace=True)
# RunConfig is the schema of conf/config.yaml (its first default): Hydra then rejects
# unknown keys and values of the wrong type while composing, before any folder exists.
ConfigStore.instance().store(name="bnstudy_schema", node=RunConfig)


def _signal_delay(timeout_min: int, wanted: int) -> int:
    """Seconds before a SLURM time limit for the warning signal: ``wanted``, but the signal never comes
    before half the limit has passed.

    slurmctld checks time limits every 30 s and sends the signal up to 30 s before the delay
    asks, so with ``timeout_min`` of 1 or 2 the default 120 s would stop every job as soon as
    it starts (or before submitit catches signals at all, which kills it).
    """
    return max(1, min(int(wanted), int(timeout_min) * 60 // 2 - 30))


OmegaConf.register_new_resolver("bnstudy_signal_delay", _signal_delay, replace=True)


class SweepCallback(Callback):
    """Tags the jobs of one multirun, and at its end reports the runs that failed or were interrupted."""

    failed: list[str] = []
    interrupted: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_ENV] = uuid.uuid4().hex[:12]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
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
        SweepCallback.failed, SweepCallback.interrupted = failed, interrupted
        if failed:
            print(f"{len(failed)} run(s) failed (traceback in error.txt of each):", file=sys.stderr)
            for f in failed:
                print(f"  {f}", file=sys.stderr)
        if interrupted:
            print(f"{len(interrupted)} run(s) interrupted, checkpoint kept:", file=sys.stderr)
            for f in interrupted:
                print(f"  {f}", file=sys.stderr)
            command = shlex.join(["bnstudy-train", *sys.argv[1:]])
            print(f"resume them (finished runs are skipped) with the same command:\n  {command}", file=sys.stderr)


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


_SAID_DAMAGED: set[tuple[str, Any]] = set()


def _skip_finished(run_dir: Path, prev: dict[str, Any]) -> bool:
    """Whether a sweep skips a finished run (one log line either way): not when it is damaged; stale ones with a warning."""
    from bnstudy.provenance import commit_label, stale_files
    from bnstudy.runs import check_run

    damage = check_run(run_dir, prev)
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


def _run_log_files() -> list[RunLogFile]:
    """Take this job's train.log handlers off the root logger (the caller closes or restores them)."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, RunLogFile)]
    for h in files:
        root.removeHandler(h)
    return files


def _skip(run_dir: Path, rcfg: RunConfig) -> str | None:
    """The status of a finished run this job skips, else None; a skipped run's folder is left exactly as it was."""
    prev = read_summary(run_dir)
    if not (prev and prev.get("status") in DONE and not rcfg.force):
        return None
    files = _run_log_files()  # the skip line goes to the console only, never into the finished run's train.log
    if _skip_finished(run_dir, prev):
        for h in files:
            h.close()
        return prev["status"]
    for h in files:
        logging.getLogger().addHandler(h)
    return None


def _save_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of the job (``.hydra/``), written only for a job that trains (hydra.output_subdir is null)."""
    if not HydraConfig.initialized():
        return  # run_job called without Hydra (tests, notebooks)
    from bnstudy.runs import atomic_write_text

    hc = HydraConfig.get()
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(hc.overrides.task))


def run_job(cfg: DictConfig) -> str:
    """One training job: skip if done, else train (resuming if interrupted). Returns the final status."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    rcfg = RunConfig.from_dict(plain)  # type: ignore[arg-type]
    run_dir = Path(rcfg.out_dir) / run_name(plain)  # type: ignore[arg-type]
    done = _skip(run_dir, rcfg)
    if done:
        return done
    validate(rcfg)  # before the lock and any file of ours: bad input leaves nothing behind
    if rcfg.train.threads == 0:
        rcfg.train.threads = _threads_for_launcher()
    lock = RunLock(run_dir)
    if not lock.acquire():
        for h in _run_log_files():  # the other process writes this train.log
            h.close()
        log.info("skipped %s: another process is training it", run_dir)
        return "locked"
    stop = StopRequest()
    try:
        with lock, _stop_on_job_signals(stop) as previous, _ctrl_c_stops(stop):
            # another process may have finished the run between the check above and the lock
            done = _skip(run_dir, rcfg)
            if done:
                return done
            _save_hydra_record(run_dir, cfg)
            from bnstudy.train import train_run, extra_hooks

            result = train_run(rcfg, run_dir, extra_hooks=extra_hooks(rcfg), sweep_id=os.environ.get(SWEEP_ENV), stop=stop)
    except Interrupted as e:
        if e.reason == CTRL_C:
            raise  # the user stops the whole command: _hydra_main says where and how to go on
        log.warning("interrupted %s at step %d (%s); checkpoint kept", run_dir, e.step, e.reason)
        _requeue(stop, previous)
        return "interrupted"
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


CTRL_C = "Ctrl-C"


@contextlib.contextmanager
def _ctrl_c_stops(stop: StopRequest):
    """While training, a first Ctrl-C asks the loop to stop after the current step (checkpointed there);
    a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # signals go to the main thread only; an ignored SIGINT stays ignored
        return

    def first(signum: int, _frame: Any) -> None:
        stop.set(CTRL_C, signum)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
def _stop_on_job_signals(stop: StopRequest):
    """While training inside a submitit job, the job's signals ask the loop to stop (yields the replaced handlers).

    submitit's own handlers act at once, wherever the signal lands: its USR2 handler
    requeues the job by raising out of the middle of a step, and it ignores SIGTERM
    until SLURM's SIGKILL. Here the loop first stops between two steps, checkpoints
    and records the run as interrupted; then :func:`_requeue` hands over to submitit.
    """
    previous = {}
    for signum, reason in _job_signals().items():
        previous[signum] = signal.signal(signum, lambda n, _frame, r=reason: stop.set(r, n))
    try:
        yield previous
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _requeue(stop: StopRequest, previous: dict) -> None:
    """After a stop by submitit's requeue signal, let submitit requeue the job (it exits the process)."""
    handler = previous.get(stop.signum)
    if stop.signum == signal.SIGTERM or not callable(handler):
        return  # scancel: the job ends; its result says interrupted
    try:
        handler(stop.signum, None)  # dumps the job for its next start, `scontrol requeue`, sys.exit
    except Exception as e:  # noqa: BLE001 - e.g. "timed-out too many times" (max_num_timeout)
        log.warning("not requeued (%s); submitting the sweep again resumes the run", e)


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
    full_error = _full_error()
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run_job(cfg)
    except Interrupted as e:
        print(f"interrupted at step {e.step}; run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted before training began; run the same command to start again", file=sys.stderr)
        sys.exit(130)
    except BnstudyError as e:
        _remove_if_empty(out)
        if full_error:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if _no_space(e) and not full_error:
            # every later job would fail the same way: stop the sweep; the run resumes once there is space
            print(f"error: no space left on the device holding {out}; free some and run the same command to resume", file=sys.stderr)
            sys.exit(1)
        if full_error or not multirun:
            if not full_error:
                print(f"error: run failed: {type(e).__name__}: {e} (traceback in the run folder's error.txt)", file=sys.stderr)
                sys.exit(1)
            raise
        log.error("failed: %s: %s (traceback in error.txt; the sweep goes on)", type(e).__name__, e)
        return "failed"


def _no_space(e: BaseException) -> bool:
    return any(isinstance(x, OSError) and x.errno == errno.ENOSPC for x in _chain(e))


def _chain(e: BaseException | None):
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _full_error() -> bool:
    """Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1); train() keeps the answer in FULL_ERROR_ENV."""
    return os.environ.get(FULL_ERROR_ENV, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def _field_type(key: str) -> Any:
    """The declared type of a dotted RunConfig key (``train.steps``), or None."""
    import dataclasses
    import typing

    cls: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(part)
    return cls


def _unknown_key(full_key: str) -> str | None:
    import dataclasses
    import difflib

    parent, _, leaf = full_key.rpartition(".")
    cls = _field_type(parent) if parent else RunConfig
    if not dataclasses.is_dataclass(cls):
        return None
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(leaf, valid, n=1)
    where = f"{parent}." if parent else ""
    hint = f"did you mean {where}{close[0]}? " if close else ""
    return f"unknown config key '{full_key}'; {hint}valid keys{' of ' + parent if parent else ''}: {', '.join(valid)}"


def _wrong_type(full_key: str, message: str) -> str:
    import re
    import typing

    key = re.sub(r"\[\d+\]$", "", full_key)
    t = _field_type(key)
    if key != full_key and typing.get_args(t):
        t = typing.get_args(t)[0]  # an element of a list
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    want = kinds.get(t, "a list of numbers" if typing.get_origin(t) in (tuple, list) else "of another type")
    got = re.match(r"Value '(.*?)' ", message)
    return f"{full_key} must be {want} (got {got.group(1) if got else 'something else'!r})"


def _command_line_error(e: BaseException) -> str | None:
    """One line for a bad command line (an unknown option or key, a value of the wrong type), else None."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    for x in _chain(e):
        if isinstance(x, BnstudyError):
            return str(x)
        if isinstance(x, MissingConfigException) and x.options is not None and x.missing_cfg_file:
            group, _, name = x.missing_cfg_file.rpartition("/")
            return f"unknown {group} '{name}'; choose one of: {', '.join(x.options)}"
        if isinstance(x, (ConfigAttributeError, ConfigKeyError)) and getattr(x, "full_key", None):
            return _unknown_key(x.full_key)
        if isinstance(x, ValidationError) and getattr(x, "full_key", None):
            return _wrong_type(x.full_key, str(x))
        if isinstance(x, OverrideParseException):
            return ": ".join(str(x).splitlines()[:2])
    return None


def train() -> None:
    """``bnstudy-train``: the Hydra app; exits non-zero if any run of a sweep failed.

    A bad command line (unknown option or key, a value of the wrong type) is one
    line on stderr and exit code 2: Hydra is told to raise its errors
    (HYDRA_FULL_ERROR=1) so they can be reported here in bnstudy's words.
    """
    SweepCallback.failed, SweepCallback.interrupted = [], []
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", FULL_ERROR_ENV)}
    user_full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ[FULL_ERROR_ENV] = "1" if user_full else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except Exception as e:
        if user_full:
            raise
        line = _command_line_error(e)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
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


if __name__ == "__main__":
    train()
