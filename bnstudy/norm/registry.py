"""The registry of normalization variants: how each one is built, and what it is.

What a variant *is* is declared once, here, when it registers; every part that
needs to know asks its entry (:func:`variant`), never a list of names:

- ``shift``: the layer adds its own learnable shift, so the layer feeding it needs no bias;
- ``centers``: it subtracts a mean of its current input: ``"batch"`` (each feature's,
  over the batch, like BN), ``"example"`` (each example's, over its features, like
  LayerNorm) or None. Only ``"batch"`` centering cancels a bias of the feeding layer;
- ``scales``: it divides by a standard deviation of its current input, over the same
  ``"batch"`` or ``"example"`` axes, or None. The probes derive from ``centers`` and
  ``scales`` where lr/‖W‖² is the effective learning rate (the output is invariant to
  W -> cW: see :func:`bnstudy.train.probes.scale_invariant`);
- ``standardizes``: shorthand for both, as a variant that standardizes declares them
  (``standardizes="batch"`` is ``centers="batch", scales="batch"``); read back, the
  axis when a variant both centers and scales over it, else None;
- ``running_stats``: it evaluates with running statistics (``running_mean``,
  ``running_var``, or only the one it uses) that training updates with its
  ``momentum``, as torch's BatchNorm does; precise BN (``train.precise_bn``)
  recomputes them, and only for these variants is ``train.precise_bn`` part of a
  run's identity. A module whose statistics have
  stopped updating (``bn_frozen`` once frozen) says so with a true ``frozen`` attribute;
- ``color``: its colour in every figure (None: a stable colour picked from its name).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from bnstudy.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the registry needs neither torch nor the config at run time
    from torch import nn

    from bnstudy.config import NormConfig

STANDARDIZES = ("batch", "example")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass(frozen=True)
class Variant:
    """A registered normalization variant: its builder and what it is (see the module docstring)."""

    build: Callable[[int, int, NormConfig], nn.Module]  # (num_features, dim, cfg) -> module
    shift: bool
    running_stats: bool = False
    centers: str | None = None
    scales: str | None = None
    color: str | None = None

    @property
    def standardizes(self) -> str | None:
        """The axis it both centers and scales over (``"batch"``, ``"example"``), else None."""
        return self.centers if self.centers == self.scales else None

    @property
    def cancels_bias(self) -> bool:
        """Whether a bias of the feeding layer leaves its output unchanged (per-feature batch centering)."""
        return self.centers == "batch"


NORMS: dict[str, Variant] = {}


def register(
    name: str,
    shift: bool,
    running_stats: bool = False,
    *,
    standardizes: str | None = None,
    centers: str | None = None,
    scales: str | None = None,
    color: str | None = None,
) -> Callable:
    """Class/function decorator adding a variant to the registry under ``name``, with what it is."""
    for key, axis in (("standardizes", standardizes), ("centers", centers), ("scales", scales)):
        if axis is not None and axis not in STANDARDIZES:
            raise ValueError(f"{key} must be None or one of {STANDARDIZES}, got {axis!r}")
    if standardizes is not None:
        if centers is not None or scales is not None:
            raise ValueError("give standardizes, or centers and scales, not both")
        centers = scales = standardizes
    if color is not None and not _COLOR.fullmatch(color):
        raise ValueError(f"color must be '#rrggbb', got {color!r}")

    def deco(builder):
        NORMS[name] = Variant(builder, shift, running_stats, centers, scales, color)
        return builder

    return deco


def variant(name: str) -> Variant:
    """Look up a variant; unknown names are a one-line error listing the valid ones."""
    try:
        return NORMS[name]
    except KeyError:
        raise ConfigError(
            f"unknown norm '{name}'; choose one of: {', '.join(sorted(NORMS))}, or name the module that registers it "
            "with plugins=[MODULE] (docs/plugins.md)"
        ) from None
