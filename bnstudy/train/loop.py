"""The training loop: one function you can read top to bottom.

The loop itself only steps the optimizer. Logging, divergence checks,
evaluation, probes and checkpoints are hooks that fire every N steps; the loop
computes when the next one is due, so steps between hooks do no extra work and
no host sync (losses stay on the device until a log point reads them).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnstudy import data as data_lib
from bnstudy.config import RunConfig, factors
from bnstudy.errors import CheckpointError, ConfigError
from bnstudy.models import build_model, count_params
from bnstudy.provenance import provenance
from bnstudy.runs import MetricsLog, read_summary, write_json

CHECKPOINT = "checkpoint.pt"
log = logging.getLogger("bnstudy")


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


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{name}'; choose auto, cpu or cuda")
    return torch.device(name)


def validate(cfg: RunConfig) -> None:
    """Reject impossible values before any data is loaded or folder written."""
    from bnstudy.models import POOLS, activation
    from bnstudy.models.init import check as check_init
    from bnstudy.norm import variant

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
    if cfg.model.pool not in POOLS:
        raise ConfigError(f"unknown model.pool '{cfg.model.pool}'; choose one of: {', '.join(POOLS)}")
    variant(cfg.norm.name)
    from bnstudy.models import MODELS

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
    resolve_device(cfg.device)


# ---------------------------------------------------------------- optimizers and schedules


def _sgd(params, o) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay, foreach=True
    )


def _adam(params, o) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, foreach=True)


OPTIMIZERS: dict[str, Callable] = {"sgd": _sgd, "adam": _adam}


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


# ---------------------------------------------------------------- state and hooks


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


def log_hook(state: State) -> None:
    """Train loss (mean over the interval) and lr; raises :class:`Diverged` on a bad loss."""
    if not state.losses:
        return
    vals = torch.stack(state.losses).float().cpu()  # the only host sync of the interval
    first = state.step - len(vals) + 1
    limit = state.cfg.train.diverge_loss
    bad = (~torch.isfinite(vals)) | (vals > limit)
    state.losses.clear()
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        state.last_train_loss = float(vals[i])
        state.log.write(first + i, [("train", "loss", float(vals[i]))], state.train_seconds)
        raise Diverged(first + i, float(vals[i]))
    state.last_train_loss = float(vals.mean())
    state.log.write(state.step, [("train", "loss", state.last_train_loss), ("train", "lr", state.lr())], state.train_seconds)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, amp: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        for i in range(0, x.shape[0], batch_size):
            out = model(x[i : i + batch_size]).float()
            yb = y[i : i + batch_size]
            loss_sum += F.cross_entropy(out, yb, reduction="sum")
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return float(loss_sum) / x.shape[0], int(correct) / x.shape[0]


def running_stat_layers(model: nn.Module) -> list[nn.Module]:
    """Norm layers that evaluate with running statistics they update in training (BN-like), not frozen ones."""
    from bnstudy.norm import norm_modules

    return [
        m
        for _, m in norm_modules(model)
        if isinstance(getattr(m, "running_mean", None), torch.Tensor)
        and getattr(m, "momentum", None) is not None
        and not getattr(m, "frozen", False)
    ]


@torch.no_grad()
def recompute_running_stats(model: nn.Module, x: torch.Tensor, batches: int, batch_size: int, seed: int) -> int:
    """Set the running statistics of every BN-like layer to the plain mean over ``batches`` training batches.

    "Precise BN" (Wu & Johnson 2021): the running estimates, an exponential
    average with momentum 0.1, lag the weights when they move fast; this
    replaces them by the average of the batch statistics that the *current*
    weights produce. Momentum 1/k at the k-th batch makes the exponential
    average the exact mean. The batches are fixed (a generator seeded by
    ``seed``; no augmentation) and the model is in train mode, as in training.
    The caller restores the model afterwards (:func:`bnstudy.probes.preserved`).
    Returns the number of batches used (0 if the model has no BN-like layer).
    """
    layers = running_stat_layers(model)
    n = min(batches, x.shape[0] // batch_size)
    if not layers or n == 0:
        return 0
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[: n * batch_size].to(x.device)
    model.train()
    for k in range(n):
        for m in layers:
            m.momentum = 1.0 / (k + 1)
        model(x[idx[k * batch_size : (k + 1) * batch_size]])
    return n


def eval_hook(state: State) -> None:
    """Test (and val) loss and accuracy; tracks the best test accuracy.

    With ``train.precise_bn`` > 0 it also logs ``precise_loss``/``precise_acc``:
    the same evaluation after :func:`recompute_running_stats`, on a model whose
    parameters, buffers, flags and RNG states are restored afterwards, so
    training continues exactly as without it.
    """
    d, t = state.data, state.cfg.train
    amp = t.amp and state.device.type == "cuda"
    rows = []
    splits = [("test", d.test_x, d.test_y)] + ([("val", d.val_x, d.val_y)] if d.val_x is not None else [])
    for split, x, y in splits:
        loss, acc = evaluate(state.model, x, y, t.eval_batch_size, amp)
        rows += [(split, "loss", loss), (split, "acc", acc)]
        state.last_eval[f"{split}/loss"], state.last_eval[f"{split}/acc"] = loss, acc
    if t.precise_bn > 0 and running_stat_layers(state.model):
        from bnstudy.probes import preserved  # local: probes import this module

        with preserved(state.model):
            recompute_running_stats(state.model, d.train_x, t.precise_bn, t.batch_size, state.cfg.seed)
            for split, x, y in splits:
                loss, acc = evaluate(state.model, x, y, t.eval_batch_size, amp)
                rows += [(split, "precise_loss", loss), (split, "precise_acc", acc)]
                state.last_eval[f"{split}/precise_loss"], state.last_eval[f"{split}/precise_acc"] = loss, acc
    acc = state.last_eval["test/acc"]
    if math.isnan(state.best_acc) or acc > state.best_acc:
        state.best_acc = acc
    state.log.write(state.step, rows, state.train_seconds)


def checkpoint_hook(state: State) -> None:
    """Everything needed to continue bit-for-bit, written atomically; the summary shows the progress."""
    if state.step >= state.cfg.train.steps:
        # the run completes right after this hook and writes its summary; a checkpoint
        # here would be deleted at once, and failing to write it (a full disk) would
        # turn a finished run into a failed one
        return
    save_checkpoint(state)
    if state.summarize is not None:
        write_json(state.run_dir / "summary.json", state.summarize("running"))


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(state: State) -> None:
    """Write model, optimizer, scheduler, step, RNG states, data position and hook state."""
    ckpt = {
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler else None,
        "batches": state.batches.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
        },
        "losses": [float(v) for v in state.losses],
        "train_seconds": state.train_seconds,
        "hook_seconds": state.hook_seconds,
        "hook_times": dict(state.hook_times),
        "last_train_loss": state.last_train_loss,
        "last_eval": dict(state.last_eval),
        "best_acc": state.best_acc,
        "extra": state.extra,
    }
    path = state.run_dir / CHECKPOINT
    tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # a Python file: a full disk is an OSError (ENOSPC), not a bare RuntimeError
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # frees the space a half-written checkpoint took, for the failure record
        raise


def load_checkpoint(state: State) -> None:
    """Restore a :func:`save_checkpoint` file into ``state``; one that cannot be used is a :class:`CheckpointError`.

    The file is loaded with ``weights_only=True``: tensors, numbers, strings and
    containers of them only, so a checkpoint placed in a shared run folder cannot
    run code.
    """
    path = state.run_dir / CHECKPOINT
    fix = "delete it (or run with force=true) to train this run from the start"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on a foreign pickle protocol: the error below says it all
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - foreign, truncated, corrupt, unreadable: all end the same way
        lines = str(e).strip().splitlines() or [type(e).__name__]
        if lines[0].startswith("Weights only load failed"):
            found = [ln.strip() for ln in lines if "Unsupported" in ln]
            reason = "it holds objects other than tensors and numbers" + (f" ({found[0][:120]})" if found else "")
        else:
            reason = lines[0][:200]
        raise CheckpointError(f"cannot resume from {path}: not a checkpoint bnstudy can load: {reason}; {fix}") from None
    try:
        _restore(state, ckpt)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"cannot resume from {path}: it does not fit this run ({type(e).__name__}: {str(e)[:200]}); {fix}") from None


def _restore(state: State, ckpt: dict[str, Any]) -> None:
    _raw(state.model).load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scheduler and ckpt["scheduler"]:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    state.batches.load_state_dict(ckpt["batches"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    version, internal, gauss = ckpt["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    state.step = ckpt["step"]
    state.losses = [torch.tensor(v, device=state.device) for v in ckpt["losses"]]
    state.train_seconds = ckpt["train_seconds"]
    state.hook_seconds = ckpt["hook_seconds"]
    state.hook_times = ckpt["hook_times"]
    state.last_train_loss = ckpt["last_train_loss"]
    state.last_eval = ckpt["last_eval"]
    state.best_acc = ckpt["best_acc"]
    state.extra = _to_device(ckpt["extra"], state.device)  # loaded on the CPU (RNG states must stay there)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _raw(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


# ---------------------------------------------------------------- the run


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python's RNG."""
    random.seed(seed)
    torch.manual_seed(seed)


def summary(state: State, status: str, params: int, started: float, **more: Any) -> dict[str, Any]:
    """The summary.json content for the run as it stands."""
    steps_done = max(state.step, 1)
    return {
        "status": status,
        "step": state.step,
        "final": {
            "test/acc": state.last_eval.get("test/acc"),
            "test/loss": state.last_eval.get("test/loss"),
            "train/loss": state.last_train_loss,
            **{k: state.last_eval[k] for k in ("val/acc", "test/precise_acc", "val/precise_acc") if k in state.last_eval},
        },
        "best": {"test/acc": None if math.isnan(state.best_acc) else state.best_acc},
        "params": params,
        "seconds": round(state.train_seconds, 4),
        "hook_seconds": round(state.hook_seconds, 4),  # evaluation, logging, probes, checkpoints
        "hook_times": {k: round(v, 4) for k, v in state.hook_times.items()},
        "ms_per_step": round(1000 * state.train_seconds / steps_done, 5),
        "factors": factors(state.cfg),
        "run": f"{state.run_dir.parent.name}/{state.run_dir.name}",
        "device": str(state.device),
        "provenance": provenance(state.device),  # code and machine: what `bnstudy-runs --stale` compares
        "updated": time.time(),
        "started": started,
        **more,
    }


def _progress(cfg: RunConfig, start: int):
    mode = cfg.train.progress
    show = mode == "on" or (mode == "auto" and sys.stderr.isatty())
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.steps, initial=start, desc=cfg.norm.name, unit="step", leave=False, dynamic_ncols=True)


def train_run(
    cfg: RunConfig,
    run_dir: Path,
    extra_hooks: list[Hook] | None = None,
    sweep_id: str | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its checkpoint if one exists); return the summary.

    Raises on bad input before anything is written; any later exception leaves
    ``status: failed`` with the traceback in ``error.txt``.
    """
    validate(cfg)
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    data = data_lib.load(cfg.data, device)  # before any run file is written: bad data leaves nothing behind

    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.norm, data.shape, data.num_classes).to(device)
    if cfg.train.channels_last and cfg.model.name != "mlp":
        model = model.to(memory_format=torch.channels_last)
    params = count_params(model)
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    scheduler = None if cfg.sched.name == "constant" and cfg.sched.warmup == 0 else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    batches = Batches(data.train_x.shape[0], cfg.train.batch_size, cfg.seed, device)

    run_dir.mkdir(parents=True, exist_ok=True)
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob(".hydra/.*.tmp")]:
        tmp.unlink(missing_ok=True)  # left by a write that failed (a full disk) or a killed process
    ckpt_path = run_dir / CHECKPOINT
    resume = ckpt_path.exists() and not cfg.force
    if not resume:
        ckpt_path.unlink(missing_ok=True)
        (run_dir / "error.txt").unlink(missing_ok=True)
    state = State(cfg, run_dir, device, data, model, optimizer, scheduler, batches, log=None)  # type: ignore[arg-type]
    if resume:
        load_checkpoint(state)  # before any file is written: a checkpoint that cannot be used changes nothing
        log.info("resumed %s from step %d", run_dir, state.step)
    from omegaconf import OmegaConf  # local: the loop itself never needs Hydra

    from bnstudy.runs import atomic_write_text

    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())))
    state.log = MetricsLog(
        run_dir / "metrics.csv",
        resume_step=state.step if resume else None,
        tensorboard_dir=run_dir / "tb" if cfg.logger.tensorboard else None,
    )
    prev = read_summary(run_dir) if resume else None
    started = prev.get("started", time.time()) if prev else time.time()
    ids = {"sweep_id": sweep_id} if sweep_id else {}
    state.summarize = lambda status: summary(state, status, params, started, **ids)
    write_json(run_dir / "summary.json", state.summarize("running"))

    if cfg.train.compile:
        t0 = time.perf_counter()
        model = torch.compile(model)
        state.model = model
        state.extra["compile_seconds"] = time.perf_counter() - t0

    t = cfg.train
    hooks = [Hook("log", t.log_every, log_hook), Hook("eval", t.eval_every, eval_hook)]
    hooks += list(extra_hooks or [])
    hooks.append(Hook("checkpoint", t.checkpoint_every, checkpoint_hook))
    hooks = [h for h in hooks if h.every > 0]  # every=0: off (train.eval_every=0 for pure-speed runs)

    bar = _progress(cfg, state.step)
    status, more = "completed", {}
    try:
        _loop(state, hooks, bar, stop)
    except Diverged as e:
        status, more = "diverged", {"diverged_at": e.step}
        state.step = e.step
        eval_hook_safe(state)
    except Interrupted as e:
        # stopped between two steps: a checkpoint of exactly this step loses no work, and the
        # same command (or the cluster's requeue) resumes bit-for-bit
        save_checkpoint(state)
        state.log.close()
        write_json(run_dir / "summary.json", summary(state, "interrupted", params, started, reason=e.reason, **ids))
        raise
    except KeyboardInterrupt:
        # a Ctrl-C inside a step (no stop request installed, or pressed twice): the step may be
        # half done, so the last checkpoint stays the point the same command resumes from
        with contextlib.suppress(OSError):
            state.log.close()
        with contextlib.suppress(OSError):
            write_json(run_dir / "summary.json", summary(state, "interrupted", params, started, reason="Ctrl-C", **ids))
        raise Interrupted("Ctrl-C", state.step) from None
    except Exception as e:
        _record_failure(state, e, summary(state, "failed", params, started, error="error.txt", reason=_reason(e, run_dir), **ids))
        raise
    finally:
        if bar is not None:
            bar.close()
    state.log.close()
    result = summary(state, status, params, started, **more, **ids)
    write_json(run_dir / "summary.json", result)
    ckpt_path.unlink(missing_ok=True)  # finished runs keep results, not training state
    return result


def _reason(e: BaseException, run_dir: Path) -> str:
    """One line on why a run failed, for its summary."""
    x: BaseException | None = e
    while x is not None:  # torch's writer wraps a full disk in a RuntimeError
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return f"no space left on the device holding {run_dir}"
        x = x.__cause__ or x.__context__
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}".rstrip(": ")


def _record_failure(state: State, e: BaseException, failed: dict[str, Any]) -> None:
    """Leave ``status: failed`` with the reason and the traceback in error.txt, as far as the disk allows."""
    from bnstudy.runs import atomic_write_text

    with contextlib.suppress(OSError):
        state.log.close()
    with contextlib.suppress(OSError):  # the summary first: it is small, and it is what sweeps and reports read
        write_json(state.run_dir / "summary.json", failed)
    with contextlib.suppress(OSError):
        atomic_write_text(state.run_dir / "error.txt", "".join(traceback.format_exception(e)))


def eval_hook_safe(state: State) -> None:
    """Evaluate a diverged model for the record; non-finite outputs are fine here."""
    try:
        eval_hook(state)
    except Exception:  # noqa: BLE001 - a broken model must not hide the divergence result
        pass


def _progress_line(state: State) -> str:
    """``step 500/5000  train loss 0.2713  test acc 0.9412  (3.1 s)``; a value not measured yet is left out."""
    parts = [f"step {state.step}/{state.cfg.train.steps}"]
    if not math.isnan(state.last_train_loss):  # nan until the first log point averages the losses
        parts.append(f"train loss {state.last_train_loss:.4f}")
    if "test/acc" in state.last_eval:
        parts.append(f"test acc {state.last_eval['test/acc']:.4f}")
    return "  ".join(parts) + f"  ({state.train_seconds:.1f} s)"


def _loop(state: State, hooks: list[Hook], bar, stop: StopRequest | None = None) -> None:
    cfg, model, opt = state.cfg, state.model, state.optimizer
    x_all, y_all = state.data.train_x, state.data.train_y
    steps, augment = cfg.train.steps, cfg.data.augment
    channels_last = cfg.train.channels_last and cfg.model.name != "mlp"
    amp = cfg.train.amp and state.device.type == "cuda"
    sched = state.scheduler
    model.train()

    def next_due(step: int) -> int:
        due = [((step // h.every) + 1) * h.every for h in hooks]
        return min(min(due), steps)

    due = next_due(state.step)
    t_last = time.perf_counter()
    while state.step < steps:
        if stop is not None and stop.reason is not None:
            raise Interrupted(stop.reason, state.step)
        idx = state.batches.next()
        x, y = x_all[idx], y_all[idx]  # (B, C, H, W), (B,)
        if augment:
            x = data_lib.augment(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
        else:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        state.step += 1
        state.losses.append(loss.detach())
        if state.step < due:
            continue
        # a hook point: close the training-time interval, run the hooks, reopen it
        if state.device.type == "cuda":
            torch.cuda.synchronize()
        t_hooks = time.perf_counter()
        state.train_seconds += t_hooks - t_last
        for h in hooks:
            if state.step % h.every == 0 or state.step == steps:
                t0 = time.perf_counter()
                h.fn(state)
                state.hook_times[h.name] = state.hook_times.get(h.name, 0.0) + time.perf_counter() - t0
        if bar is not None:
            bar.update(state.step - bar.n)
            bar.set_postfix(loss=f"{state.last_train_loss:.4f}", acc=state.last_eval.get("test/acc", float("nan")))
        elif cfg.train.eval_every and (state.step % cfg.train.eval_every == 0 or state.step == steps):
            log.info("%s", _progress_line(state))
        t_last = time.perf_counter()
        state.hook_seconds += t_last - t_hooks
        due = next_due(state.step)
