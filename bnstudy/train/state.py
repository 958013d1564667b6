"""What a run carries between steps (:class:`State`), the hooks that read it, and the ways a run stops early."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bnstudy import data as data_lib
from bnstudy.config import RunConfig
from bnstudy.runs import MetricsLog
from bnstudy.train.build import Batches


class Diverged(Exception):
    """Raised by the logging hook when the loss is non-finite or above ``train.diverge_loss``."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class StopRequest:
    """Set from a signal handler (a cluster's time limit, scancel); the loop stops at the next step boundary."""

    reason: str | None = None
    signum: int | None = None
    seen: bool = False  # the loop has stopped for it and is saving: a second Ctrl-C has nothing left to cut short

    def set(self, reason: str, signum: int | None = None) -> None:
        """Ask the loop to stop; the first request's reason is the one recorded."""
        if self.reason is None:
            self.reason, self.signum = reason, signum


class Interrupted(BaseException):
    """A :class:`StopRequest` seen between two steps; the run is checkpointed there, ``status: interrupted``.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` may turn it into a failure.
    """

    def __init__(self, reason: str, step: int):
        super().__init__(f"{reason} at step {step}")
        self.reason, self.step = reason, step


@dataclass
class State:
    """Everything the hooks may read or update."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    data: data_lib.Data
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    batches: Batches
    log: MetricsLog
    step: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)  # per-step losses since the last log point
    train_seconds: float = 0.0
    hook_seconds: float = 0.0
    hook_times: dict[str, float] = field(default_factory=dict)  # seconds per hook name (log, eval, probe, checkpoint)
    last_train_loss: float = float("nan")
    last_eval: dict[str, float] = field(default_factory=dict)
    best_acc: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)  # hook-owned state, checkpointed
    summarize: Callable[[str], dict[str, Any]] | None = None  # status -> summary.json content (not checkpointed)

    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])


@dataclass
class Hook:
    """Calls ``fn(state)`` every ``every`` steps and at the last step."""

    name: str
    every: int
    fn: Callable[[State], None]
