"""Precise BN (``train.precise_bn``): evaluation after recomputing the running statistics with the current weights."""
from __future__ import annotations

import torch
from torch import nn

from bnstudy.norm import kind, norm_modules
from bnstudy.train import precision
from bnstudy.train.hooks import eval_splits, evaluate, use_amp
from bnstudy.train.snapshot import preserved
from bnstudy.train.state import State


def running_stat_layers(model: nn.Module) -> list[nn.Module]:
    """Norm layers whose variant declares running statistics (BN-like), except those frozen by now."""
    return [m for _, m in norm_modules(model) if kind(m).running_stats and not getattr(m, "frozen", False)]


@torch.no_grad()
def recompute_running_stats(model: nn.Module, x: torch.Tensor, batches: int, batch_size: int, seed: int) -> int:
    """Set the running statistics of every BN-like layer to the plain mean over ``batches`` training batches.

    "Precise BN" (Wu & Johnson 2021): the running estimates, an exponential
    average with momentum 0.1, lag the weights when they move fast; this
    replaces them by the average of the batch statistics that the *current*
    weights produce. Momentum 1/k at the k-th batch makes the exponential
    average the exact mean. The batches are fixed (a generator seeded by
    ``seed``; no augmentation) and the model is in train mode, as in training.
    Only ``momentum`` is set, so a variant that keeps one statistic (``bn_center``
    a mean, ``bn_scale`` a variance) has that one recomputed the same way.
    The caller restores the model afterwards (:func:`~bnstudy.train.snapshot.preserved`).
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


def precise_bn_hook(state: State) -> None:
    """``precise_loss``/``precise_acc`` per evaluated split, after :func:`recompute_running_stats`.

    Runs right after the evaluation hook, at the same steps. The model's
    parameters, buffers, flags and RNG states are restored afterwards, so
    training continues exactly as without it. A model with no BN-like layer
    (now: ``bn_frozen`` after it froze) logs nothing.
    """
    t = state.cfg.train
    if not running_stat_layers(state.model):
        return
    rows = []
    splits = eval_splits(state)
    with preserved(state.model):
        with precision.autocast(state.cfg, state.device):  # the statistics training would see
            recompute_running_stats(state.model, state.data.train_x, t.precise_bn, t.batch_size, state.cfg.seed)
        for split, x, y in splits:
            loss, acc = evaluate(state.model, x, y, t.eval_batch_size, use_amp(state))
            rows += [(split, "precise_loss", loss), (split, "precise_acc", acc)]
            state.last_eval[f"{split}/precise_loss"], state.last_eval[f"{split}/precise_acc"] = loss, acc
    state.log.write(state.step, rows, state.train_seconds)
