"""Training: the loop (:mod:`bnstudy.train.loop`) and the hooks a config switches on."""
from __future__ import annotations

from bnstudy.config import RunConfig
from bnstudy.train.loop import Hook, State, evaluate, resolve_device, train_run, validate

__all__ = ["Hook", "State", "evaluate", "extra_hooks", "resolve_device", "train_run", "validate"]


def extra_hooks(cfg: RunConfig) -> list[Hook]:
    """Optional hooks (probes) selected by the config; none when they are off."""
    hooks: list[Hook] = []
    if cfg.probe.every > 0:
        from bnstudy.probes import probe_hook

        hooks.append(Hook("probe", cfg.probe.every, probe_hook))
    return hooks
