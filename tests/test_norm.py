"""Each basic norm checked numerically against its definition."""
import pytest
import torch

from bnstudy.config import NormConfig
from bnstudy.errors import ConfigError
from bnstudy.norm import NORMS, make_norm, needs_bias


def batch(dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (64, 8) if dim == 1 else (16, 8, 5, 5)
    return torch.randn(shape, generator=g) * 3 + 2  # far from standardized on purpose


def per_feature(x: torch.Tensor) -> torch.Tensor:
    # (B, F) -> (F, B); (B, C, H, W) -> (C, B*H*W)
    return x.transpose(0, 1).reshape(x.shape[1], -1)


@pytest.mark.parametrize("dim", [1, 2])
def test_bn_standardizes_in_training_and_uses_running_stats_in_eval(dim):
    layer = make_norm(NormConfig(name="bn"), 8, dim)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    x = batch(dim)
    y = per_feature(layer.train()(x))
    assert torch.allclose(y.mean(1), torch.zeros(8), atol=1e-5)
    assert torch.allclose(y.std(1, unbiased=False), torch.ones(8), atol=1e-3)
    layer.eval()
    rm, rv = layer.running_mean, layer.running_var
    shape = (1, -1) if dim == 1 else (1, -1, 1, 1)
    expected = (x - rm.view(shape)) / torch.sqrt(rv.view(shape) + layer.eps)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    # running stats moved by momentum 0.1 from (0, 1) towards the batch's
    assert 0.1 < float(rm.mean()) < 0.3


@pytest.mark.parametrize("dim", [1, 2])
def test_affine_is_exactly_gamma_x_plus_beta(dim):
    layer = make_norm(NormConfig(name="affine"), 8, dim)
    assert len(list(layer.buffers())) == 0
    x = batch(dim)
    assert torch.equal(layer(x), x)  # gamma=1, beta=0 at init
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight))
        layer.bias.copy_(torch.randn_like(layer.bias))
    shape = (1, -1) if dim == 1 else (1, -1, 1, 1)
    gamma, beta = layer.weight.reshape(-1).view(shape), layer.bias.reshape(-1).view(shape)
    assert torch.allclose(layer(x), gamma * x + beta, atol=1e-6)
    assert torch.allclose(layer.eval()(x), gamma * x + beta, atol=1e-6)  # no train/eval difference


@pytest.mark.parametrize("dim", [1, 2])
def test_none_is_identity_without_parameters(dim):
    layer = make_norm(NormConfig(name="none"), 8, dim)
    x = batch(dim)
    assert torch.equal(layer(x), x)
    assert not list(layer.parameters()) and not list(layer.buffers())


@pytest.mark.variants
def test_bias_rule_and_tags():
    assert not needs_bias(NormConfig(name="bn")) and not needs_bias(NormConfig(name="affine"))
    assert needs_bias(NormConfig(name="none"))
    for name in NORMS:
        assert make_norm(NormConfig(name=name), 8, 2).norm_kind == name


def test_unknown_norm_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown norm 'bnx'; choose one of: .*affine.*bn"):
        make_norm(NormConfig(name="bnx"), 8, 1)
