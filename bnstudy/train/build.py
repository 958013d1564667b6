"""Validate a config and build what a run trains: device, data, model, optimizer, schedule, batch order."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from bnstudy import data as data_lib
from bnstudy import threads
from bnstudy.checks import check_values
from bnstudy.config import RunConfig
from bnstudy.errors import ConfigError
from bnstudy.models import MODELS, POOLS, activation, build_model, check_resnet_options, count_params
from bnstudy.models.init import check as check_init
from bnstudy.norm import variant
from bnstudy.train import precision


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, ``cuda:N`` one GPU; a multirun job's GPU by its job number (bnstudy/devices.py)."""
    from bnstudy.devices import resolve

    return resolve(name)


def validate(cfg: RunConfig) -> None:
    """Reject impossible values before any data is loaded or folder written."""
    check_values(cfg)  # first: a bad synthetic size is blamed on its own key, not on data.val_size
    t, o = cfg.train, cfg.optim
    checks = [
        (o.lr > 0, f"optim.lr must be > 0 (got {o.lr})"),
        (t.steps > 0, f"train.steps must be > 0 (got {t.steps})"),
        (t.batch_size > 0, f"train.batch_size must be > 0 (got {t.batch_size})"),
        (t.eval_every >= 0, f"train.eval_every must be >= 0 (got {t.eval_every}; 0 turns evaluation off)"),
        (t.log_every > 0, f"train.log_every must be > 0 (got {t.log_every})"),
        (t.checkpoint_every > 0, f"train.checkpoint_every must be > 0 (got {t.checkpoint_every})"),
        (t.eval_batch_size > 0, f"train.eval_batch_size must be > 0 (got {t.eval_batch_size})"),
        (cfg.model.depth >= 1, f"model.depth must be >= 1 (got {cfg.model.depth})"),
        (cfg.model.width >= 1, f"model.width must be >= 1 (got {cfg.model.width})"),
        (o.momentum >= 0, f"optim.momentum must be >= 0 (got {o.momentum})"),
        (o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})"),
        (o.norm_lr_scale > 0 and math.isfinite(o.norm_lr_scale), f"optim.norm_lr_scale must be a finite number > 0 (got {o.norm_lr_scale})"),
        (o.norm_decay or o.weight_decay > 0, "optim.norm_decay=false changes nothing with optim.weight_decay=0; drop it or set a weight decay"),
        (o.name in OPTIMIZERS, f"unknown optim '{o.name}'; choose one of: {', '.join(OPTIMIZERS)}"),
        (cfg.sched.name in ("constant", "step", "cosine"), f"unknown sched '{cfg.sched.name}'; choose constant, step or cosine"),
        (cfg.probe.every >= 0, f"probe.every must be >= 0 (got {cfg.probe.every})"),
        (t.precise_bn >= 0, f"train.precise_bn must be >= 0 (got {t.precise_bn}; 0 turns it off)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    activation(cfg.model.activation)
    check_init(cfg.model.init)
    check_resnet_options(cfg)
    if cfg.model.pool not in POOLS:
        raise ConfigError(f"unknown model.pool '{cfg.model.pool}'; choose one of: {', '.join(POOLS)}")
    variant(cfg.norm.name)
    if cfg.model.name not in MODELS:
        raise ConfigError(f"unknown model '{cfg.model.name}'; choose one of: {', '.join(MODELS)}")
    s = data_lib.spec(cfg.data)
    if not 0 <= cfg.data.val_size < s.train_size:
        raise ConfigError(
            f"data.val_size={cfg.data.val_size} must be >= 0 and below the {s.train_size} training examples of {cfg.data.name}"
            " (it holds that many out for validation); lower it"
        )
    n_train = s.train_size - cfg.data.val_size
    if t.batch_size > n_train:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is larger than the {n_train} training examples of {cfg.data.name}; lower it"
        )
    precision.check(cfg, resolve_device(cfg.device))  # bf16 autocast only where the device computes bf16 itself


# ---------------------------------------------------------------- optimizers and schedules


def _sgd(params, o) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay, foreach=True
    )


def _adam(params, o) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=True)


def _adamw(params, o) -> torch.optim.Optimizer:
    # decoupled weight decay (Loshchilov & Hutter 2019): w -= lr * weight_decay * w, outside the adaptive step
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=True)


OPTIMIZERS: dict[str, Callable] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def is_weight(module: nn.Module, name: str) -> bool:
    """Whether ``module``'s parameter ``name`` is a conv or linear weight (every other parameter is a norm layer's,
    a bias or a gain, whatever its shape: ``affine`` keeps γ and β as (1, C, 1, 1))."""
    return name == "weight" and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(conv and linear weights, every other parameter), each in ``model.parameters()`` order, selected by role."""
    weights, others = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (weights if is_weight(module, name) else others).append(p)
    return weights, others


def param_groups(model: nn.Module, o) -> list[dict[str, Any]] | Any:
    """What the optimizer steps: all parameters alike under ``optim.norm_decay=true, optim.norm_lr_scale=1``
    (the committed runs' treatment), else two groups: conv and linear weights at ``lr`` with weight decay, and
    the rest (γ, β, biases, gains) at ``lr * norm_lr_scale``, decayed only with ``norm_decay``. A schedule
    scales both groups' rates alike (LambdaLR multiplies each group's own initial rate)."""
    if o.norm_decay and o.norm_lr_scale == 1.0:
        return model.parameters()
    weights, others = split_params(model)
    return [
        {"params": weights},
        {"params": others, "lr": o.lr * o.norm_lr_scale, "weight_decay": o.weight_decay if o.norm_decay else 0.0},
    ]


def lr_factor(cfg: RunConfig) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    s, total = cfg.sched, cfg.train.steps
    milestones = [int(f * total) for f in s.milestones]

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / s.warmup) if s.warmup > 0 else 1.0
        if s.name == "step":
            return warm * s.gamma ** sum(step >= m for m in milestones)
        if s.name == "cosine":
            t = min(1.0, max(0.0, (step - s.warmup) / max(1, total - s.warmup)))
            return warm * 0.5 * (1 + math.cos(math.pi * t))
        return warm

    return factor


# ---------------------------------------------------------------- batches


class Batches:
    """Epochs of ``randperm`` mini-batch indices from a dedicated generator (its state is checkpointed)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.bs, self.device = n, batch_size, device
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = n  # forces a fresh permutation on the first call

    def next(self) -> torch.Tensor:
        """Indices of the next batch; the incomplete tail of an epoch is dropped."""
        if self.pos + self.bs > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation and position."""
        return {"gen": self.gen.get_state(), "perm": self.perm.cpu(), "pos": self.pos}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.gen.set_state(sd["gen"])
        self.perm = sd["perm"].to(self.device)
        self.pos = sd["pos"]


# ---------------------------------------------------------------- the build step


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python's RNG."""
    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Built:
    """What :func:`build` returns: the pieces a run trains, before any run file exists."""

    device: torch.device
    data: data_lib.Data
    model: nn.Module
    params: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    batches: Batches


def build(cfg: RunConfig) -> Built:
    """Device, data, model, optimizer, schedule and batch order of a validated ``cfg``, seeded by ``cfg.seed``.

    The order of the calls below is the order of the RNG draws: changing it changes every number.
    """
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    threads.apply(cfg)  # train.threads, or the default policy; before the data's first torch op
    data = data_lib.load(cfg.data, device)  # before any run file is written: bad data leaves nothing behind

    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.norm, data.shape, data.num_classes).to(device)
    if precision.channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    params = count_params(model)
    optimizer = OPTIMIZERS[cfg.optim.name](param_groups(model, cfg.optim), cfg.optim)
    scheduler = None if cfg.sched.name == "constant" and cfg.sched.warmup == 0 else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    batches = Batches(data.train_x.shape[0], cfg.train.batch_size, cfg.seed, device)
    return Built(device, data, model, params, optimizer, scheduler, batches)
