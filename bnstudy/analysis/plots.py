"""Figures of a study: learning curves, sensitivity to each swept factor, activation percentiles.

Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot (so nothing depends on the interactive backend and figures are never
kept alive by a global registry); :func:`save_figure` writes PNG and SVG. Each
norm variant has one colour, the same in every figure (:data:`PALETTE`).
"""
from __future__ import annotations

import math
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bnstudy.analysis.aggregate import DONE, curves, group_columns, mean_ci, varying_factors

PALETTE: dict[str, str] = {
    "bn": "#1f77b4",
    "affine": "#d62728",
    "none": "#555555",
    "bn_noaffine": "#17becf",
    "affine_ddi": "#ff7f0e",
    "bn_nograd": "#9467bd",
    "bn_frozen": "#8c564b",
    "noisy_bn": "#2ca02c",
    "layernorm": "#e377c2",
    "groupnorm": "#bcbd22",
}
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
}


def color(norm: str) -> str:
    """The colour of a norm variant: fixed for known ones, a stable hash-picked colour otherwise."""
    return PALETTE.get(str(norm)) or _FALLBACK[zlib.crc32(str(norm).encode()) % len(_FALLBACK)]


def variant_order(norms: Sequence[Any]) -> list[str]:
    """Variants in palette order, unknown ones after them alphabetically."""
    names = {str(n) for n in norms}
    return [n for n in PALETTE if n in names] + sorted(names - set(PALETTE))


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _facets(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> tuple[list[str], list[tuple]]:
    """Factors other than norm (and ``exclude``) that vary, and their value combinations."""
    cols = [c for c in group_columns(runs) if c != "norm" and c not in exclude]
    if not cols:
        return [], [()]
    combos = list(runs[cols].drop_duplicates().sort_values(cols).itertuples(index=False, name=None))
    if len(combos) > MAX_PANELS:
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {MAX_PANELS}", stacklevel=3)
        combos = combos[:MAX_PANELS]
    return cols, combos


def _select(df: pd.DataFrame, cols: list[str], combo: tuple) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for c, v in zip(cols, combo):
        mask &= (df[c].astype(str) == str(v)).to_numpy()
    return df[mask]


def _title(cols: list[str], combo: tuple) -> str:
    return ", ".join(f"{c}={_fmt(v)}" for c, v in zip(cols, combo))


def _grid(n: int, ncols: int = 3, w: float = 4.4, h: float = 3.3, sharey: bool = True) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols, h * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=False, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend(fig: Figure, norms: Sequence[str], extra: Sequence[tuple[Line2D, str]] = ()) -> None:
    handles = [Line2D([], [], color=color(n), lw=2) for n in norms] + [h for h, _ in extra]
    labels = list(norms) + [l for _, l in extra]
    panels = sum(ax.get_visible() for ax in fig.axes)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3 if panels == 1 else 6), frameon=False)


def curves_figure(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    split: str,
    metric: str,
    x: str = "step",
    logy: bool = False,
    ylabel: str | None = None,
    bounds: tuple[float | None, float | None] = (None, None),
) -> Figure:
    """One line per norm variant (mean over seeds, 95% CI band) of ``split/metric`` against step or seconds.

    One panel per value of the other factors that vary (e.g. one per learning rate).
    ``bounds`` clip the bands to the metric's range (a 2-seed t interval is wide).
    """
    cols, combos = _facets(runs)
    fig, axes = _grid(len(combos))
    norms = variant_order(runs["norm"].dropna())
    plotted: list[float] = []
    for ax, combo in zip(axes, combos):
        c = curves(_select(metrics, cols, combo), split, metric, by=["norm"])
        for norm in norms:
            d = c[c["norm"].astype(str) == norm].sort_values("step")
            if d.empty:
                continue
            xs = d[x].to_numpy(float)
            ax.plot(xs, d["mean"], color=color(norm), lw=1.8, label=norm)
            plotted += d["mean"].dropna().tolist()
            lo, hi = np.clip(d["lo"].to_numpy(float), *bounds), np.clip(d["hi"].to_numpy(float), *bounds)
            ax.fill_between(xs, lo, hi, color=color(norm), alpha=0.18, lw=0)
        if logy:
            ax.set_yscale("log")
        elif bounds == (0.0, 1.0) and plotted:
            # accuracy: start the axis near the bulk of the curves, so late differences stay visible
            ax.set_ylim(max(0.0, float(np.percentile(plotted, 10)) - 0.05), min(1.0, max(plotted) + 0.01))
        ax.set_xlabel(X_LABELS.get(x, x))
        ax.set_ylabel(ylabel or f"{split} {metric}")
        ax.set_title(_title(cols, combo), fontsize=10)
        ax.grid(alpha=0.3, which="both" if logy else "major")
    _legend(fig, norms)
    fig.suptitle(f"{split} {metric} vs {x}\n(mean over seeds, band: 95% CI)", fontsize=11)
    return fig


def accuracy_figure(runs: pd.DataFrame, metrics: pd.DataFrame, x: str = "step") -> Figure:
    """Test accuracy against step (or training seconds), per variant, with CI bands."""
    return curves_figure(runs, metrics, "test", "acc", x=x, ylabel="test accuracy (fraction correct)", bounds=(0.0, 1.0))


def loss_figure(runs: pd.DataFrame, metrics: pd.DataFrame, x: str = "step") -> Figure:
    """Training loss (log scale) against step (or training seconds), per variant, with CI bands."""
    return curves_figure(runs, metrics, "train", "loss", x=x, logy=True, ylabel="training loss (cross-entropy, log scale)", bounds=(1e-6, None))


def _axis_positions(values: Sequence[Any]) -> tuple[dict[Any, float], bool, bool]:
    """x position per value, whether the axis is numeric, and whether it is logarithmic."""
    uniq = sorted(set(values), key=lambda v: (str(type(v)), v))
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in uniq)
    if not numeric:
        return {v: float(i) for i, v in enumerate(uniq)}, False, False
    pos = {v: float(v) for v in uniq}
    log = len(uniq) > 1 and min(uniq) > 0 and max(uniq) / min(uniq) >= 8
    return pos, True, log


def sensitivity_figure(runs: pd.DataFrame, factor: str = "lr") -> Figure:
    """Final and best test accuracy against ``factor`` per variant; diverged runs as x at the bottom.

    Lines: mean over the runs that finished without diverging, bars: 95% CI. One
    row of panels per value of the other varying factors.
    """
    done = runs[runs["status"].isin(DONE)]
    cols, combos = _facets(done, exclude=[factor])
    pos, numeric, log = _axis_positions(list(done[factor].dropna().unique()))
    norms = variant_order(done["norm"].dropna())
    fig, axes = _grid(2 * len(combos), ncols=2, w=5.0, h=3.6)
    offsets = {n: (i - (len(norms) - 1) / 2) * 5 for i, n in enumerate(norms)}  # points: diverged markers side by side
    for r, combo in enumerate(combos):
        sub = _select(done, cols, combo)
        for col, (ycol, what) in enumerate([("final_test_acc", "final"), ("best_test_acc", "best")]):
            ax = axes[2 * r + col]
            for norm in norms:
                d = sub[sub["norm"].astype(str) == norm]
                ok = d[d["status"] != "diverged"]
                pts = []
                for v in sorted(pos, key=pos.get):
                    m, lo, hi, n = mean_ci(ok.loc[ok[factor] == v, ycol])
                    pts.append((pos[v], m, lo, hi))
                xs, ms, los, his = (np.array(a, dtype=float) for a in zip(*pts)) if pts else ([],) * 4
                if len(xs):
                    err = np.vstack([ms - np.clip(los, 0, 1), np.clip(his, 0, 1) - ms])  # accuracy lives in [0, 1]
                    ax.errorbar(xs, ms, yerr=np.nan_to_num(err), color=color(norm), marker="o", ms=4, lw=1.6, capsize=3)
                div = d[d["status"] == "diverged"]
                if len(div):
                    trans = transforms.offset_copy(
                        transforms.blended_transform_factory(ax.transData, ax.transAxes), fig=fig, x=offsets[norm], units="points"
                    )
                    ax.plot([pos[v] for v in div[factor]], [0.04] * len(div), "x", color=color(norm), ms=8, mew=2, transform=trans, clip_on=False)
            if log:
                ax.set_xscale("log")
            ax.set_xticks(list(pos.values()), [_fmt(v) for v in pos])
            if log:
                ax.minorticks_off()  # the swept values are the ticks
            if not numeric:
                ax.set_xlim(-0.5, len(pos) - 0.5)
            ax.set_xlabel(FACTOR_LABELS.get(factor, factor) + (" (log scale)" if log else ""))
            ax.set_ylabel(f"{what} test accuracy")
            t = _title(cols, combo)
            ax.set_title(f"{what} test accuracy" + (f" — {t}" if t else ""), fontsize=10)
            ax.grid(alpha=0.3)
    if (done["status"] == "diverged").any():
        lo, hi = axes[0].get_ylim()  # shared by all panels: a strip at the bottom for the x markers
        axes[0].set_ylim(lo - 0.12 * (hi - lo), hi)
    _legend(fig, norms, extra=[(Line2D([], [], color="k", marker="x", ls="", ms=8, mew=2), "diverged run")])
    fig.suptitle(f"Sensitivity to {FACTOR_LABELS.get(factor, factor)} (mean over non-diverged seeds, bars: 95% CI)", fontsize=11)
    return fig


_PROBE = re.compile(r"^(?P<layer>.+)/(?P<where>post|pre)/p(?P<q>15|50|85)$")


def probe_layers(metrics: pd.DataFrame) -> list[str]:
    """Layers with logged 15/50/85 percentiles of their activation input, in natural order."""
    if metrics.empty:
        return []
    names = metrics.loc[metrics["split"] == "probe", "metric"].drop_duplicates()
    layers = {m.group("layer") for m in map(_PROBE.match, names) if m}
    return sorted(layers, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def probe_figure(runs: pd.DataFrame, metrics: pd.DataFrame, layer: str | None = None) -> Figure | None:
    """15/50/85th percentiles of one layer's activation input over training, one panel per variant.

    The input to the nonlinearity is the norm layer's output (``post``; ``pre``
    when only that was logged), as in Ioffe & Szegedy (2015) Fig. 1(b, c).
    ``layer=None`` takes the last probed layer. None when nothing was probed.
    """
    layers = probe_layers(metrics)
    if not layers:
        return None
    layer = layer or layers[-1]
    probe = metrics[metrics["split"] == "probe"]
    where = "post" if (probe["metric"] == f"{layer}/post/p50").any() else "pre"
    cols, combos = _facets(runs)
    norms = variant_order(probe["norm"].dropna())
    # one row per combination of the other factors; a single combination wraps at 3 panels a row
    fig, axes = _grid(len(norms) * len(combos), ncols=len(norms) if len(combos) > 1 else 3, w=3.6, h=3.0)
    styles = {"15": ":", "50": "-", "85": "--"}
    for r, combo in enumerate(combos):
        sub = _select(probe, cols, combo)
        for i, norm in enumerate(norms):
            ax = axes[r * len(norms) + i]
            d = sub[sub["norm"].astype(str) == norm]
            for q, ls in styles.items():
                c = curves(d, "probe", f"{layer}/{where}/p{q}", by=["norm"]).sort_values("step")
                ax.plot(c["step"], c["mean"], color=color(norm), ls=ls, lw=1.6)
            t = _title(cols, combo)
            ax.set_title(norm + (f" — {t}" if t else ""), fontsize=10, color=color(norm))
            ax.set_xlabel(X_LABELS["step"])
            if i == 0:
                ax.set_ylabel(f"{layer} activation input")
            ax.grid(alpha=0.3)
    handles = [(Line2D([], [], color="k", ls=ls), f"{q}th percentile") for q, ls in styles.items()]
    fig.legend([h for h, _ in handles], [l for _, l in handles], loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"Distribution of the input to {layer}'s activation over training (mean over seeds)", fontsize=11)
    return fig


def sweep_factors(runs: pd.DataFrame) -> list[str]:
    """Factors to draw sensitivity figures for: every varying factor but the variant and the study label."""
    return [f for f in varying_factors(runs, exclude=("seed", "norm", "study"))]


def figures(runs: pd.DataFrame, metrics: pd.DataFrame) -> dict[str, Figure]:
    """Every figure that applies to these runs, by file name (without extension)."""
    shown = runs[runs["status"] != "failed"]
    m = metrics[metrics["run"].isin(shown["run"])] if not metrics.empty else metrics
    out: dict[str, Figure] = {}
    if shown.empty:
        return out
    for x in ("step", "seconds"):
        out[f"test_acc_vs_{x}"] = accuracy_figure(shown, m, x)
        out[f"train_loss_vs_{x}"] = loss_figure(shown, m, x)
    for f in sweep_factors(shown):
        out[f"sensitivity_{f}"] = sensitivity_figure(shown, f)
    p = probe_figure(shown, m)
    if p is not None:
        out["activation_percentiles"] = p
    return out


def save_figure(fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.png`` (for reports) and ``.svg`` (for papers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=130 if fmt == "png" else None)
        paths.append(path)
    return paths
