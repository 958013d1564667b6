"""Normalization variants and the one factory that builds them.

Every architecture asks :func:`make_norm` for its norm layers; none constructs
``nn.BatchNorm*`` itself. A variant is one class (or builder) registered under
its short config name with what it is (:mod:`bnstudy.norm.registry`), plus
``conf/norm/<name>.yaml``. ``bn``, ``affine`` and ``none`` live in
:mod:`bnstudy.norm.basic`, the others in :mod:`bnstudy.norm.variants`.

Every module the factory returns carries ``norm_kind`` (the variant name), so
probes and tests find norm sites, and what each one is, without ``isinstance``
checks on torch classes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from bnstudy.norm import basic, variants  # noqa: F401  (register the variants, in the order figures list them)
from bnstudy.norm.registry import NORMS, Variant, register, variant

if TYPE_CHECKING:
    from bnstudy.config import NormConfig

__all__ = ["NORMS", "Variant", "kind", "make_norm", "needs_bias", "norm_modules", "register", "variant"]


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


def kind(module: nn.Module) -> Variant:
    """The registry entry of a norm site built by :func:`make_norm`."""
    return variant(module.norm_kind)
