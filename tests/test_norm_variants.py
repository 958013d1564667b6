"""Each normalization variant checked numerically against its definition (CPU, small tensors)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnstudy.config import NormConfig
from bnstudy.norm import NORMS, make_norm, needs_bias

from .conftest import PLUGIN_CONFS

CONF_NORM = Path(__file__).resolve().parents[1] / "conf" / "norm"
VARIANTS = sorted(NORMS)  # every registered variant, a plugin's included: the contract below holds for each
C = 6


def build(name: str, dim: int, num_features: int = C, **kw) -> nn.Module:
    return make_norm(NormConfig(name=name, **kw), num_features, dim)


def sample(dim: int, seed: int = 0, num_features: int = C) -> torch.Tensor:
    # off-centre, non-unit scale per channel, so standardizing is visible: (B, C) or (B, C, H, W)
    g = torch.Generator().manual_seed(seed)
    shape = (64, num_features) if dim == 1 else (8, num_features, 5, 5)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    view = (1, -1) + (1,) * (len(shape) - 2)
    loc = torch.linspace(-3, 3, num_features, dtype=torch.float64).view(view)
    scale = torch.linspace(0.5, 4, num_features, dtype=torch.float64).view(view)
    return x * scale + loc


def channel_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased std over batch (and spatial) axes."""
    dims = (0,) if y.dim() == 2 else (0, 2, 3)
    return y.mean(dims), y.std(dims, unbiased=False)


def torch_bn(dim: int, m: nn.Module) -> nn.Module:
    """torch's BatchNorm with the same γ, β, ε, momentum as the BN-like variant ``m``."""
    bn = (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(C, eps=m.eps, momentum=m.momentum).double()
    bn.load_state_dict({k: v for k, v in m.state_dict().items() if k in bn.state_dict()}, strict=False)
    return bn


def randomize_affine(m: nn.Module) -> None:
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 2.0, m.weight.numel()).view_as(m.weight))
        m.bias.copy_(torch.linspace(-1.0, 1.0, m.bias.numel()).view_as(m.bias))


# --- registry and configs ---------------------------------------------------


@pytest.mark.variants
def test_every_conf_is_registered_and_vice_versa():
    names = {}
    for path in sorted(p for d in (CONF_NORM, *(c / "norm" for c in PLUGIN_CONFS)) for p in d.glob("*.yaml")):
        d = OmegaConf.to_container(OmegaConf.load(path))
        assert d["name"] == path.stem, f"{path}: name: must be the file's name"
        NormConfig(**d)  # every key is a NormConfig field
        names[d["name"]] = path
    missing = sorted(set(NORMS) - set(names))
    assert not missing, f"registered without a conf/norm/<name>.yaml (norm=<name> cannot pick them): {missing}"
    assert set(names) <= set(NORMS), f"a YAML names no registered variant: {sorted(set(names) - set(NORMS))}"


@pytest.mark.variants
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_builds_runs_and_carries_kind(name, dim):
    m = build(name, dim).double()
    assert m.norm_kind == name
    x = sample(dim).requires_grad_()
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    m.eval()
    assert m(sample(dim, seed=1)).shape == x.shape


# --- the contract: what a variant declares (bnstudy.norm.registry) is what it does --------------------------------
# Probes, precise BN and the models' bias rule act on the declarations alone, so each one is checked against the
# module's behaviour here, for every registered variant. A new variant that fails one of these declares wrongly.


def warm(name: str, dim: int, **kw) -> nn.Module:
    """The variant after one training forward (affine_ddi initialises from its first batch), in float64, ε tiny."""
    m = build(name, dim, eps=1e-12, groups=2, **kw).double().train()  # groupnorm: 3 channels a group, not 1
    torch.manual_seed(0)
    m(sample(dim, seed=5))
    return m


def out(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A training-mode output with a fixed RNG (noisy_bn draws its noise from it), the module left as it was."""
    m = copy.deepcopy(m)
    torch.manual_seed(1)
    with torch.no_grad():
        return m(x)


def per(axis: str, dim: int, values: torch.Tensor) -> torch.Tensor:
    """``values`` laid out per feature/channel (``"batch"`` statistics see a constant) or per example (``"example"``)."""
    spatial = (1, 1) if dim == 2 else ()
    return values.view((1, C, *spatial) if axis == "batch" else (-1, 1, *spatial))


@pytest.mark.variants
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", VARIANTS)
def test_centers_and_scales_are_what_the_output_ignores(name, dim):
    """``centers=A``: adding a constant per A-group to the input leaves the output unchanged; ``scales=A``: so does
    multiplying by one (A: "batch", a constant per feature; "example", one per example); an undeclared axis is not."""
    what, m = NORMS[name], warm(name, dim)
    x = sample(dim)
    base = out(m, x)
    g = torch.Generator().manual_seed(3)
    for axis in ("batch", "example"):
        shift = per(axis, dim, torch.randn(x.shape[0] if axis == "example" else C, generator=g, dtype=torch.float64) * 3)
        scale = per(axis, dim, torch.rand(x.shape[0] if axis == "example" else C, generator=g, dtype=torch.float64) * 3 + 0.5)
        shifted = torch.allclose(out(m, x + shift), base, atol=1e-6)
        scaled = torch.allclose(out(m, x * scale), base, atol=1e-6)
        assert shifted == (what.centers == axis), f"{name} declares centers={what.centers!r}; a shift per {axis} group {'leaves' if shifted else 'changes'} its output"
        if what.centers in (None, axis):  # centring over another axis can hide a scale's effect on the mean
            assert scaled == (what.scales == axis), f"{name} declares scales={what.scales!r}; a scale per {axis} group {'leaves' if scaled else 'changes'} its output"


@pytest.mark.variants
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", VARIANTS)
def test_shift_is_declared_exactly_when_a_parameter_shifts_the_output(name, dim):
    """``shift=True``: one of its parameters adds a learnable constant per feature to the output, as a bias of the
    feeding layer would (so that layer goes without one: ``needs_bias``)."""
    m, x = warm(name, dim), sample(dim)
    base = out(m, x)
    shifts = False
    for pname, _ in m.named_parameters():
        moved = copy.deepcopy(m)
        with torch.no_grad():
            dict(moved.named_parameters())[pname].add_(0.5)
        diff = out(moved, x) - base  # (B, C) or (B, C, H, W): the same for every example and position, and not zero
        same = diff.flatten(2).transpose(1, 2).reshape(-1, C) if dim == 2 else diff
        shifts |= bool(torch.allclose(same, same[:1].expand_as(same), atol=1e-9) and same.abs().min() > 1e-6)
    assert shifts == NORMS[name].shift, f"{name} declares shift={NORMS[name].shift}, but a parameter {'does' if shifts else 'does not'} shift its output"
    assert needs_bias(NormConfig(name=name)) == (not shifts)


@pytest.mark.variants
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", VARIANTS)
def test_running_statistics_are_declared_exactly_when_training_updates_them(name, dim):
    """``running_stats=True``: a training forward updates ``running_mean`` and/or ``running_var``, which precise BN
    recomputes; a variant that updates them without declaring it would be evaluated with statistics precise BN skips."""
    m = build(name, dim).double().train()
    before = {n: b.clone() for n, b in m.named_buffers() if n.split(".")[-1] in ("running_mean", "running_var")}
    torch.manual_seed(0)
    m(sample(dim))
    updated = any(not torch.equal(b, dict(m.named_buffers())[n]) for n, b in before.items())
    assert updated == NORMS[name].running_stats, f"{name} declares running_stats={NORMS[name].running_stats}, but training {'updates' if updated else 'updates no'} running_mean/running_var"


# --- bn_noaffine --------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2])
def test_bn_noaffine_standardizes_without_parameters(dim):
    m = build("bn_noaffine", dim).double()
    assert list(m.parameters()) == []
    mean, std = channel_stats(m(sample(dim)))
    assert torch.allclose(mean, torch.zeros(C, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(std, torch.ones(C, dtype=torch.float64), atol=1e-4)


# --- bn_center / bn_scale --------------------------------------------------------


def per_channel(v: torch.Tensor, dim: int) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (dim * 2 - 2))  # (C,) -> (1, C) or (1, C, 1, 1)


def center_ref(m: nn.Module, x: torch.Tensor, mu: torch.Tensor, dim: int) -> torch.Tensor:
    """y = γ (x − μ) + β."""
    return per_channel(m.weight, dim) * (x - per_channel(mu, dim)) + per_channel(m.bias, dim)


def scale_ref(m: nn.Module, x: torch.Tensor, var: torch.Tensor, dim: int) -> torch.Tensor:
    """y = γ x / sqrt(σ² + ε) + β."""
    return per_channel(m.weight, dim) * x / (per_channel(var, dim) + m.eps).sqrt() + per_channel(m.bias, dim)


def batch_var(x: torch.Tensor) -> torch.Tensor:
    return channel_stats(x)[1] ** 2  # biased, centred: what BN divides by


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name,buffer", [("bn_center", "running_mean"), ("bn_scale", "running_var")])
def test_bn_center_and_bn_scale_match_their_definitions(name, buffer, dim):
    m = build(name, dim).double()
    randomize_affine(m)
    assert set(dict(m.named_buffers())) == {buffer}  # only the statistic it uses
    bn = torch_bn(dim, m)  # keeps torch's running statistics from the same batches

    def ref(x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mu, var = stats
        return center_ref(m, x, mu, dim) if name == "bn_center" else scale_ref(m, x, var, dim)

    for step in range(3):  # training: this batch's statistics, with their gradient
        x = sample(dim, seed=step).requires_grad_()
        target = torch.randn_like(x)
        y = m(x)
        (gx,) = torch.autograd.grad((y * target).sum(), x)
        x_ref = x.detach().clone().requires_grad_()
        mu, std = channel_stats(x_ref)
        y_ref = ref(x_ref, (mu, std**2))
        (gx_ref,) = torch.autograd.grad((y_ref * target).sum(), x_ref)
        assert torch.allclose(y, y_ref, atol=1e-10) and torch.allclose(gx, gx_ref, atol=1e-10), step
        bn(x.detach())
        assert torch.allclose(getattr(m, buffer), getattr(bn, buffer), atol=1e-12), step  # as torch's BN keeps it

    m.eval()
    x = sample(dim, seed=5)
    stats = (m.running_mean, None) if name == "bn_center" else (None, m.running_var)
    assert torch.allclose(m(x), ref(x, stats), atol=1e-10)  # evaluation: the running statistic
    assert torch.allclose(m(x[:1]), ref(x[:1], stats)[:1], atol=1e-10)  # no batch dependence


@pytest.mark.parametrize("dim", [1, 2])
def test_bn_center_cancels_a_shift_but_not_a_scale(dim):
    m = build("bn_center", dim).double()
    randomize_affine(m)
    x, shift = sample(dim), per_channel(torch.linspace(-5, 5, C, dtype=torch.float64), dim)
    y = m(x)
    assert torch.allclose(m(x + shift), y, atol=1e-10)  # a bias of the feeding layer cancels
    beta = per_channel(m.bias, dim)
    assert torch.allclose(m(3 * x) - beta, 3 * (y - beta), atol=1e-10)  # the output scales with the input
    assert channel_stats(y)[1].sub(channel_stats(x)[1] * m.weight.abs()).abs().max() < 1e-10  # std: |γ| std(x)


@pytest.mark.parametrize("dim", [1, 2])
def test_bn_scale_cancels_a_scale_but_not_a_shift(dim):
    m = build("bn_scale", dim, eps=1e-12).double()  # invariance is exact up to ε
    randomize_affine(m)
    x, shift = sample(dim), per_channel(torch.linspace(-5, 5, C, dtype=torch.float64), dim)
    y = m(x)
    assert torch.allclose(m(3 * x), y, atol=1e-9)  # W -> 3W leaves the output unchanged
    assert not torch.allclose(m(x + shift), y, atol=1e-3)  # a bias does not cancel
    mean, std = channel_stats(y - per_channel(m.bias, dim))
    assert torch.allclose(std, m.weight.detach().abs(), atol=1e-9)  # unit std before γ, β ...
    x_mean, x_std = channel_stats(x)
    assert torch.allclose(mean, m.weight.detach() * x_mean / x_std, atol=1e-9)  # ... but the mean is kept, scaled


# --- affine_ddi ----------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2])
def test_affine_ddi_first_forward_standardizes_then_plain_affine(dim):
    m = build("affine_ddi", dim).double()
    m.eval()
    x0 = sample(dim)
    assert torch.equal(m(x0), x0)  # evaluation does not trigger the init
    assert not bool(m.initialized)

    m.train()
    mean, std = channel_stats(m(x0))
    assert torch.allclose(mean, torch.zeros(C, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(std, torch.ones(C, dtype=torch.float64), atol=1e-4)
    assert bool(m.initialized)
    gamma, beta = m.weight.detach().clone(), m.bias.detach().clone()

    x1 = sample(dim, seed=1) * 3 + 1  # different statistics: a re-init would change γ, β
    assert torch.allclose(m(x1), gamma * x1 + beta, rtol=0, atol=1e-12)
    assert torch.equal(m.weight, gamma) and torch.equal(m.bias, beta)

    fresh = build("affine_ddi", dim).double()
    fresh.load_state_dict(m.state_dict())
    fresh.train()
    assert torch.allclose(fresh(x1), gamma * x1 + beta, rtol=0, atol=1e-12)
    assert torch.equal(fresh.weight, gamma) and torch.equal(fresh.bias, beta)


# --- bn_nograd -----------------------------------------------------------------


def _layer_then_norm(dim: int, norm: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.Linear(4, C, bias=False) if dim == 1 else nn.Conv2d(3, C, 3, padding=1, bias=False)
    z = torch.randn((64, 4) if dim == 1 else (8, 3, 5, 5), dtype=torch.float64) * 2 + 1
    return nn.Sequential(layer.double(), norm), z


def _grads(net: nn.Module, z: torch.Tensor, target: torch.Tensor):
    z = z.clone().requires_grad_()
    net.zero_grad()
    y = net(z)
    (y * target).sum().backward()
    return y.detach(), z.grad, net[0].weight.grad.clone()


@pytest.mark.parametrize("dim", [1, 2])
def test_bn_nograd_forward_is_bn_backward_is_fixed_affine(dim):
    m = build("bn_nograd", dim).double()
    randomize_affine(m)
    bn = torch_bn(dim, m)
    net, z = _layer_then_norm(dim, m)
    net_bn = nn.Sequential(net[0], bn)
    gamma, beta = m.weight.detach().view((1, -1) + (1,) * (dim * 2 - 2)), m.bias.detach().view(
        (1, -1) + (1,) * (dim * 2 - 2)
    )

    # reference: this batch's μ, σ as plain constant tensors, then γ x̂ + β
    with torch.no_grad():
        h = net[0](z)
        mu, std = channel_stats(h)
        shape = (1, -1) + (1,) * (h.dim() - 2)
        mu, sigma = mu.view(shape), (std.view(shape) ** 2 + m.eps).sqrt()

    class FixedAffine(nn.Module):
        def forward(self, h):
            return gamma * (h - mu) / sigma + beta

    net_ref = nn.Sequential(net[0], FixedAffine())
    target = torch.randn_like(h)

    y, gz, gw = _grads(net, z, target)
    y_bn, gz_bn, gw_bn = _grads(net_bn, z, target)
    y_ref, gz_ref, gw_ref = _grads(net_ref, z, target)

    assert torch.allclose(y, y_bn, atol=1e-10)  # forward: BN
    assert torch.allclose(m.running_mean, bn.running_mean, atol=1e-12)
    assert torch.allclose(m.running_var, bn.running_var, atol=1e-12)
    assert torch.allclose(gz, gz_ref, atol=1e-10) and torch.allclose(gw, gw_ref, atol=1e-10)
    assert not torch.allclose(gz, gz_bn, atol=1e-3) and not torch.allclose(gw, gw_bn, atol=1e-3)

    m.eval(), bn.eval()
    x = sample(dim, seed=2)
    assert torch.allclose(m(x), bn(x), atol=1e-10)


# --- bn_frozen -----------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2])
def test_bn_frozen_is_bn_then_fixed_affine(dim):
    m = build("bn_frozen", dim, freeze_after=3).double()
    randomize_affine(m)
    bn = torch_bn(dim, m)
    for step in range(3):
        x = sample(dim, seed=step)
        assert torch.allclose(m(x), bn(x), atol=1e-10), step
        assert torch.allclose(m.running_mean, bn.running_mean, atol=1e-12)
        assert torch.allclose(m.running_var, bn.running_var, atol=1e-12)
    assert m.frozen

    rm, rv = m.running_mean.clone(), m.running_var.clone()
    shape = (1, -1) + (1,) * (dim * 2 - 2)
    for step in range(3, 5):
        x = sample(dim, seed=step) * 2 + 1
        expect = m.weight.view(shape) * (x - rm.view(shape)) / (rv.view(shape) + m.eps).sqrt() + m.bias.view(shape)
        y = m(x)
        assert torch.allclose(y, expect, atol=1e-10)
        assert not torch.allclose(y, bn(x), atol=1e-3)  # ordinary BN would differ now
        assert torch.equal(m.running_mean, rm) and torch.equal(m.running_var, rv)

    fresh = build("bn_frozen", dim, freeze_after=3).double()
    fresh.load_state_dict(m.state_dict())
    assert fresh.frozen
    fresh(x)
    assert torch.equal(fresh.running_mean, rm)


# --- noisy_bn ------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("mean_max,std_max", [(0.5, 0.5), (0.2, 0.1)])
def test_noisy_bn_noise_ranges_and_eval(dim, mean_max, std_max):
    m = build("noisy_bn", dim, noise_mean_max=mean_max, noise_std_max=std_max).double()
    bn = torch_bn(dim, m)
    x = sample(dim)
    z = bn(x).detach()  # γ = 1, β = 0: the standardized x̂
    _, z_std = channel_stats(z)
    shifts, scales = [], []
    torch.manual_seed(0)
    for _ in range(300):
        y = m(x).detach()
        assert not torch.allclose(y, z, atol=1e-3)
        y_mean, y_std = channel_stats(y)  # y = s_c x̂ + m_c, and x̂ has mean 0 per channel
        shifts.append(y_mean)
        scales.append(y_std / z_std)
    shifts, scales = torch.stack(shifts), torch.stack(scales)  # (draws, C)

    assert (shifts.abs() <= mean_max + 1e-9).all() and (shifts.abs() > 0).all()
    assert shifts.abs().max() > 0.9 * mean_max  # the whole range is used
    assert abs(shifts.mean()) < 0.05 * mean_max + 0.01
    assert abs(shifts.std() - mean_max / 3**0.5) < 0.1 * mean_max  # U(-m, m)
    assert (scales >= 1 - std_max - 1e-9).all() and (scales <= 1 + std_max + 1e-9).all()
    assert abs(scales.mean() - 1) < 0.05 * std_max + 0.01
    assert abs(scales.std() - std_max / 3**0.5) < 0.1 * std_max  # U(1 - s, 1 + s)
    assert shifts.std(0).min() > 0  # redrawn every forward, per channel

    # redrawing from the global RNG: reseeding reproduces a draw (what makes resume exact)
    torch.manual_seed(7)
    a = m(x)
    torch.manual_seed(7)
    assert torch.equal(a, m(x))

    # evaluation: plain BN with the same running statistics, no noise
    for _ in range(301):
        bn(x)
    m.eval(), bn.eval()
    xe = sample(dim, seed=3)
    assert torch.allclose(m(xe), bn(xe), atol=1e-10)
    assert torch.equal(m(xe), m(xe))


# --- layernorm / groupnorm -----------------------------------------------------


def _group_stats(y: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = y.reshape(y.shape[0], groups, -1)  # (B, G, C/G * H * W)
    return g.mean(-1), g.std(-1, unbiased=False)


@pytest.mark.parametrize("dim", [1, 2])
def test_layernorm_per_example_standardization(dim):
    m = build("layernorm", dim).double()
    assert m.weight.shape == (C,) and m.bias.shape == (C,)
    x = sample(dim)
    mean, std = _group_stats(m(x), 1)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-6)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)

    randomize_affine(m)
    flat = x.reshape(x.shape[0], -1)
    x_hat = ((flat - flat.mean(1, keepdim=True)) / (flat.var(1, unbiased=False, keepdim=True) + m.eps).sqrt())
    shape = (1, -1) + (1,) * (dim * 2 - 2)
    expect = m.weight.view(shape) * x_hat.view_as(x) + m.bias.view(shape)
    assert torch.allclose(m(x), expect, atol=1e-10)
    assert torch.allclose(m(x[:1]), expect[:1], atol=1e-10)  # no batch dependence


@pytest.mark.parametrize("channels,groups,expect", [(6, 8, 6), (12, 8, 6), (16, 8, 8), (10, 4, 2), (7, 8, 7), (6, 1, 1)])
def test_groupnorm_group_count(channels, groups, expect):
    assert build("groupnorm", 2, channels, groups=groups).num_groups == expect


@pytest.mark.parametrize("dim", [1, 2])
def test_groupnorm_per_example_group_standardization(dim):
    m = build("groupnorm", dim, 12, groups=4, eps=1e-10).double()  # tiny ε: groups of 3 features may have small variance
    x = sample(dim, num_features=12)
    mean, std = _group_stats(m(x), 4)
    assert mean.shape == (x.shape[0], 4)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-6)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)
    per_channel, _ = _group_stats(m(x), 12)
    assert not torch.allclose(per_channel, torch.zeros_like(per_channel), atol=1e-3)  # groups, not single channels
