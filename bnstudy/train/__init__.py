"""Training: :func:`train_run` (:mod:`bnstudy.train.loop`) and the parts it is built from.

The names below are imported on first use, so ``python -m bnstudy.train`` starts
without torch and can hold a Ctrl-C during the heavy imports (:mod:`bnstudy.startup`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnstudy.train.build import resolve_device, validate
    from bnstudy.train.hooks import evaluate
    from bnstudy.train.loop import config_hooks, train_run
    from bnstudy.train.state import Hook, State
    from bnstudy.train.stops import Diverged, Interrupted, StopRequest

__all__ = [
    "Diverged", "Hook", "Interrupted", "State", "StopRequest", "config_hooks", "evaluate", "resolve_device", "train_run", "validate",
]
_WHERE = {
    "resolve_device": "build", "validate": "build", "evaluate": "hooks", "config_hooks": "loop", "train_run": "loop",
    "Diverged": "stops", "Hook": "state", "Interrupted": "stops", "State": "state", "StopRequest": "stops",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"bnstudy.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bnstudy.train' has no attribute {name!r}")
