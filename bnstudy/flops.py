"""FLOPs of one training step (forward + backward), counted from shapes alone on the meta device.

The thread policy (:mod:`bnstudy.threads`) asks whether a step is worth
splitting between threads; the benchmark divides measured throughput by it
for the model FLOP utilisation. Counting on the meta device allocates
nothing and draws no random numbers, so it never disturbs a seeded run.
"""
from __future__ import annotations

import torch

from bnstudy.config import ModelConfig, NormConfig


def step_flops(model: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int, batch: int) -> float:
    """FLOPs of one optimizer step's forward and backward pass at ``batch`` (matrix products and convolutions)."""
    try:
        return _count(model, norm, in_shape, num_classes, batch)
    except (RuntimeError, NotImplementedError):
        # a layer that reads a value (bn_frozen's step counter) cannot run on meta tensors; the counter
        # sees only matrix products and convolutions, which the norm choice does not change
        return _count(model, NormConfig(name="none"), in_shape, num_classes, batch)


def _count(model: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from bnstudy.models import build_model

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        # fork_rng: a layer whose constructor draws on the CPU generator leaves the caller's stream untouched
        net = build_model(model, norm, in_shape, num_classes).train()
        x = torch.empty(batch, *in_shape)
        counter = FlopCounterMode(display=False)
        with counter:
            net(x).sum().backward()
    return float(counter.get_total_flops())
