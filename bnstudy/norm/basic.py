"""The three variants the study compares: BatchNorm (``bn``), a bare affine map (``affine``) and none (``none``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from bnstudy.norm.registry import register

if TYPE_CHECKING:
    from bnstudy.config import NormConfig


def param_shape(num_features: int, dim: int) -> tuple[int, ...]:
    """Shape of per-feature parameters that broadcast over the batch (and spatial) axes: (1, F) or (1, C, 1, 1)."""
    return (1, num_features) if dim == 1 else (1, num_features, 1, 1)


@register("bn", shift=True, running_stats=True, standardizes="batch", color="#1f77b4")
def batchnorm(num_features: int, dim: int, cfg: NormConfig) -> nn.Module:
    """BatchNorm: y = γ (x − μ_B) / sqrt(σ_B² + ε) + β.

    Batch statistics μ_B, σ_B² per feature/channel in training, running
    estimates in evaluation; learnable γ (init 1) and β (init 0). torch's own
    BatchNorm1d/2d.
    """
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(num_features, eps=cfg.eps, momentum=cfg.momentum)


@register("affine", shift=True, color="#d62728")
class Affine(nn.Module):
    """Affine only: y = γ x + β, per feature/channel; γ = 1, β = 0 at init; no statistics, no buffers."""

    def __init__(self, num_features: int, dim: int, cfg: NormConfig | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(param_shape(num_features, dim)))
        self.bias = nn.Parameter(torch.zeros(param_shape(num_features, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, self.weight, x)


@register("none", shift=False, color="#555555")
class NoNorm(nn.Identity):
    """No normalization: y = x. The layer before it keeps its bias."""

    def __init__(self, num_features: int, dim: int, cfg: NormConfig | None = None):
        super().__init__()
