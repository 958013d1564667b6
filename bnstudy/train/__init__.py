"""Training: :func:`train_run` (:mod:`bnstudy.train.loop`) and the parts it is built from."""
from __future__ import annotations

from bnstudy.config import RunConfig
from bnstudy.train.build import resolve_device, validate
from bnstudy.train.hooks import evaluate
from bnstudy.train.loop import train_run
from bnstudy.train.state import Diverged, Hook, Interrupted, State, StopRequest

__all__ = [
    "Diverged", "Hook", "Interrupted", "State", "StopRequest", "evaluate", "extra_hooks", "resolve_device", "train_run", "validate",
]


def extra_hooks(cfg: RunConfig) -> list[Hook]:
    """Optional hooks (probes) selected by the config; none when they are off."""
    hooks: list[Hook] = []
    if cfg.probe.every > 0:
        from bnstudy.train.probes import probe_hook

        hooks.append(Hook("probe", cfg.probe.every, probe_hook))
    return hooks
