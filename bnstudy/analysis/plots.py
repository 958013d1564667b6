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
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import matplotlib
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


PROPORTION_BAND = "95% t interval of the seeds' logit accuracy, mapped back: always inside [0, 1]"
LOGIT_EPS = 1e-4  # an accuracy of exactly 0 or 1 is held this far inside, so its logit is finite


def proportion_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A few-seed interval for a mean accuracy that stays inside [0, 1].

    Student's t interval of the mean of logit(accuracy) over seeds, mapped back
    with the logistic function: symmetric on the logit scale, so it narrows
    towards 0 and 1 instead of crossing them. NaN below two finite values.
    """
    v = np.clip(np.asarray([x for x in values if np.isfinite(x)], dtype=float), LOGIT_EPS, 1 - LOGIT_EPS)
    _, lo, hi, _ = mean_ci(np.log(v / (1 - v)), level)
    return float(1 / (1 + math.exp(-lo))), float(1 / (1 + math.exp(-hi)))


def _proportion_bands(m: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    """Per (norm, step): :func:`proportion_ci` of the seeds' values (columns ``norm, step, lo, hi``)."""
    d = m[(m["split"] == split) & (m["metric"] == metric)]
    d = d[np.isfinite(d["value"].astype(float))]
    rows = [(*k, *proportion_ci(g["value"].astype(float))) for k, g in d.groupby(["norm", "step"], sort=True)]
    return pd.DataFrame(rows, columns=["norm", "step", "lo", "hi"])


def _padded(lo: float, hi: float, bounds: tuple[float | None, float | None]) -> tuple[float, float]:
    """A y-range holding [lo, hi] with a margin, inside the metric's bounds: no curve or band is cut."""
    pad = 0.04 * (hi - lo) if hi > lo else 0.01
    a, b = lo - pad, hi + pad
    if bounds[0] is not None:
        a = max(a, bounds[0])
    if bounds[1] is not None:
        b = min(b, bounds[1] + 0.01 * (b - a))  # room for a curve at exactly 1
    return a, b


def curves_figure(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    split: str,
    metric: str,
    x: str = "step",
    logy: bool = False,
    ylabel: str | None = None,
    bounds: tuple[float | None, float | None] = (None, None),
    seeds: bool = False,
) -> Figure:
    """One line per norm variant (mean over seeds, 95% band) of ``split/metric`` against step or seconds.

    One panel per value of the other factors that vary (e.g. one per learning rate).
    An accuracy (``bounds`` (0, 1)) gets :func:`proportion_ci`'s band, inside [0, 1];
    other metrics the t interval, clipped to ``bounds``. ``seeds``: each run as a
    thin line under the mean. The y-range holds every mean, band and seed line.
    """
    cols, combos = facets(runs)
    fig, axes = grid_figure(len(combos))
    norms = variant_order(runs["norm"].dropna())
    proportion = bounds == (0.0, 1.0)
    shown: list[float] = []
    for ax, combo in zip(axes, combos):
        sub = select(metrics, cols, combo)
        c = curves(sub, split, metric, by=["norm"])
        bands = _proportion_bands(sub, split, metric) if proportion and not sub.empty else None
        for norm in norms:
            d = c[c["norm"].astype(str) == norm].sort_values("step")
            if d.empty:
                continue
            xs = d[x].to_numpy(float)
            if seeds:
                m = sub[(sub["split"] == split) & (sub["metric"] == metric) & (sub["norm"].astype(str) == norm)]
                for _, r in m.groupby("run", sort=True):
                    r = r.sort_values("step")
                    vals = r["value"].to_numpy(float)
                    ax.plot(r[x].to_numpy(float), vals, color=color(norm), lw=0.6, alpha=0.45)
                    shown += vals[np.isfinite(vals)].tolist()
            ax.plot(xs, d["mean"], color=color(norm), lw=1.8, label=norm)
            shown += d["mean"].dropna().tolist()
            if bands is not None:
                b = d[["step"]].merge(bands[bands["norm"].astype(str) == norm], on="step", how="left")
                lo, hi = b["lo"].to_numpy(float), b["hi"].to_numpy(float)
            else:
                lo, hi = np.clip(d["lo"].to_numpy(float), *bounds), np.clip(d["hi"].to_numpy(float), *bounds)
            ax.fill_between(xs, lo, hi, color=color(norm), alpha=0.12 if seeds else 0.18, lw=0)
            shown += [v for v in (*lo, *hi) if np.isfinite(v)]
        if logy:
            ax.set_yscale("log")
        if x == "step":
            mark_freeze(ax, cols, combo)
        ax.set_xlabel(X_LABELS.get(x, x))
        ax.set_ylabel(ylabel or f"{split} {metric}")
        ax.set_title(panel_title(cols, combo), fontsize=10)
        ax.grid(alpha=0.3, which="both" if logy else "major")
    if shown and not logy:
        axes[0].set_ylim(*_padded(min(shown), max(shown), bounds))  # shared by every panel
    legend(fig, norms)
    band = PROPORTION_BAND if proportion else "95% t interval over seeds"
    what = "thin lines: each seed; " if seeds else ""
    fig.suptitle(f"{split} {metric} vs {x}\n(line: mean over seeds; {what}band: {band})", fontsize=10)
    return fig


def accuracy_figure(runs: pd.DataFrame, metrics: pd.DataFrame, x: str = "step", seeds: bool = False) -> Figure:
    """Test accuracy against step (or training seconds), per variant, with bands inside [0, 1]."""
    return curves_figure(runs, metrics, "test", "acc", x=x, ylabel="test accuracy (fraction correct)", bounds=(0.0, 1.0), seeds=seeds)


def loss_figure(runs: pd.DataFrame, metrics: pd.DataFrame, x: str = "step", seeds: bool = False) -> Figure:
    """Training loss (log scale) against step (or training seconds), per variant, with CI bands."""
    return curves_figure(runs, metrics, "train", "loss", x=x, logy=True, ylabel="training loss (cross-entropy, log scale)",
                         bounds=(1e-6, None), seeds=seeds)  # fmt: skip


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
                    vals = ok.loc[ok[factor] == v, ycol].astype(float)
                    m = mean_ci(vals)[0]
                    lo, hi = proportion_ci(vals)
                    pts.append((pos[v], m, lo, hi))
                xs, ms, los, his = (np.array(a, dtype=float) for a in zip(*pts)) if pts else ([],) * 4
                if len(xs):
                    err = np.maximum(np.vstack([ms - los, his - ms]), 0)  # inside [0, 1] by construction; ≥ 0 against rounding
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
    fig.suptitle(f"Sensitivity to {FACTOR_LABELS.get(factor, factor)}\n(mean over non-diverged seeds; bars: {PROPORTION_BAND})", fontsize=10)
    return fig


def sweep_factors(runs: pd.DataFrame) -> list[str]:
    """Factors to draw sensitivity figures for: every varying factor but the variant and the study label."""
    return [f for f in varying_factors(runs, exclude=("seed", "norm", "study"))]


def figures(runs: pd.DataFrame, metrics: pd.DataFrame, seeds: bool = False) -> dict[str, Figure]:
    """Every figure that applies to these runs, by file name (without extension); ``seeds``: each run as a thin line."""
    shown = runs[runs["status"] != "failed"]
    m = metrics[metrics["run"].isin(shown["run"])] if not metrics.empty else metrics
    out: dict[str, Figure] = {}
    if shown.empty:
        return out
    for x in ("step", "seconds"):
        out[f"test_acc_vs_{x}"] = accuracy_figure(shown, m, x, seeds=seeds)
        out[f"train_loss_vs_{x}"] = loss_figure(shown, m, x, seeds=seeds)
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


PNG_DPI = 150  # sharp on a high-density screen; the 64-colour PNG keeps a committed report small
PNG_MAX_PIXELS = 1.2e7  # only a canvas beyond every report's (a 16-panel grid is ~5e6 px at 150 dpi) gets fewer dpi
PNG_COLOURS = 64  # line plots on white: anti-aliased edges need no more


def png_dpi(fig: Figure) -> float:
    """:data:`PNG_DPI`, lowered only for a canvas so large that the PNG would pass :data:`PNG_MAX_PIXELS` pixels."""
    w, h = fig.get_size_inches()
    return min(PNG_DPI, (PNG_MAX_PIXELS / (w * h)) ** 0.5)


# no creation date in vector files: a report regenerated from the same runs writes the same bytes (no churn in git)
STABLE_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


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
            with matplotlib.rc_context({"svg.hashsalt": "bnstudy"}):  # fixed ids inside an SVG
                fig.savefig(path, metadata=STABLE_METADATA.get(fmt))
        paths.append(path)
    return paths


def write_png(fig: Figure, path: Path) -> None:
    """The figure as a 64-colour PNG: a line plot loses nothing visible, and the file is 3-4 times smaller."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=png_dpi(fig))
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(PNG_COLOURS, method=Image.Quantize.FASTOCTREE).save(path, format="PNG", optimize=True)
