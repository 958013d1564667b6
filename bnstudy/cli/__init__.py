"""``bnstudy-train``: the Hydra app (:mod:`bnstudy.cli.app`) and the parts it is built from.

- :mod:`~bnstudy.cli.resolvers`: the config resolvers and the schema Hydra composes against;
- :mod:`~bnstudy.cli.job`: one job: skip if finished, lock, train;
- :mod:`~bnstudy.cli.skip`: when a finished run is skipped, and the run's ``train.log`` handler;
- :mod:`~bnstudy.cli.signals`: Ctrl-C and a cluster job's signals as stop requests;
- :mod:`~bnstudy.cli.sweep`: the multirun callback and threads per parallel job;
- :mod:`~bnstudy.cli.hydra_errors`: Hydra's errors in bnstudy's words.

``conf/`` names :class:`SweepCallback` and :class:`RunLogFile` by their paths here. The names are imported on
first use, and torch only by a job that trains: a command that skips finished runs or rejects its input starts in
under a second.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bnstudy.cli import resolvers  # noqa: F401  (registers the resolvers and the schema before any compose)

if TYPE_CHECKING:
    from bnstudy.cli.app import CONF_DIR, train
    from bnstudy.cli.job import run_job
    from bnstudy.cli.skip import RunLogFile
    from bnstudy.cli.sweep import SweepCallback

__all__ = ["CONF_DIR", "RunLogFile", "SweepCallback", "run_job", "train"]
_WHERE = {"CONF_DIR": "app", "train": "app", "run_job": "job", "RunLogFile": "skip", "SweepCallback": "sweep"}


def __getattr__(name: str) -> Any:
    # imported on first use: a command that only skips finished runs or rejects its input never loads torch
    if name in _WHERE:
        return getattr(importlib.import_module(f"bnstudy.cli.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bnstudy.cli' has no attribute {name!r}")
