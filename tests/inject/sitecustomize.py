"""Loaded (through PYTHONPATH) only by the failure-isolation test: registers a norm variant
``boom`` that raises on its 5th training forward, so a job fails mid-run the way a real bug would,
and ``boom_build``, which fails before training begins."""
import torch

from bnstudy.norm import register


@register("boom", shift=False)
class Boom(torch.nn.Identity):
    """y = x, until the 5th training-mode call, which raises."""

    def __init__(self, num_features, dim, cfg=None):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("boom: injected failure")
        return x


@register("boom_build", shift=False)
class BoomBuild(torch.nn.Identity):
    """Raises while the model is built: the job fails before training writes any record of the run."""

    def __init__(self, num_features, dim, cfg=None):
        raise RuntimeError("boom_build: injected failure while building")
