"""Normalization variants beyond bn / affine / none that isolate what standardization buys.

Each variant removes or perturbs one ingredient of BatchNorm:

- ``bn_noaffine``: standardization without γ, β.
- ``bn_center``, ``bn_scale``: BN's two halves, centering (μ_B) without scaling and
  scaling (σ_B) without centering, each followed by γ, β.
- ``affine_ddi``: γ, β only, initialised from the first batch so the start matches BN.
- ``bn_nograd``: BN's forward, but backprop treats μ_B, σ_B as constants.
- ``bn_frozen``: BN, then after ``freeze_after`` steps a fixed affine map of x.
- ``noisy_bn``: BN followed by a random per-channel scale and shift (Santurkar et al. 2018).
- ``layernorm``, ``groupnorm``: per-example standardization, no batch dependence.

Inputs are (B, F) for dim=1 and (B, C, H, W) for dim=2. Variants that keep
running statistics store them like torch's BatchNorm (``running_mean``,
``running_var`` of shape (C,), ``weight``/``bias`` of shape (C,)), so the
state_dict reads the same as ``bn``'s; ``bn_center`` and ``bn_scale`` keep only
the one they use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bnstudy.norm.basic import param_shape
from bnstudy.norm.registry import register

if TYPE_CHECKING:
    from bnstudy.config import NormConfig


def _reduce_dims(dim: int) -> tuple[int, ...]:
    # statistics per feature/channel pool the batch (and spatial) axes
    return (0,) if dim == 1 else (0, 2, 3)


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (C,) -> (1, C) or (1, C, 1, 1), to broadcast against x
    return v.view((1, -1) + (1,) * (x.dim() - 2))


class _RunningStats(nn.Module):
    """γ, β and running statistics laid out like torch's BatchNorm (shared by the BN-like variants)."""

    def __init__(self, num_features: int, dim: int, cfg: NormConfig):
        super().__init__()
        self.dim = dim
        self.eps = cfg.eps
        self.momentum = cfg.momentum
        self.weight = nn.Parameter(torch.ones(num_features))  # γ, (C,)
        self.bias = nn.Parameter(torch.zeros(num_features))  # β, (C,)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _bn(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        # torch's fused BN: batch stats (and a running-stat update) when training, running stats otherwise
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training, self.momentum, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, momentum={self.momentum}"


@register("bn_noaffine", shift=False, running_stats=True, standardizes="batch", color="#17becf")
def batchnorm_noaffine(num_features: int, dim: int, cfg: NormConfig) -> nn.Module:
    """Standardization only: y = (x − μ_B) / sqrt(σ_B² + ε); no γ, β.

    Batch statistics in training, running estimates in evaluation (torch's
    BatchNorm with ``affine=False``). With no β, the layer before keeps its bias.
    """
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(num_features, eps=cfg.eps, momentum=cfg.momentum, affine=False)


def _wide(x: torch.Tensor) -> torch.Tensor:
    # statistics in at least float32, as torch's BN takes them, also from bf16 activations under autocast
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _track(running: torch.Tensor, batch_stat: torch.Tensor, momentum: float) -> None:
    # BN's update of one running statistic; precise BN sets ``momentum`` to 1/k to average k batches
    with torch.no_grad():
        running.lerp_(batch_stat.detach().to(running.dtype), momentum)


class _AffineAfter(nn.Module):
    """γ, β of shape (C,), laid out like torch's BatchNorm, and one running statistic ``stat`` (init ``init``)."""

    def __init__(self, num_features: int, dim: int, cfg: NormConfig, stat: str, init: float):
        super().__init__()
        self.dim = dim
        self.eps = cfg.eps
        self.momentum = cfg.momentum
        self.weight = nn.Parameter(torch.ones(num_features))  # γ, (C,)
        self.bias = nn.Parameter(torch.zeros(num_features))  # β, (C,)
        self.register_buffer(stat, torch.full((num_features,), init))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, momentum={self.momentum}"


@register("bn_center", shift=True, running_stats=True, centers="batch", color="#ff9896")
class BatchCenter(_AffineAfter):
    """Centering only: y = γ (x − μ_B) + β.

    μ_B per feature/channel over the batch (and spatial) axes in training, the
    running mean (momentum ``cfg.momentum``) in evaluation; no variance is
    computed or kept. The gradient flows through μ_B, as in BN. Subtracting μ_B
    cancels a bias of the feeding layer, but the output scales with that
    layer's weights (W -> cW gives c times the centred input): not scale invariant.
    """

    def __init__(self, num_features: int, dim: int, cfg: NormConfig):
        super().__init__(num_features, dim, cfg, "running_mean", 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mu = _wide(x).mean(_reduce_dims(self.dim))  # (C,)
            _track(self.running_mean, mu, self.momentum)
        else:
            mu = self.running_mean
        return torch.addcmul(_per_channel(self.bias, x), _per_channel(self.weight, x), x - _per_channel(mu, x))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, momentum={self.momentum}"  # no ε: nothing is divided


@register("bn_scale", shift=True, running_stats=True, scales="batch", color="#0b3d91")
class BatchScale(_AffineAfter):
    """Scaling only: y = γ x / sqrt(σ_B² + ε) + β, the mean not subtracted.

    σ_B² is BN's batch variance per feature/channel (centred, biased) in
    training, the running variance (unbiased, momentum ``cfg.momentum``, as
    torch's BatchNorm keeps it) in evaluation; no running mean is kept. The
    gradient flows through σ_B². Scale invariant when the feeding layer has no
    bias (W -> cW scales x and σ_B alike), as the models build it; a bias there
    would not cancel (it would be divided by σ_B, not removed).
    """

    def __init__(self, num_features: int, dim: int, cfg: NormConfig):
        super().__init__(num_features, dim, cfg, "running_var", 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            var = _wide(x).var(_reduce_dims(self.dim), unbiased=False)  # (C,), what the batch is scaled by
            n = x.numel() // x.shape[1]  # values pooled per channel
            _track(self.running_var, var * n / max(n - 1, 1), self.momentum)  # torch's running_var is unbiased
        else:
            var = self.running_var
        scale = self.weight * (var + self.eps).rsqrt()  # (C,): γ / sqrt(σ² + ε)
        return torch.addcmul(_per_channel(self.bias, x), _per_channel(scale, x), x)


@register("affine_ddi", shift=True, color="#ff7f0e")
class AffineDDI(nn.Module):
    """Affine with data-dependent init: y = γ x + β, with γ = 1/σ₀, β = −μ₀/σ₀ set at the first training forward.

    μ₀, σ₀² = per-feature/channel mean and biased variance of that first
    training batch, σ₀ = sqrt(σ₀² + ε), so the first output is exactly
    standardized; afterwards a plain learnable affine layer (no statistics).
    The ``initialized`` buffer travels in the state_dict, so a resumed run never
    re-initialises.
    """

    def __init__(self, num_features: int, dim: int, cfg: NormConfig):
        super().__init__()
        self.dim = dim
        self.eps = cfg.eps
        self.weight = nn.Parameter(torch.ones(param_shape(num_features, dim)))  # γ, (1, C) or (1, C, 1, 1)
        self.bias = nn.Parameter(torch.zeros(param_shape(num_features, dim)))  # β
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        dims = _reduce_dims(self.dim)
        mu = x.mean(dims, keepdim=True)  # (1, C[, 1, 1])
        sigma = (x.var(dims, unbiased=False, keepdim=True) + self.eps).sqrt()
        self.weight.copy_(1.0 / sigma)
        self.bias.copy_(-mu / sigma)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialized):
            self._init_from(x)
        return torch.addcmul(self.bias, self.weight, x)


@register("bn_nograd", shift=True, running_stats=True, standardizes="batch", color="#9467bd")
class BatchNormNoGrad(_RunningStats):
    """BN with statistics held constant in backprop: y = γ (x − sg[μ_B]) / sqrt(sg[σ_B²] + ε) + β.

    sg = stop-gradient. The forward equals BN's; the backward is that of the
    affine map x ↦ γ (x − μ) / σ + β with this batch's μ, σ fixed, so the
    gradient ignores how the statistics move with the parameters of earlier
    layers. Ioffe & Szegedy (2015, §2) argue this lets parameters blow up.
    Running statistics (unbiased variance, momentum ``cfg.momentum``) are
    kept and used in evaluation, as in BN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._bn(x, training=False)
        dims = _reduce_dims(self.dim)
        mu = x.mean(dims).detach()  # (C,)
        var = x.var(dims, unbiased=False).detach()  # (C,), biased: what BN normalizes with
        with torch.no_grad():
            n = x.numel() // x.shape[1]  # values pooled per channel
            unbiased = var * n / max(n - 1, 1)  # torch's running_var is unbiased
            self.running_mean.lerp_(mu, self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        x_hat = (x - _per_channel(mu, x)) * _per_channel((var + self.eps).rsqrt(), x)
        return torch.addcmul(_per_channel(self.bias, x), _per_channel(self.weight, x), x_hat)


@register("bn_frozen", shift=True, running_stats=True, standardizes="batch", color="#8c564b")
class BatchNormFrozen(_RunningStats):
    """BN whose statistics freeze: y = γ (x − μ_B) / sqrt(σ_B² + ε) + β for the first ``freeze_after`` training forwards, then y = γ (x − μ_run) / sqrt(σ²_run + ε) + β.

    After freezing, the running statistics stop updating and are used in
    training too, so the layer is a fixed affine map of x with learnable γ, β.
    ``num_batches_tracked`` counts training forwards and is saved with the
    model, so a resumed run freezes at the same step.
    """

    def __init__(self, num_features: int, dim: int, cfg: NormConfig):
        super().__init__(num_features, dim, cfg)
        self.freeze_after = cfg.freeze_after
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @property
    def frozen(self) -> bool:
        """Whether the statistics have stopped updating."""
        return int(self.num_batches_tracked) >= self.freeze_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.frozen:
            self.num_batches_tracked.add_(1)
            return self._bn(x, training=True)
        return self._bn(x, training=False)  # running stats, no update: a fixed affine map

    def extra_repr(self) -> str:
        return super().extra_repr() + f", freeze_after={self.freeze_after}"


@register("noisy_bn", shift=True, running_stats=True, standardizes="batch", color="#2ca02c")
class NoisyBatchNorm(_RunningStats):
    """BN plus random per-channel scale and shift in training: y = s_c · (γ x̂ + β) + m_c.

    x̂ = (x − μ_B) / sqrt(σ_B² + ε) (running stats in evaluation), and, redrawn
    at every training forward, independently per channel c and shared by all
    examples and positions of the batch:
    m_c ~ U(−noise_mean_max, noise_mean_max), s_c ~ U(1 − noise_std_max, 1 + noise_std_max).

    After Santurkar et al. (2018, §2.1, "noisy BatchNorm"): noise with
    time-varying non-zero mean and non-unit variance after BN, so the layer's
    output distribution shifts at every step although BN standardized it.
    The paper perturbs each activation of each example; drawing one (s_c, m_c)
    per channel instead moves the whole channel's distribution (its mean by
    m_c, its std by s_c), which is the covariate shift under test. Draws use
    the global torch RNG, so a resumed run (which restores it) is exact.
    Evaluation: plain BN, no noise.
    """

    def __init__(self, num_features: int, dim: int, cfg: NormConfig):
        super().__init__(num_features, dim, cfg)
        self.noise_mean_max = cfg.noise_mean_max
        self.noise_std_max = cfg.noise_std_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._bn(x, training=self.training)
        if not self.training:
            return y
        c = x.shape[1]
        u = torch.rand(2, c, device=x.device, dtype=y.dtype)  # U(0, 1), two draws per channel
        shift = (2 * u[0] - 1) * self.noise_mean_max  # (C,), U(−m, m)
        scale = 1 + (2 * u[1] - 1) * self.noise_std_max  # (C,), U(1 − s, 1 + s)
        return torch.addcmul(_per_channel(shift, y), _per_channel(scale, y), y)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", noise_mean_max={self.noise_mean_max}, noise_std_max={self.noise_std_max}"


@register("layernorm", shift=True, standardizes="example", color="#e377c2")
def layernorm(num_features: int, dim: int, cfg: NormConfig) -> nn.Module:
    """LayerNorm: y = γ_c (x − μ_n) / sqrt(σ_n² + ε) + β_c.

    μ_n, σ_n² per example over all features (dim=1) or over (C, H, W) (dim=2);
    γ, β per feature/channel. That is GroupNorm with one group, which handles
    (B, F) and (B, C, H, W) alike.
    """
    return nn.GroupNorm(1, num_features, eps=cfg.eps)


@register("groupnorm", shift=True, standardizes="example", color="#bcbd22")
def groupnorm(num_features: int, dim: int, cfg: NormConfig) -> nn.Module:
    """GroupNorm: y = γ_c (x − μ_{n,g}) / sqrt(σ_{n,g}² + ε) + β_c.

    μ, σ² per example and group g of C/G channels (with their H, W); G is the
    largest divisor of C not above ``cfg.groups``. For dim=1 the features are
    the channels.
    """
    groups = max(g for g in range(1, max(1, min(cfg.groups, num_features)) + 1) if num_features % g == 0)
    return nn.GroupNorm(groups, num_features, eps=cfg.eps)
