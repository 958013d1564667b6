"""One training job of ``bnstudy-train``: skip it if finished, else lock the run folder and train (resuming)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bnstudy import threads, trackers
from bnstudy.cli.signals import CTRL_C, TERM, ctrl_c_stops, requeue, stop_on_job_signals, term_stops
from bnstudy.cli.skip import remove_if_empty, run_log_files, skip
from bnstudy.cli.sweep import SWEEP_ENV, launcher_share
from bnstudy.checks import check_values
from bnstudy.config import DataConfig, RunConfig, run_name
from bnstudy.errors import ConfigError
from bnstudy.runs import RunLock, atomic_write_text, read_summary
from bnstudy.sigint import sigint_held
from bnstudy.train.stops import Interrupted, StopRequest

log = logging.getLogger("bnstudy")


def _save_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of the job (``.hydra/``), written only for a job that trains (hydra.output_subdir is null)."""
    if not HydraConfig.initialized():
        return  # run_job called without Hydra (tests, notebooks)
    hc = HydraConfig.get()
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(hc.overrides.task))


def _drop_earlier_error(run_dir: Path) -> None:
    """error.txt is the traceback of an attempt that failed: once a later one (a resume) has recorded another status,
    it describes nothing in the folder and goes (a packed run would keep it)."""
    s = read_summary(run_dir)
    if s is not None and s.get("status") != "failed":
        (run_dir / "error.txt").unlink(missing_ok=True)


def _refuse_whole_split_by_hand(rcfg: RunConfig) -> None:
    """``data.train_size=2048`` typed for a dataset other than synthetic: that value keeps the whole split (runs recorded
    before the key made a subset there hold it), so asking for it by hand is refused rather than silently ignored."""
    whole = DataConfig().train_size  # bnstudy.data.WHOLE, without loading torch before a skip

    if not HydraConfig.initialized() or rcfg.data.name == "synthetic" or rcfg.data.train_size != whole:
        return
    if any(o.lstrip("+~").split("=", 1)[0] == "data.train_size" for o in HydraConfig.get().overrides.task):
        raise ConfigError(
            f"data.train_size={whole} keeps all of {rcfg.data.name}'s training split (the value of every run recorded before "
            f"it made a subset); for a subset of about that size use {whole - 1} or {whole + 1}, for the whole split drop the key"
        )


def run_job(cfg: DictConfig, extra_hooks: list | None = None) -> str:
    """One training job: skip if done, else train (resuming if interrupted). Returns the final status.

    ``extra_hooks`` run after the config's own (``bnstudy-search`` adds its pruner); an
    :class:`Interrupted` raised by one of them is not a signal's stop: it goes to the caller.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    rcfg = RunConfig.from_dict(plain)  # type: ignore[arg-type]
    _refuse_whole_split_by_hand(rcfg)
    check_values(rcfg)  # bad input is an error even where the run it names is finished and would be skipped
    run_dir = Path(rcfg.out_dir) / run_name(plain)  # type: ignore[arg-type]
    done = skip(run_dir, rcfg)
    if done:
        return done
    # torch is loaded here, by a job that trains, not by one that skips (a re-run of a finished study); a Ctrl-C
    # meanwhile waits for the import to finish (inside torch's C++ start-up it could abort the interpreter)
    with sigint_held():
        from bnstudy import devices
        from bnstudy.train import train_run, validate

    validate(rcfg)  # before the lock and any file of ours: bad input leaves nothing behind
    threads.share_cores(*launcher_share())  # the default thread policy divides the cores between parallel jobs
    if devices.out_of_time():  # a lease's budget ended before this job began: leave its run for the next sweep
        for h in run_log_files():
            h.close()
        log.info("not started %s: the time budget ended (%s)", run_dir, devices.DEADLINE_ENV)
        remove_if_empty(run_dir)
        return "not started"
    lock = RunLock(run_dir)
    if not lock.acquire():
        for h in run_log_files():  # the other process writes this train.log
            h.close()
        log.info("skipped %s: another process is training it", run_dir)
        return "locked"
    stop = StopRequest()
    try:
        with lock, stop_on_job_signals(stop) as previous, ctrl_c_stops(stop), term_stops(stop), devices.deadline_stops(stop):
            # another process may have finished the run between the check above and the lock
            done = skip(run_dir, rcfg)
            if done:
                return done
            _save_hydra_record(run_dir, cfg)
            with trackers.after_training(rcfg, run_dir):  # MLflow and TensorBoard's HParams, from the folder
                result = train_run(rcfg, run_dir, extra_hooks=extra_hooks, sweep_id=os.environ.get(SWEEP_ENV), stop=stop)
    except Interrupted as e:
        _drop_earlier_error(run_dir)
        if e.reason in (CTRL_C, TERM) or e.reason != stop.reason:
            raise  # the user stops the whole command (the app says where and how to go on), or a hook did
        log.warning("interrupted %s at step %d (%s); checkpoint kept", run_dir, e.step, e.reason)
        requeue(stop, previous)
        return "interrupted"
    _drop_earlier_error(run_dir)
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
