"""Which device a job trains on, and the wall-clock budget a job stops at.

Several jobs on the GPUs of one machine (``hydra/launcher=joblib_gpu``, or any
launcher running jobs side by side): with ``device=auto`` or ``device=cuda`` a
job of a multirun trains on ``cuda:{job number % number of GPUs}``, so on one
GPU all concurrent jobs share it and on several they spread round-robin. An
explicit ``cuda:N`` is kept as given. The device is not part of a run's
identity (``bnstudy.config.NON_IDENTITY``), so where a run trained never
changes its folder name.

A job also stops at ``$BNSTUDY_DEADLINE`` (Unix time) if that is set: the run
is checkpointed after its current step and recorded as interrupted, like a
cluster's time limit, so that a fixed-length machine lease loses no work.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from bnstudy.errors import ConfigError

if TYPE_CHECKING:
    from bnstudy.train.stops import StopRequest

log = logging.getLogger("bnstudy")

DEADLINE_ENV = "BNSTUDY_DEADLINE"
_CUDA_N = re.compile(r"cuda:(\d+)")


def job_number() -> int | None:
    """This job's number in a Hydra multirun (0, 1, ...), or None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return int(hc.job.num) if hc.mode == RunMode.MULTIRUN else None


def assign(name: str, job: int | None, n_gpus: int) -> str:
    """The device string a job uses: ``auto``/``cuda`` -> ``cuda:{job % n_gpus}`` in a multirun with GPUs."""
    if name == "auto":
        name = "cuda" if n_gpus > 0 else "cpu"
    if name == "cuda" and n_gpus > 0:
        return f"cuda:{(job or 0) % n_gpus}"
    return name


def resolve(name: str) -> torch.device:
    """This job's device for the config value ``name`` (auto, cpu, cuda, cuda:N); a device not present is a config error."""
    m = _CUDA_N.fullmatch(name)
    if name not in ("auto", "cpu", "cuda") and not m:
        raise ConfigError(f"unknown device '{name}'; choose auto, cpu, cuda or cuda:N")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (name == "cuda" or m) and n_gpus == 0:
        raise ConfigError(f"device={name} but no CUDA device is available; use device=auto or device=cpu")
    if m and int(m.group(1)) >= n_gpus:
        raise ConfigError(f"device={name} but this machine has {n_gpus} CUDA device(s), cuda:0 to cuda:{n_gpus - 1}")
    return torch.device(assign(name, job_number(), n_gpus))


def deadline() -> float | None:
    """``$BNSTUDY_DEADLINE`` as a Unix time, or None when unset; a malformed value is a config error."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{DEADLINE_ENV}={raw!r} is not a Unix time in seconds; unset it or give e.g. $(( $(date +%s) + 540 ))") from None


@contextlib.contextmanager
def deadline_stops(stop: StopRequest) -> Iterator[None]:
    """While a job trains, ask ``stop`` to stop at ``$BNSTUDY_DEADLINE`` (at once if it has passed)."""
    at = deadline()
    if at is None:
        yield
        return
    reason = f"the time budget ended ({DEADLINE_ENV})"
    timer = threading.Timer(max(0.0, at - time.time()), stop.set, args=(reason,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def out_of_time() -> bool:
    """Whether ``$BNSTUDY_DEADLINE`` has passed: a job not yet started then leaves its run untouched."""
    at = deadline()
    return at is not None and time.time() >= at
