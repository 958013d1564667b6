"""Every model x norm builds and trains a step on grey and RGB inputs; parameter counts are pinned."""
import pytest
import torch
import yaml

from bnstudy.config import ModelConfig, NormConfig
from bnstudy.models import build_model, count_params
from bnstudy.norm import NORMS, norm_modules

from .conftest import ROOT

GREY, RGB = (1, 28, 28), (3, 32, 32)

# (model, input) -> params for bn / affine / bn_center / bn_scale (identical: all learn gamma, beta) and none (biases instead)
PINNED = {
    ("mlp", GREY): (100010, 99710),
    ("mlp", RGB): (328810, 328510),
    ("cnn", GREY): (94186, 93962),
    ("cnn", RGB): (94762, 94538),
    ("vgg", GREY): (578810, 578122),
    ("vgg", RGB): (579098, 578410),
    ("resnet", GREY): (272186, 271402),
    ("resnet", RGB): (272474, 271690),
}


def model_cfg(name: str) -> ModelConfig:
    return ModelConfig(**yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text()))


@pytest.mark.variants
@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("model", ["mlp", "cnn", "vgg", "resnet"])
@pytest.mark.parametrize("shape", [GREY, RGB], ids=["grey28", "rgb32"])
def test_forward_backward(model, norm, shape):
    torch.manual_seed(0)
    net = build_model(model_cfg(model), NormConfig(name=norm), shape, 10)
    x = torch.randn(8, *shape)
    out = net(x)
    assert out.shape == (8, 10)
    torch.nn.functional.cross_entropy(out, torch.arange(8)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("key", sorted(PINNED), ids=lambda k: f"{k[0]}-{k[1][0]}ch" if isinstance(k, tuple) else str(k))
def test_pinned_parameter_counts(key):
    model, shape = key
    norms = ("bn", "affine", "none", "bn_center", "bn_scale")
    counts = {n: count_params(build_model(model_cfg(model), NormConfig(name=n), shape, 10)) for n in norms}
    assert (counts["bn"], counts["none"]) == PINNED[key]
    assert counts["affine"] == counts["bn_center"] == counts["bn_scale"] == counts["bn"]  # γ, β per channel, no bias before


def test_ioffe_mlp_layout():
    net = build_model(model_cfg("mlp"), NormConfig(name="bn"), GREY, 10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 100), (100, 10)]
    assert [m.bias is None for m in linears] == [True, True, True, False]  # BN's beta replaces the bias
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in net.modules()) == 3
    assert len(norm_modules(net)) == 3


@pytest.mark.parametrize("model", ["mlp", "cnn", "vgg", "resnet"])
def test_none_models_have_no_norm_modules(model):
    net = build_model(model_cfg(model), NormConfig(name="none"), RGB, 10)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    for _, m in norm_modules(net):
        assert not list(m.parameters()) and not list(m.buffers())
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert all(m.bias is not None for m in layers)


def test_bad_model_values_are_config_errors():
    from bnstudy.errors import ConfigError

    with pytest.raises(ConfigError, match="model.depth must be >= 1"):
        build_model(ModelConfig(depth=0), NormConfig(), GREY, 10)
    with pytest.raises(ConfigError, match="unknown model.activation 'gelu'"):
        build_model(ModelConfig(activation="gelu"), NormConfig(), GREY, 10)
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model(ModelConfig(name="resnet", depth=21, width=4), NormConfig(), GREY, 10)
