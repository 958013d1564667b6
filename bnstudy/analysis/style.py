"""What every figure shares: each variant's colour and order, axis labels, panels per factor combination, legends."""
from __future__ import annotations

import math
import warnings
import zlib
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bnstudy.analysis.aggregate import group_columns
from bnstudy.fmt import fmt

_FALLBACK = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]
MAX_PANELS = 16  # beyond this a figure stops being readable; extra panels are dropped with a warning
X_LABELS = {
    "step": "training step (optimizer updates)",
    "seconds": "training wall-clock time (s, evaluation excluded)",
}
FACTOR_LABELS = {
    "lr": "learning rate",
    "batch_size": "batch size (examples)",
    "depth": "depth (hidden layers)",
    "width": "width (units or channels)",
    "weight_decay": "weight decay",
    "momentum": "momentum",
    "steps": "budget (steps)",
    "freeze_after": "bn_frozen: steps before the statistics freeze",
}


def palette() -> dict[str, str]:
    """Colour of each registered variant that declares one, in registry order."""
    from bnstudy.norm import NORMS  # local: reading results needs no torch until a figure is drawn

    return {name: v.color for name, v in NORMS.items() if v.color}


def color(norm: str) -> str:
    """The colour of a norm variant: the one its registry entry declares, else a stable hash-picked one."""
    return palette().get(str(norm)) or _FALLBACK[zlib.crc32(str(norm).encode()) % len(_FALLBACK)]


def variant_order(norms: Sequence[Any]) -> list[str]:
    """Variants in palette order, unknown ones after them alphabetically."""
    names, known = {str(n) for n in norms}, palette()
    return [n for n in known if n in names] + sorted(names - set(known))


def facets(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> tuple[list[str], list[tuple]]:
    """Factors other than norm (and ``exclude``) that vary, and their value combinations.

    A factor that only some runs have (``freeze_after``: only ``bn_frozen``) makes
    no panel for the runs without it; :func:`select` draws those in every panel.
    """
    cols = [c for c in group_columns(runs) if c != "norm" and c not in exclude]
    if not cols:
        return [], [()]
    values = runs[cols].drop_duplicates()
    for c in cols:
        if values[c].notna().any():
            values = values[values[c].notna()]
    combos = list(values.sort_values(cols).itertuples(index=False, name=None))
    if len(combos) > MAX_PANELS:
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {MAX_PANELS}", stacklevel=3)
        combos = combos[:MAX_PANELS]
    return cols, combos


def select(df: pd.DataFrame, cols: list[str], combo: tuple) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for c, v in zip(cols, combo):
        mask &= ((df[c].astype(str) == str(v)) | df[c].isna()).to_numpy()  # no value: the factor does not apply
    return df[mask]


def panel_title(cols: list[str], combo: tuple) -> str:
    return ", ".join(f"{c}={fmt(v)}" for c, v in zip(cols, combo))


def mark_freeze(ax, cols: list[str], combo: tuple) -> None:
    """A dotted vertical line at the step a panel's bn_frozen runs froze their statistics."""
    if "freeze_after" in cols:
        v = combo[cols.index("freeze_after")]
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            ax.axvline(float(v), color=color("bn_frozen"), ls=":", lw=1.2, label="_freeze")


def grid_figure(n: int, ncols: int = 3, w: float = 4.4, h: float = 3.3, sharey: bool = True) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols, h * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=False, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def legend(fig: Figure, norms: Sequence[str], extra: Sequence[tuple[Line2D, str]] = ()) -> None:
    handles = [Line2D([], [], color=color(n), lw=2) for n in norms] + [h for h, _ in extra]
    labels = list(norms) + [l for _, l in extra]
    panels = sum(ax.get_visible() for ax in fig.axes)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3 if panels == 1 else 6), frameon=False)
