"""How many torch threads a run uses when ``train.threads=0``: decided here, once, from measurements.

Measured on a 2-core machine while other CPU-bound processes ran (README
"Performance"): torch's default of one thread per core made the MNIST MLP up
to 60x slower than one thread. Two things caused it, and the policy answers each:

- **OpenMP's busy-waiting.** torch's CPU pool (libgomp here) lets an idle
  thread spin at each barrier; when the other thread is descheduled, the
  spinner burns its time slice waiting. ``OMP_WAIT_POLICY=PASSIVE`` makes it
  sleep instead. libgomp reads the variable once, when torch is imported, so
  :func:`prepare_openmp` sets it (unless the user did) from
  ``bnstudy/__init__.py``, before any torch import of ours.
- **Steps too small to split.** The MLP's step (2.6e7 FLOPs) is a few dozen
  tiny operations: a second thread adds a synchronisation per operation and
  saves nothing. Below :data:`MIN_SPLIT_FLOPS` per step a run takes one thread.

Otherwise a run takes the cores actually available to the process (CPU
affinity and a cgroup CPU quota, not the machine's core count), divided
between the parallel jobs of a launcher (:func:`share_cores`).
``train.threads=N`` overrides all of it and is set exactly as given, so a
result trained with it reproduces at the same count (a count above the usable
cores is warned about once). An ``OMP_NUM_THREADS`` in the environment does not
set the count (joblib sets one in its workers too); the ``torch threads:`` line
names it as not used.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnstudy.config import RunConfig

log = logging.getLogger("bnstudy")

# Below this many FLOPs per training step (forward + backward) one thread is as fast as two:
# MNIST MLP 2.6e7 (one thread); the smallest conv net here, CNN width 8 on 28x28, 3.8e8 (split).
MIN_SPLIT_FLOPS = 1e8
WAIT_ENV = "OMP_WAIT_POLICY"
COUNT_ENV = "OMP_NUM_THREADS"

_wait_note = "OpenMP wait policy not prepared (bnstudy.threads.prepare_openmp not called before torch)"
_jobs, _cpus = 1, None  # set by the launcher (share_cores): parallel jobs on this machine, cpus per job
_current: Decision | None = None
_warned: set[int] = set()  # thread counts already warned about (above the usable cores)


@dataclass(frozen=True)
class Decision:
    """The thread count of a run and why (the line logged at start and kept in provenance)."""

    threads: int
    why: str


def prepare_openmp() -> str:
    """Ask OpenMP to sleep, not spin, while waiting (unless the user chose); a no-op once torch is loaded."""
    global _wait_note
    if WAIT_ENV in os.environ:
        _wait_note = f"{WAIT_ENV}={os.environ[WAIT_ENV]} (set by the user)"
    elif "torch" in sys.modules:
        # libgomp read its environment when torch was imported: too late to change it
        _wait_note = "OpenMP waits actively (torch was imported before bnstudy)"
    else:
        os.environ[WAIT_ENV] = "PASSIVE"  # inherited by sweep workers and subprocesses too
        _wait_note = f"{WAIT_ENV}=PASSIVE"
    return _wait_note


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``), None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cores() -> tuple[int, str]:
    """Cores this process may use (affinity, then cgroup quota) and where that number comes from."""
    try:
        cores, src = len(os.sched_getaffinity(0)), "CPU affinity"
    except (AttributeError, OSError):  # not on Linux
        cores, src = os.cpu_count() or 1, "os.cpu_count"
    quota = cgroup_cpus()
    if quota is not None and math.ceil(quota) < cores:
        return max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g} of {cores} cores"
    return cores, src


def share_cores(jobs: int = 1, cpus: int | None = None) -> None:
    """Tell the policy that ``jobs`` runs share this machine's cores (joblib), or that each has ``cpus`` (SLURM)."""
    global _jobs, _cpus
    _jobs, _cpus = max(1, int(jobs)), (int(cpus) if cpus else None)


def decide(cfg: RunConfig) -> Decision:
    """The thread count for ``cfg``: ``train.threads`` when set, else the policy of this module's docstring."""
    # torch's count is set here either way: an OMP_NUM_THREADS in the environment (the user's, or the one joblib
    # gives its workers) does not decide it, and the line says so
    env = os.environ.get(COUNT_ENV)
    if cfg.train.threads > 0:
        over = f" (over {COUNT_ENV}={env})" if env else ""
        return Decision(cfg.train.threads, f"train.threads={cfg.train.threads}{over}; {_wait_note}")
    unused = f"; {COUNT_ENV}={env} is not used: train.threads=N sets the count" if env else ""
    cores, src = available_cores()
    where = f"{cores} cores ({src})"
    if _cpus is not None and _cpus < cores:
        cores, where = _cpus, f"{_cpus} cpus per task of the launcher"
    if _jobs > 1:
        cores, where = max(1, cores // _jobs), f"{max(1, cores // _jobs)} per job: {where} shared by {_jobs} parallel jobs"
    flops = _flops(cfg)
    if flops is None:
        size = "FLOPs per step not counted"
    elif flops < MIN_SPLIT_FLOPS:
        size = f"{cfg.model.name} step {flops:.2g} FLOPs < {MIN_SPLIT_FLOPS:.0e}: too small to split"
        cores = 1
    else:
        size = f"{cfg.model.name} step {flops:.2g} FLOPs"
    return Decision(cores, f"{size}; {where}; {_wait_note}{unused}")


def _flops(cfg: RunConfig) -> float | None:
    from bnstudy import data as data_lib
    from bnstudy.flops import step_flops

    try:
        s = data_lib.spec(cfg.data)
        return step_flops(cfg.model, cfg.norm, s.shape, s.num_classes, cfg.train.batch_size)
    except Exception as e:  # noqa: BLE001 - a model the counter cannot trace keeps the core count
        log.debug("FLOP count failed (%s): thread count from cores alone", e)
        return None


def apply(cfg: RunConfig) -> Decision:
    """Decide, set ``torch.set_num_threads`` and log ``torch threads: N (why)``; :func:`current` returns it."""
    import torch

    global _current
    d = decide(cfg)
    cores, src = available_cores()
    if d.threads > cores and d.threads not in _warned:
        _warned.add(d.threads)  # once per process: a sweep's jobs would repeat it
        log.warning("torch threads: %d is more than the %d usable cores (%s); the threads will wait for each other", d.threads, cores, src)
    torch.set_num_threads(d.threads)
    _current = d
    log.info("torch threads: %d (%s)", d.threads, d.why)
    return d


def current() -> Decision | None:
    """The last decision :func:`apply` made in this process, None before any."""
    return _current


def why() -> str:
    """Why this process has its thread count (for provenance): the last decision, or torch's default."""
    return _current.why if _current else "torch's default (no bnstudy build step ran)"
