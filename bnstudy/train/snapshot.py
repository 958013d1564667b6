"""Leaving training untouched: snapshot a model and the RNG states, restore them afterwards.

Probes and precise BN run forward (and backward) passes between training steps;
inside :func:`preserved` they may change anything, and training then continues
exactly as if they had not run.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def preserved(model: nn.Module, params: bool = True) -> Iterator[Any]:
    """Snapshot everything a probe could disturb; restore it on exit. Yields a function that restores it early.

    Covered: parameter values and ``.grad`` (unless ``params`` is false: the
    caller does not touch them), all buffers (BN running statistics,
    ``num_batches_tracked``, variant counters), plain int/float/bool module
    attributes (including each module's ``training`` flag), module-held
    ``torch.Generator`` states, and the global torch, CUDA and Python RNG states.
    """
    plist = list(model.parameters()) if params else []
    p_data = [p.detach().clone() for p in plist]
    p_grad = [None if p.grad is None else p.grad.detach().clone() for p in plist]
    # by (module, name): a variant may reassign a buffer (``self.n = self.n + 1``) rather than update it in place
    buffers = [(m, k, b, b.detach().clone()) for m in model.modules() for k, b in m.named_buffers(recurse=False)]
    attrs = [
        (m, {k: v for k, v in vars(m).items() if isinstance(v, (bool, int, float))}) for m in model.modules()
    ]
    gens = [(g, g.get_state()) for m in model.modules() for g in vars(m).values() if isinstance(g, torch.Generator)]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py_rng = random.getstate()

    def restore_state() -> None:
        with torch.no_grad():
            for m, k, b, v in buffers:
                b.copy_(v)
                m._buffers[k] = b
        for m, a in attrs:
            for k, v in a.items():
                setattr(m, k, v)
        for g, s in gens:
            g.set_state(s)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)

    try:
        yield restore_state
    finally:
        with torch.no_grad():
            for p, v, gr in zip(plist, p_data, p_grad):
                p.copy_(v)
                p.grad = gr
        restore_state()
