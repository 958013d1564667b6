"""Training: :func:`train_run` (:mod:`bnstudy.train.loop`) and the parts it is built from.

The names below are imported on first use, so ``python -m bnstudy.train`` starts
without torch and can hold a Ctrl-C during the heavy imports (:mod:`bnstudy.startup`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bnstudy.config import RunConfig

if TYPE_CHECKING:
    from bnstudy.train.build import resolve_device, validate
    from bnstudy.train.hooks import evaluate
    from bnstudy.train.loop import train_run
    from bnstudy.train.state import Diverged, Hook, Interrupted, State, StopRequest

__all__ = [
    "Diverged", "Hook", "Interrupted", "State", "StopRequest", "evaluate", "extra_hooks", "resolve_device", "train_run", "validate",
]
_WHERE = {
    "resolve_device": "build", "validate": "build", "evaluate": "hooks", "train_run": "loop",
    "Diverged": "state", "Hook": "state", "Interrupted": "state", "State": "state", "StopRequest": "state",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"bnstudy.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bnstudy.train' has no attribute {name!r}")


def extra_hooks(cfg: RunConfig) -> list[Hook]:
    """Optional hooks (probes) selected by the config; none when they are off."""
    from bnstudy.train.state import Hook

    hooks: list[Hook] = []
    if cfg.probe.every > 0:
        from bnstudy.train.probes import probe_hook

        hooks.append(Hook("probe", cfg.probe.every, probe_hook))
    return hooks
