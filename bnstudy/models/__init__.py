"""Architectures: MLP, CNN, VGG and ResNet, each with its norm layers from :func:`bnstudy.norm.make_norm`.

Every model takes an input shape (C, H, W) and a class count, so grey 28x28 and
RGB 32x32 inputs both work everywhere.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bnstudy.config import ModelConfig, NormConfig
from bnstudy.errors import ConfigError
from bnstudy.models.init import check as check_init
from bnstudy.models.init import init_weights
from bnstudy.norm import make_norm, needs_bias, variant

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": lambda: nn.ReLU(inplace=True),
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown model.activation '{name}'; choose one of: {', '.join(ACTIVATIONS)}"
        ) from None


class MLP(nn.Module):
    """Fully connected net: [linear → norm → activation] x depth, then a linear classifier.

    Defaults are Ioffe & Szegedy (2015, §4.1): 3 hidden layers of 100 sigmoid units.
    """

    def __init__(self, cfg: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        bias = needs_bias(norm)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_shape[0] * in_shape[1] * in_shape[2]
        for _ in range(cfg.depth):
            layers += [nn.Linear(fan_in, cfg.width, bias=bias), make_norm(norm, cfg.width, 1), activation(cfg.activation)]
            fan_in = cfg.width
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C, H, W) -> (B, classes)


def conv_block(c_in: int, c_out: int, norm: NormConfig, act: str, stride: int = 1) -> list[nn.Module]:
    """3x3 conv → norm → activation."""
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=needs_bias(norm)),
        make_norm(norm, c_out, 2),
        activation(act),
    ]


POOLS = ("max", "avg", "stride")


def conv_stack(plan: list, cfg: ModelConfig, norm: NormConfig, c_in: int, size: int) -> tuple[list[nn.Module], int]:
    """Conv blocks from a plan of channel counts and ``"M"`` (halve the resolution); returns (layers, c_out).

    ``model.pool`` decides how "M" halves: ``max`` / ``avg`` add a 2x2 pooling
    layer, ``stride`` gives the conv block before it stride 2 and adds no layer
    (the pooling control: same resolutions, no pooling statistics). A halving
    is skipped once the feature map is 1x1, so 28x28 inputs work too.
    """
    if cfg.pool not in POOLS:
        raise ConfigError(f"unknown model.pool '{cfg.pool}'; choose one of: {', '.join(POOLS)}")
    blocks: list[list[nn.Module]] = []
    for item in plan:
        if item == "M":
            if size >= 2 and blocks:
                size //= 2
                if cfg.pool == "stride":
                    blocks[-1][0].stride = (2, 2)
                else:
                    blocks.append([nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2)])
            continue
        blocks.append(conv_block(c_in, int(item), norm, cfg.activation))
        c_in = int(item)
    return [m for b in blocks for m in b], c_in


class CNN(nn.Module):
    """Small conv net: ``depth`` stages of conv → norm → activation, halving the resolution between stages.

    Stage i has ``width * 2**i`` channels; a global average pool and a linear
    classifier follow the last stage. The halving is a 2x2 max-pool by default
    (``model.pool``, see :func:`conv_stack`).
    """

    def __init__(self, cfg: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        plan: list = []
        for i in range(cfg.depth):
            plan += (["M"] if i > 0 else []) + [cfg.width * 2**i]
        layers, c_in = conv_stack(plan, cfg, norm, in_shape[0], in_shape[1])
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# VGG-A (VGG-11) layout in units of the base width (64 in the original); "M" = 2x2 max-pool.
VGG11 = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]


class VGG(nn.Module):
    """VGG-11 ("VGG-A", Simonyan & Zisserman 2015) for small images, as in Santurkar et al. (2018).

    ``width`` is the first layer's channel count (64 in the original); pooling
    follows ``model.pool`` (:func:`conv_stack`). Classifier:
    global pool + one linear layer, as usual for CIFAR-sized VGGs.
    """

    def __init__(self, cfg: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        plan = [item if item == "M" else cfg.width * int(item) for item in VGG11]
        layers, c_in = conv_stack(plan, cfg, norm, in_shape[0], in_shape[1])
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv → norm, identity or 1x1-projection shortcut.

    ``zero_init``: the residual branch starts at 0, so the block starts as
    act(shortcut(x)) (Goyal et al. 2017 for BN; for ``affine`` this is SkipInit,
    De & Smith 2020). The last norm's γ starts at 0; a norm without γ
    (``none``, ``bn_noaffine``) gets a learnable scalar gain, started at 0, at
    the end of the branch.

    ``gate="scalar"`` starts the branch at zero with the scalar gain for every variant, leaving each γ at 1
    (``model.branch_gate``: it tells the per-channel zero γ apart from the zero start itself).
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, norm: NormConfig, act: str, zero_init: bool = False, gate: str = "norm"
    ):
        super().__init__()
        bias = needs_bias(norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(norm, c_out, 2)
        self.act1 = activation(act)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, c_out, 2)
        self.act2 = activation(act)
        self.branch_gain: nn.Parameter | None = None
        if zero_init:
            gamma = dict(self.norm2.named_parameters(recurse=False)).get("weight") if gate == "norm" else None
            if gamma is not None:
                nn.init.zeros_(gamma)
            else:
                self.branch_gain = nn.Parameter(torch.zeros(()))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), make_norm(norm, c_out, 2)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.branch_gain is not None:
            out = out * self.branch_gain
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, §4.2): depth 6n+2, three stages of n blocks, widths w, 2w, 4w."""

    def __init__(self, cfg: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        if (cfg.depth - 2) % 6 != 0 or cfg.depth < 8:
            raise ConfigError(f"model.depth={cfg.depth} is not a CIFAR ResNet depth; use 6n+2 (8, 14, 20, 32, 56, ...)")
        n = (cfg.depth - 2) // 6
        w = cfg.width
        layers: list[nn.Module] = conv_block(in_shape[0], w, norm, cfg.activation)
        c_in = w
        for stage in range(3):
            c_out = w * 2**stage
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(BasicBlock(c_in, c_out, stride, norm, cfg.activation, cfg.zero_init_residual, cfg.branch_gate))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Bias(nn.Module):
    """A learnable scalar added to its input (Fixup's bias), started at 0."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class FixupBlock(nn.Module):
    """Basic block of Fixup (Zhang, Dauphin & Ma 2019, Fig. 1 right): scalar biases before each conv and each
    activation, a scalar multiplier (start 1) ending the branch, and the norm sites of ``model.norm`` (a variant
    without statistics: ``none`` is the paper's net) after each conv.

    ``act(shortcut(x + b1a) + s · norm2(conv2(act(norm1(conv1(x + b1a)) + b1b) + b2a)) + b2b)``

    The shortcut: the paper's CIFAR net subsamples and zero-pads the identity; this ResNet keeps its 1x1
    projection conv where the shape changes, and, as the authors' ImageNet net does, feeds it the branch's
    input ``x + b1a``. It is He-initialised and not rescaled (it lies outside the branch); its norm site is
    that of ``model.norm``. The convs carry no bias of their own: the scalar biases stand in for them.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: NormConfig, act: str):
        super().__init__()
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = Bias(), Bias(), Bias(), Bias()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, c_out, 2)
        self.act1 = activation(act)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, c_out, 2)
        self.scale = nn.Parameter(torch.ones(()))
        self.act2 = activation(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), make_norm(norm, c_out, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bias1a(x)
        out = self.act1(self.bias1b(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(self.bias2a(out))) * self.scale
        return self.act2(self.bias2b(out) + self.shortcut(x))


class FixupResNet(nn.Module):
    """The CIFAR ResNet of :class:`ResNet` with Fixup's blocks, a scalar bias before the stem's activation and
    one before the classifier; :meth:`fixup_init` sets its weights (``model.init=fixup``)."""

    def __init__(self, cfg: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        if (cfg.depth - 2) % 6 != 0 or cfg.depth < 8:
            raise ConfigError(f"model.depth={cfg.depth} is not a CIFAR ResNet depth; use 6n+2 (8, 14, 20, 32, 56, ...)")
        n, w = (cfg.depth - 2) // 6, cfg.width
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], w, 3, padding=1, bias=False), make_norm(norm, w, 2), Bias(), activation(cfg.activation)]
        c_in = w
        for stage in range(3):
            c_out = w * 2**stage
            for i in range(n):
                layers.append(FixupBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1, norm, cfg.activation))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), Bias(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def blocks(self) -> list[FixupBlock]:
        """The residual blocks, in forward order."""
        return [m for m in self.features if isinstance(m, FixupBlock)]

    @torch.no_grad()
    def fixup_init(self, m: int = 2) -> None:
        """Fixup's rule for L branches of m layers each: He init, the first m-1 convs of every branch scaled by
        L^(-1/(2m-2)) (1/3 for ResNet-20: L = 9, m = 2), each branch's last conv and the classifier at 0."""
        blocks = self.blocks()
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
        factor = len(blocks) ** (-1.0 / (2 * m - 2))
        for b in blocks:
            b.conv1.weight.mul_(factor)
            nn.init.zeros_(b.conv2.weight)
        linear = self.head[-1]
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)


def check_resnet_options(cfg) -> None:
    """Refuse, in one line, ``model.init=fixup`` and ``model.branch_gate`` where they cannot act (``cfg``: a RunConfig)."""
    m = cfg.model
    if m.init == "fixup":
        if m.name != "resnet":
            raise ConfigError(f"model.init=fixup is defined for model=resnet only (got model={m.name}); pick another model.init")
        v = variant(cfg.norm.name)
        if v.centers or v.scales or v.running_stats:
            raise ConfigError(
                f"model.init=fixup replaces normalization, but norm={cfg.norm.name} computes statistics; use norm=none (or a variant without statistics)"
            )
        if m.zero_init_residual:
            raise ConfigError("model.init=fixup already starts every residual branch at 0; drop model.zero_init_residual=true")
    if m.branch_gate not in ("norm", "scalar"):
        raise ConfigError(f"unknown model.branch_gate '{m.branch_gate}'; choose norm or scalar")
    if m.branch_gate != "norm" and not (m.name == "resnet" and m.zero_init_residual):
        raise ConfigError("model.branch_gate acts only on model=resnet with model.zero_init_residual=true; set both or drop it")


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "vgg": VGG, "resnet": ResNet}


def build_model(cfg: ModelConfig, norm: NormConfig, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Instantiate ``cfg.name`` for inputs of ``in_shape`` (C, H, W)."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model '{cfg.name}'; choose one of: {', '.join(MODELS)}")
    if cfg.depth < 1:
        raise ConfigError(f"model.depth must be >= 1 (got {cfg.depth})")
    if cfg.width < 1:
        raise ConfigError(f"model.width must be >= 1 (got {cfg.width})")
    activation(cfg.activation)  # validates the names before any layer is built
    check_init(cfg.init)
    model = (FixupResNet if cfg.init == "fixup" and cfg.name == "resnet" else MODELS[cfg.name])(cfg, norm, in_shape, num_classes)
    init_weights(model, cfg.init, cfg.activation)
    return model


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
