"""Figures of a study: learning curves, sensitivity to each swept factor, activation percentiles, mechanisms.

The mechanism figures (per-unit percentiles, loss landscape, weight norm and
effective step) live in :mod:`bnstudy.analysis.probe_plots`, what all figures
share (colours, panels, legends) in :mod:`bnstudy.analysis.style`; both are
importable from here.

Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot (so nothing depends on the interactive backend and figures are never
kept alive by a global registry); :func:`save_figure` writes PNG and SVG. Each
norm variant has one colour, the same in every figure: the one its registry
entry declares (:func:`palette`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bnstudy.analysis.aggregate import DONE, curves, mean_ci, varying_factors
from bnstudy.analysis.probe_plots import (  # noqa: F401  (re-exported: bnstudy.analysis.<name> reads them here)
    landscape_figure,
    probe_figure,
    probe_layers,
    unit_figure,
    unit_layers,
    weight_figure,
    weight_layers,
)
from bnstudy.analysis.style import (  # noqa: F401
    FACTOR_LABELS,
    X_LABELS,
    color,
    facets,
    grid_figure,
    legend,
    mark_freeze,
    palette,
    panel_title,
    select,
    variant_order,
)
from bnstudy.fmt import fmt


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
    cols, combos = facets(runs)
    fig, axes = grid_figure(len(combos))
    norms = variant_order(runs["norm"].dropna())
    plotted: list[float] = []
    for ax, combo in zip(axes, combos):
        c = curves(select(metrics, cols, combo), split, metric, by=["norm"])
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
        if x == "step":
            mark_freeze(ax, cols, combo)
        ax.set_xlabel(X_LABELS.get(x, x))
        ax.set_ylabel(ylabel or f"{split} {metric}")
        ax.set_title(panel_title(cols, combo), fontsize=10)
        ax.grid(alpha=0.3, which="both" if logy else "major")
    legend(fig, norms)
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
    cols, combos = facets(done, exclude=[factor])
    pos, numeric, log = _axis_positions(list(done[factor].dropna().unique()))
    norms = variant_order(done["norm"].dropna())
    fig, axes = grid_figure(2 * len(combos), ncols=2, w=5.0, h=3.6)
    offsets = {n: (i - (len(norms) - 1) / 2) * 5 for i, n in enumerate(norms)}  # points: diverged markers side by side
    for r, combo in enumerate(combos):
        sub = select(done, cols, combo)
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
            ax.set_xticks(list(pos.values()), [fmt(v) for v in pos])
            if log:
                ax.minorticks_off()  # the swept values are the ticks
            if not numeric:
                ax.set_xlim(-0.5, len(pos) - 0.5)
            ax.set_xlabel(FACTOR_LABELS.get(factor, factor) + (" (log scale)" if log else ""))
            ax.set_ylabel(f"{what} test accuracy")
            t = panel_title(cols, combo)
            ax.set_title(f"{what} test accuracy" + (f" — {t}" if t else ""), fontsize=10)
            ax.grid(alpha=0.3)
    if (done["status"] == "diverged").any():
        lo, hi = axes[0].get_ylim()  # shared by all panels: a strip at the bottom for the x markers
        axes[0].set_ylim(lo - 0.12 * (hi - lo), hi)
    legend(fig, norms, extra=[(Line2D([], [], color="k", marker="x", ls="", ms=8, mew=2), "diverged run")])
    fig.suptitle(f"Sensitivity to {FACTOR_LABELS.get(factor, factor)} (mean over non-diverged seeds, bars: 95% CI)", fontsize=11)
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
    for norm in variant_order(shown["norm"].dropna()):  # beside the pooled percentiles, one figure per variant
        u = unit_figure(shown, m, norm)
        if u is not None:
            out[f"unit_percentiles_{norm}"] = u
    land = landscape_figure(shown, m)
    if land is not None:
        out["landscape"] = land
    for stat, name in (("eff_step", "effective_step"), ("weight_norm", "weight_norm"), ("eff_lr", "effective_lr")):
        w = weight_figure(shown, m, stat)
        if w is not None:
            out[name] = w
    return out


PNG_DPI = 130
PNG_MAX_PIXELS = 3e6  # many-panel figures get a lower dpi, so a committed report stays small


def png_dpi(fig: Figure) -> float:
    """130 dpi, lowered for large canvases so the PNG has at most :data:`PNG_MAX_PIXELS` pixels."""
    w, h = fig.get_size_inches()
    return min(PNG_DPI, (PNG_MAX_PIXELS / (w * h)) ** 0.5)


def save_figure(fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.png`` (for reports) and ``.svg`` (for papers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        if fmt == "png":
            write_png(fig, path)
        else:
            fig.savefig(path)
        paths.append(path)
    return paths


def write_png(fig: Figure, path: Path) -> None:
    """The figure as a 256-colour PNG: a line plot loses nothing visible, and the file is 3-4 times smaller."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=png_dpi(fig))
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, format="PNG", optimize=True)
