"""Weight initialization of every Linear and Conv layer, chosen by ``model.init``.

One function, :func:`init_weights`, applied once after a model is built. For a
weight W of shape (out, in) or (out, in, k, k), fan_in = in·k² and
fan_out = out·k², and every element is drawn independently:

- ``default``: torch's own init, left untouched (``nn.Linear``/``nn.Conv2d``:
  kaiming_uniform with a = √5, so Var(W) = 1/(3·fan_in), biases
  U(−1/√fan_in, 1/√fan_in)). What every committed run before this option used.
- ``lecun``: W ~ N(0, 1/fan_in) (LeCun et al. 1998): keeps the variance of a
  linear layer's output equal to its input's.
- ``xavier``: W ~ N(0, 2/(fan_in + fan_out)) (Glorot & Bengio 2010): the
  compromise between forward and backward variance, meant for sigmoid/tanh.
- ``he``: W ~ N(0, 2/fan_in) (He et al. 2015): the factor 2 makes up for
  ReLU zeroing half of its inputs, so the signal keeps its scale with depth.
- ``fixup`` (``model=resnet`` only; Zhang, Dauphin & Ma 2019): He init, then
  each residual branch's first conv scaled by L^(−1/(2m−2)) for L branches of
  m = 2 convs, its last conv and the classifier at 0, with scalar biases and
  multipliers in the net (:class:`bnstudy.models.FixupResNet`).
- ``orthogonal``: W reshaped to (out, fan_in) is a random (semi-)orthogonal
  matrix times the activation's gain g (1 for sigmoid, √2 for ReLU, 5/3 for
  tanh; Saxe et al. 2014), so Var(W) = g²/max(out, fan_in).

For every option but ``default``, biases start at 0. Norm layers are not
touched: γ = 1 and β = 0 are already their start, and variants with a
data-dependent start (``affine_ddi``) set it themselves.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bnstudy.errors import ConfigError

INITS = ("default", "lecun", "xavier", "he", "orthogonal", "fixup")
_GAINS = {"sigmoid": 1.0, "relu": math.sqrt(2.0), "tanh": 5.0 / 3.0}


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear (out, in) or Conv (out, in, k, k) weight."""
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def weight_std(name: str, weight: torch.Tensor, activation: str = "relu") -> float:
    """The standard deviation of one weight element under init ``name`` (not for ``default``)."""
    fan_in, fan_out = fans(weight)
    if name == "lecun":
        return math.sqrt(1.0 / fan_in)
    if name == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if name == "he":
        return math.sqrt(2.0 / fan_in)
    if name == "orthogonal":
        return _GAINS.get(activation, 1.0) / math.sqrt(max(weight.shape[0], fan_in))
    raise ConfigError(f"unknown model.init '{name}'; choose one of: {', '.join(INITS)}")


def check(name: str) -> None:
    """One-line error for an unknown init name."""
    if name not in INITS:
        raise ConfigError(f"unknown model.init '{name}'; choose one of: {', '.join(INITS)}")


@torch.no_grad()
def init_weights(model: nn.Module, name: str, activation: str = "relu") -> None:
    """Re-initialise the weights of every Linear/Conv2d of ``model`` by ``name``; biases to 0."""
    check(name)
    if name == "default":
        return
    if name == "fixup":
        if not hasattr(model, "fixup_init"):
            raise ConfigError("model.init=fixup is defined for model=resnet only; pick another model.init")
        model.fixup_init()
        return
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        if name == "orthogonal":
            nn.init.orthogonal_(m.weight, gain=_GAINS.get(activation, 1.0))
        else:
            m.weight.normal_(0.0, weight_std(name, m.weight, activation))
        if m.bias is not None:
            m.bias.zero_()
