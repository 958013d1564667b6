"""Normalization variants and the one factory that builds them.

Every architecture asks :func:`make_norm` for its norm layers; none constructs
``nn.BatchNorm*`` itself. A variant is one class (or builder) registered under
its short config name, plus ``conf/norm/<name>.yaml``.

Every module the factory returns carries ``norm_kind`` (the variant name), so
probes and tests find norm sites without ``isinstance`` checks on torch classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bnstudy.config import NormConfig
from bnstudy.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """A registered normalization variant."""

    build: Callable[[int, int, NormConfig], nn.Module]  # (num_features, dim, cfg) -> module
    shift: bool  # the layer adds its own learnable shift, so the layer before it needs no bias
    running_stats: bool = False  # evaluates with running statistics (what train.precise_bn recomputes)


NORMS: dict[str, Variant] = {}


def register(name: str, shift: bool, running_stats: bool = False) -> Callable:
    """Class/function decorator adding a variant to the registry under ``name``."""

    def deco(builder):
        NORMS[name] = Variant(builder, shift, running_stats)
        return builder

    return deco


def variant(name: str) -> Variant:
    """Look up a variant; unknown names are a one-line error listing the valid ones."""
    try:
        return NORMS[name]
    except KeyError:
        raise ConfigError(f"unknown norm '{name}'; choose one of: {', '.join(sorted(NORMS))}") from None


def make_norm(cfg: NormConfig, num_features: int, dim: int) -> nn.Module:
    """Build the norm layer for ``num_features`` features (dim=1: (B, F)) or channels (dim=2: (B, C, H, W))."""
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    module = variant(cfg.name).build(num_features, dim, cfg)
    module.norm_kind = cfg.name
    return module


def needs_bias(cfg: NormConfig) -> bool:
    """Whether the layer feeding this norm should keep its own bias."""
    return not variant(cfg.name).shift


def norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every norm site the factory built, in forward order."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "norm_kind")]


def _shape(num_features: int, dim: int) -> tuple[int, ...]:
    # parameters broadcast over the batch (and spatial) axes: (1, F) or (1, C, 1, 1)
    return (1, num_features) if dim == 1 else (1, num_features, 1, 1)


@register("bn", shift=True, running_stats=True)
def batchnorm(num_features: int, dim: int, cfg: NormConfig) -> nn.Module:
    """BatchNorm: y = γ (x − μ_B) / sqrt(σ_B² + ε) + β.

    Batch statistics μ_B, σ_B² per feature/channel in training, running
    estimates in evaluation; learnable γ (init 1) and β (init 0). torch's own
    BatchNorm1d/2d.
    """
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(num_features, eps=cfg.eps, momentum=cfg.momentum)


@register("affine", shift=True)
class Affine(nn.Module):
    """Affine only: y = γ x + β, per feature/channel; γ = 1, β = 0 at init; no statistics, no buffers."""

    def __init__(self, num_features: int, dim: int, cfg: NormConfig | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(_shape(num_features, dim)))
        self.bias = nn.Parameter(torch.zeros(_shape(num_features, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, self.weight, x)


@register("none", shift=False)
class NoNorm(nn.Identity):
    """No normalization: y = x. The layer before it keeps its bias."""

    def __init__(self, num_features: int, dim: int, cfg: NormConfig | None = None):
        super().__init__()


from bnstudy.norm import variants as _variants  # noqa: E402,F401  (registers the science variants)
