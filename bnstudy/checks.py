"""Checks of a run's values that torch would otherwise reject mid-run, and of where its folder goes.

Each failure is a :class:`ConfigError` naming the key to change, raised before
any data is loaded or any folder is written (``validate`` in the training loop
calls :func:`check_values`; the run-name resolver calls :func:`check_out_dir`).
"""
from __future__ import annotations

import os
from pathlib import Path

from bnstudy.config import RunConfig
from bnstudy.errors import ConfigError

PROGRESS = ("auto", "on", "off")


def check_values(cfg: RunConfig) -> None:
    """Reject values that no run can train with, naming the key and what it must be."""
    t, o, d, p = cfg.train, cfg.optim, cfg.data, cfg.probe
    if t.progress not in PROGRESS:
        raise ConfigError(f"train.progress must be one of {', '.join(PROGRESS)} (got {t.progress!r})")
    if o.name == "adam" and (len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas)):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9,0.999] (got {list(o.betas)})")
    if p.batch_size < 1:
        raise ConfigError(f"probe.batch_size must be >= 1 (got {p.batch_size})")
    if d.name == "synthetic":  # the other datasets fix these sizes themselves
        for key, value, least in (("train_size", d.train_size, 1), ("test_size", d.test_size, 1),
                                  ("num_classes", d.num_classes, 2), ("channels", d.channels, 1), ("size", d.size, 1)):
            if value < least:
                raise ConfigError(f"data.{key} must be >= {least} for data=synthetic (got {value})")
    if t.batch_size == 1:
        _check_single_example_batches(cfg)


def _check_single_example_batches(cfg: RunConfig) -> None:
    # Batch statistics over one example fail inside torch only where a norm sees one value per
    # channel (an MLP's features, a conv net's 1x1 maps); one training step on CPU tells exactly.
    import torch

    from bnstudy.data import spec
    from bnstudy.models import build_model

    s = spec(cfg.data)
    num_classes = cfg.data.num_classes if cfg.data.name == "synthetic" else s.num_classes
    shape = (cfg.data.channels, cfg.data.size, cfg.data.size) if cfg.data.name == "synthetic" else s.shape
    model = build_model(cfg.model, cfg.norm, shape, num_classes).train()
    try:
        model(torch.zeros(1, *shape))
    except ValueError as e:
        if "more than 1 value per channel" not in str(e):
            raise
        raise ConfigError(
            f"train.batch_size=1 cannot train norm={cfg.norm.name} with model={cfg.model.name}: its batch statistics need "
            "more than one value per channel; use train.batch_size=2 or more, or a norm without batch statistics"
        ) from None


def check_out_dir(out_dir: str) -> None:
    """``out_dir`` must name a folder this process can create run folders in."""
    if not str(out_dir).strip():
        raise ConfigError("out_dir is empty; give the folder for run folders, e.g. out_dir=runs")
    path = Path(out_dir)
    for p in (path, *path.parents):  # the nearest existing ancestor decides
        if p.exists():
            break
    if not p.is_dir():
        raise ConfigError(f"out_dir={out_dir}: {p} is a file, not a folder; pick another out_dir")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"out_dir={out_dir}: {p} is not writable; pick another out_dir")
