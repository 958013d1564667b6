"""Checks of a run's values that torch would otherwise reject mid-run, and of where its folder goes.

Each failure is a :class:`ConfigError` naming the key to change, raised before
any data is loaded or any folder is written (``validate`` in the training loop
calls :func:`check_values`; the run-name resolver calls :func:`check_out_dir`).
"""
from __future__ import annotations

import os
from pathlib import Path

from bnstudy import trackers
from bnstudy.config import RunConfig
from bnstudy.errors import CheckpointError, ConfigError

PROGRESS = ("auto", "on", "off")


def check_values(cfg: RunConfig) -> None:
    """Reject values that no run can train with, naming the key and what it must be."""
    if cfg.plugins:  # before anything asks the registry about the run's variant
        from bnstudy.plugins import load

        load(cfg.plugins)
    t, o, d, p = cfg.train, cfg.optim, cfg.data, cfg.probe
    if t.progress not in PROGRESS:
        raise ConfigError(f"train.progress must be one of {', '.join(PROGRESS)} (got {t.progress!r})")
    if t.threads < 0:
        raise ConfigError(f"train.threads must be 0 (bnstudy picks the count) or a positive count (got {t.threads})")
    if o.name in ("adam", "adamw") and (len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas)):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9,0.999] (got {list(o.betas)})")
    if p.batch_size < 1:
        raise ConfigError(f"probe.batch_size must be >= 1 (got {p.batch_size})")
    if d.name == "synthetic":  # the other datasets fix these sizes themselves
        for key, value, least in (("train_size", d.train_size, 1), ("test_size", d.test_size, 1),
                                  ("num_classes", d.num_classes, 2), ("channels", d.channels, 1), ("size", d.size, 1)):
            if value < least:
                raise ConfigError(f"data.{key} must be >= {least} for data=synthetic (got {value})")
    else:
        _check_real_data(cfg)
    _check_inert(cfg)
    trackers.require(cfg)  # a tracker's missing package, before any folder is written
    if t.batch_size == 1:
        _check_single_example_batches(cfg)


# The synthetic set's shape and sizes, fixed by every other dataset: a value other than the default would name a
# run that trains exactly as the default does, so it is refused (data.train_size acts on every dataset: a subset).
SYNTHETIC_ONLY = ("channels", "size", "test_size", "num_classes")


def _check_real_data(cfg: RunConfig) -> None:
    from bnstudy.config import DataConfig
    from bnstudy.data import SPECS, WHOLE

    d, default = cfg.data, DataConfig()
    for key in SYNTHETIC_ONLY:
        if getattr(d, key) != getattr(default, key):
            raise ConfigError(f"data.{key} acts only on data=synthetic; {d.name} fixes its own; drop data.{key}={getattr(d, key)}")
    full = SPECS[d.name].train_size - d.val_size if d.name in SPECS else None
    if d.train_size != WHOLE and full is not None and not 1 <= d.train_size <= full:
        raise ConfigError(
            f"data.train_size={d.train_size} must be from 1 to the {full} training examples {d.name} has"
            f"{' after data.val_size' if d.val_size else ''} (a seeded subset of them; {WHOLE}, the default: all of them)"
        )


def _check_inert(cfg: RunConfig) -> None:
    """Keys that are part of a run's name but cannot act on its model: refused rather than naming a duplicate run."""
    m = cfg.model
    if m.pool != "max" and m.name not in ("cnn", "vgg"):
        raise ConfigError(f"model.pool acts only on model=cnn and model=vgg; drop model.pool={m.pool} for model={m.name}")
    if m.zero_init_residual and m.name != "resnet":
        raise ConfigError(f"model.zero_init_residual acts only on model=resnet; drop it for model={m.name}")


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


# ---------------------------------------------------------------- checkpoints belong to one run

_FIX = "delete it (or run with force=true) to train this run from the start"


def checkpoint_identity(cfg: RunConfig) -> dict[str, object]:
    """What a checkpoint records of the run that wrote it: the hash of its config's identity and its seed."""
    from bnstudy.config import config_hash

    return {"config_hash": config_hash(cfg.to_dict()), "seed": cfg.seed}


def check_checkpoint_identity(ckpt: dict, cfg: RunConfig, run_dir: Path, path: Path) -> None:
    """Refuse a checkpoint written by another run (another config or seed), before anything is restored.

    A checkpoint from before checkpoints recorded their run is accepted only where the
    folder's own summary.json, written by the run that saved it, names this run's factors.
    """
    from bnstudy.config import factors
    from bnstudy.runs import read_summary

    want = checkpoint_identity(cfg)
    got = ckpt.get("identity") if isinstance(ckpt, dict) else None
    if got is None:
        s = read_summary(run_dir)
        recorded = s.get("factors") if isinstance(s, dict) else None
        mine = factors(cfg)
        if isinstance(recorded, dict) and "seed" in recorded and all(recorded[k] == v for k, v in mine.items() if k in recorded):
            return
        raise CheckpointError(
            f"cannot resume from {path}: it was written before checkpoints recorded their run (config hash and seed), "
            f"and no summary.json of this run vouches for it; {_FIX}"
        )
    if got != want:
        raise CheckpointError(
            f"cannot resume from {path}: it belongs to another run (config {got.get('config_hash')}, seed {got.get('seed')}; "
            f"this run is config {want['config_hash']}, seed {want['seed']}); {_FIX}"
        )


def short_reason(e: BaseException | str, limit: int = 200) -> str:
    """An exception's message as one line: its first sentence, or cut at a word (marked …) past ``limit``."""
    text = " ".join(str(e).split()) or type(e).__name__
    end = text.find(". ")
    if 0 < end < limit:
        return text[: end + 1]
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
