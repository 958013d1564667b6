"""The training run, top to bottom: validate → build → hooks → loop, inside the run folder's lifecycle.

The loop itself only steps the optimizer. Logging, divergence checks,
evaluation, precise BN, probes and checkpoints are hooks that fire every N
steps; the loop computes when the next one is due, so steps between hooks do
no extra work and no host sync (losses stay on the device until a log point
reads them). The parts live next door: :mod:`~bnstudy.train.build`,
:mod:`~bnstudy.train.state`, :mod:`~bnstudy.train.hooks`,
:mod:`~bnstudy.train.precise_bn`, :mod:`~bnstudy.train.checkpoint` and
:mod:`~bnstudy.train.lifecycle`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bnstudy import data as data_lib
from bnstudy.config import RunConfig
from bnstudy.train.build import build, validate
from bnstudy.train.hooks import check_divergence, checkpoint_hook, eval_hook, log_hook, progress_bar, progress_line
from bnstudy.train.lifecycle import RunFolder
from bnstudy.train import precision
from bnstudy.train.precise_bn import precise_bn_hook
from bnstudy.train.probes import probe_hook
from bnstudy.train.state import Hook, State
from bnstudy.train.stops import Interrupted, StopRequest

log = logging.getLogger("bnstudy")


def train_run(
    cfg: RunConfig,
    run_dir: Path,
    extra_hooks: list[Hook] | None = None,
    sweep_id: str | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its checkpoint if one exists); return the summary.

    The config switches its hooks on (:func:`config_hooks`: evaluation, precise BN,
    probes); ``extra_hooks`` run after those. Raises on bad input before anything is
    written; any later exception leaves ``status: failed`` with the traceback in ``error.txt``.
    """
    validate(cfg)
    b = build(cfg)
    state = State(cfg, Path(run_dir), b.device, b.data, b.model, b.optimizer, b.scheduler, b.batches, log=None)  # type: ignore[arg-type]
    with RunFolder(state, b.params, sweep_id) as run:
        if cfg.train.compile:
            t0 = time.perf_counter()
            state.model = torch.compile(state.model)
            state.extra["compile_seconds"] = time.perf_counter() - t0
        _loop(state, config_hooks(cfg, extra_hooks), stop)
    return run.result


def config_hooks(cfg: RunConfig, extra: list[Hook] | None = None) -> list[Hook]:
    """The hooks ``cfg`` switches on, then ``extra``, in the order they run at a step (every=0: off)."""
    t = cfg.train
    hs = [Hook("log", t.log_every, log_hook), Hook("eval", t.eval_every, eval_hook)]
    if t.precise_bn > 0:
        hs.append(Hook("precise_bn", t.eval_every, precise_bn_hook))  # right after eval, at the same steps
    if cfg.probe.every > 0:
        hs.append(Hook("probe", cfg.probe.every, probe_hook))
    hs += list(extra or [])
    hs.append(Hook("checkpoint", t.checkpoint_every, checkpoint_hook))
    return [h for h in hs if h.every > 0]  # train.eval_every=0 for pure-speed runs


def _loop(state: State, hooks: list[Hook], stop: StopRequest | None = None) -> None:
    cfg, model, opt = state.cfg, state.model, state.optimizer
    x_all, y_all = state.data.train_x, state.data.train_y
    steps, augment = cfg.train.steps, cfg.data.augment
    channels_last = precision.channels_last(cfg)
    sched = state.scheduler
    model.train()

    def next_due(step: int) -> int:
        due = [((step // h.every) + 1) * h.every for h in hooks]
        return min(min(due), steps)

    due = next_due(state.step)
    bar = progress_bar(cfg, state.step)
    t_last = time.perf_counter()
    try:
        while state.step < steps:
            if stop is not None and stop.reason is not None:
                stop.seen = True
                raise Interrupted(stop.reason, state.step)
            idx = state.batches.next()
            x, y = x_all[idx], y_all[idx]  # (B, C, H, W), (B,)
            if augment:
                x = data_lib.augment(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(cfg, state.device):  # bf16 under train.amp, on a GPU or a CPU
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
            if not (state.step % cfg.train.log_every == 0 or state.step == steps):
                check_divergence(state)  # an evaluation between log points must not outlive a divergence
            for h in hooks:
                if state.step % h.every == 0 or state.step == steps:
                    t0 = time.perf_counter()
                    h.fn(state)
                    state.hook_times[h.name] = state.hook_times.get(h.name, 0.0) + time.perf_counter() - t0
            if bar is not None:
                bar.update(state.step - bar.n)
                bar.set_postfix(loss=f"{state.last_train_loss:.4f}", acc=state.last_eval.get("test/acc", float("nan")))
            elif cfg.train.eval_every and (state.step % cfg.train.eval_every == 0 or state.step == steps):
                log.info("%s", progress_line(state))
            t_last = time.perf_counter()
            state.hook_seconds += t_last - t_hooks
            due = next_due(state.step)
    finally:
        if bar is not None:
            bar.close()
