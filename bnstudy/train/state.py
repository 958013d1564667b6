"""What a run carries between steps (:class:`State`) and the hooks that read it (the ways a run stops early are in
:mod:`bnstudy.train.stops`)."""
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
