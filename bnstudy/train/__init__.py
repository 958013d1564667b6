"""Training: :func:`train_run` (:mod:`bnstudy.train.loop`) and the parts it is built from."""
from __future__ import annotations

from bnstudy.train.build import resolve_device, validate
from bnstudy.train.hooks import evaluate
from bnstudy.train.loop import config_hooks, train_run
from bnstudy.train.state import Diverged, Hook, Interrupted, State, StopRequest

__all__ = [
    "Diverged", "Hook", "Interrupted", "State", "StopRequest", "config_hooks", "evaluate", "resolve_device", "train_run", "validate",
]
