"""Mechanism figures from the probe rows (:mod:`bnstudy.train.probes`): activation percentiles, single units,
loss landscape, weight norm and effective step."""
from __future__ import annotations

import re
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bnstudy.analysis.aggregate import curves
from bnstudy.analysis.style import MAX_PANELS, X_LABELS, color, facets, grid_figure, legend, mark_freeze, panel_title, select, variant_order
from bnstudy.fmt import fmt

_PROBE = re.compile(r"^(?P<layer>[^/]+)/(?P<where>post|pre)/p(?P<q>15|50|85)$")
_UNIT = re.compile(r"^(?P<layer>[^/]+)/unit(?P<unit>\d+)/(?P<where>post|pre)/p(?P<q>15|50|85)$")
PERCENTILE_STYLES = {"15": ":", "50": "-", "85": "--"}


def probe_layers(metrics: pd.DataFrame) -> list[str]:
    """Layers with logged 15/50/85 percentiles of their activation input, in natural order."""
    if metrics.empty:
        return []
    names = metrics.loc[metrics["split"] == "probe", "metric"].drop_duplicates()
    layers = {m.group("layer") for m in map(_PROBE.match, names) if m}
    return sorted(layers, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def _percentile_axes(ax, norm: str, cols: list[str], combo: tuple, layer: str, first: bool) -> None:
    """Freeze mark, labels and grid shared by the pooled and per-unit percentile panels."""
    if norm == "bn_frozen":
        mark_freeze(ax, cols, combo)
    ax.set_xlabel(X_LABELS["step"])
    if first:
        ax.set_ylabel(f"{layer} activation input")
    ax.grid(alpha=0.3)


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
    cols, combos = facets(runs)
    norms = variant_order(probe["norm"].dropna())
    # one row per combination of the other factors; a single combination wraps at 3 panels a row
    fig, axes = grid_figure(len(norms) * len(combos), ncols=len(norms) if len(combos) > 1 else 3, w=3.6, h=3.0)
    styles = PERCENTILE_STYLES
    for r, combo in enumerate(combos):
        sub = select(probe, cols, combo)
        for i, norm in enumerate(norms):
            ax = axes[r * len(norms) + i]
            d = sub[sub["norm"].astype(str) == norm]
            for q, ls in styles.items():
                c = curves(d, "probe", f"{layer}/{where}/p{q}", by=["norm"]).sort_values("step")
                ax.plot(c["step"], c["mean"], color=color(norm), ls=ls, lw=1.6)
            t = panel_title(cols, combo)
            ax.set_title(norm + (f" — {t}" if t else ""), fontsize=10, color=color(norm))
            _percentile_axes(ax, norm, cols, combo, layer, first=i == 0)
    handles = [(Line2D([], [], color="k", ls=ls), f"{q}th percentile") for q, ls in styles.items()]
    fig.legend([h for h, _ in handles], [l for _, l in handles], loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"Distribution of the input to {layer}'s activation over training (mean over seeds)", fontsize=11)
    return fig


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _probe_names(metrics: pd.DataFrame) -> list[str]:
    if metrics.empty:
        return []
    return list(metrics.loc[metrics["split"] == "probe", "metric"].drop_duplicates())


def _band(ax, c: pd.DataFrame, colour: str, label: str | None = None, ls: str = "-", positive: bool = False) -> None:
    """Mean line and 95% CI band of a :func:`curves` table (bands clipped above 0 on log axes)."""
    c = c.sort_values("step")
    xs, lo, hi = c["step"].to_numpy(float), c["lo"].to_numpy(float), c["hi"].to_numpy(float)
    if positive:
        floor = float(c["mean"][c["mean"] > 0].min()) / 10 if (c["mean"] > 0).any() else 1e-12
        lo = np.clip(lo, floor, None)
    ax.plot(xs, c["mean"], color=colour, lw=1.7, ls=ls, label=label, marker="o" if len(xs) < 3 else None, ms=4)
    ax.fill_between(xs, lo, hi, color=colour, alpha=0.18, lw=0)


def unit_layers(metrics: pd.DataFrame) -> list[str]:
    """Layers with per-unit percentile rows (``layer{L}/unit{u}/...``), in natural order."""
    return sorted({m.group("layer") for m in map(_UNIT.match, _probe_names(metrics)) if m}, key=_natural)


def unit_figure(runs: pd.DataFrame, metrics: pd.DataFrame, norm: str, layer: str | None = None) -> Figure | None:
    """Ioffe & Szegedy (2015) Fig. 1(b, c) for one variant: 15/50/85th percentiles of single units' activation input.

    One panel per followed unit (columns) and per combination of the other
    varying factors (rows); one set of lines per seed, not their mean: unit u of
    one seed's network is a different feature from unit u of another's, and
    averaging them would smooth away the single-unit drift the figure is for.
    The activation input is the norm layer's output (``post``; ``pre`` when only
    that was logged). None when no run of ``norm`` logged per-unit rows.
    """
    probe = metrics[(metrics["split"] == "probe") & (metrics["norm"].astype(str) == str(norm))] if not metrics.empty else metrics
    layers = unit_layers(probe)
    if not layers:
        return None
    layer = layer or layers[-1]
    found = [m for m in map(_UNIT.match, _probe_names(probe)) if m and m.group("layer") == layer]
    where = "post" if any(m.group("where") == "post" for m in found) else "pre"
    units = sorted({int(m.group("unit")) for m in found})
    cols, combos = facets(runs[runs["norm"].astype(str) == str(norm)])
    rows = MAX_PANELS // 2  # rows of small panels, one per unit, stay readable further than a grid of large ones
    if len(combos) > rows:
        keep = rows
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {keep}", stacklevel=2)
        combos = combos[:keep]
    fig, axes = grid_figure(len(units) * len(combos), ncols=len(units), w=3.4, h=2.9)
    for r, combo in enumerate(combos):
        sub = select(probe, cols, combo)
        for i, u in enumerate(units):
            ax = axes[r * len(units) + i]
            for q, ls in PERCENTILE_STYLES.items():
                d = sub[sub["metric"] == f"{layer}/unit{u}/{where}/p{q}"]
                for _, run in d.groupby("run", sort=True):
                    run = run.sort_values("step")
                    ax.plot(run["step"], run["value"], color=color(norm), ls=ls, lw=1.3, alpha=0.8)
            t = panel_title(cols, combo)
            ax.set_title(f"unit {u}" + (f" — {t}" if t else ""), fontsize=10)
            _percentile_axes(ax, norm, cols, combo, layer, first=i == 0)
    handles = [Line2D([], [], color=color(norm), ls=ls) for ls in PERCENTILE_STYLES.values()]
    fig.legend(handles, [f"{q}th percentile" for q in PERCENTILE_STYLES], loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(
        f"{norm}: input to single units' activation in {layer} over training (Ioffe & Szegedy 2015, Fig. 1b,c)\n"
        "(one set of lines per seed: unit u is a different feature in each seed's network)",
        fontsize=11,
    )
    return fig


LANDSCAPE = {
    "landscape/loss_range": "loss range along the gradient\n(max − min of L(θ − ηg))",
    "landscape/grad_change": "gradient predictiveness\n(max ‖∇L(θ − ηg) − ∇L(θ)‖)",
    "landscape/beta_smooth": "effective β-smoothness\n(max ‖∇L(θ − ηg) − ∇L(θ)‖ / ‖ηg‖)",
}


def landscape_figure(runs: pd.DataFrame, metrics: pd.DataFrame) -> Figure | None:
    """Santurkar et al. (2018) Fig. 4: loss range, gradient change and β-smoothness against step, per variant.

    One column per quantity, one row per combination of the other varying
    factors; mean over seeds with 95% CI bands, log scale. None when no run
    logged landscape rows.
    """
    names = set(_probe_names(metrics))
    shown = [k for k in LANDSCAPE if k in names]
    if not shown:
        return None
    probe = metrics[metrics["split"] == "probe"]
    cols, combos = facets(runs)
    if len(combos) * len(shown) > MAX_PANELS:
        keep = max(1, MAX_PANELS // len(shown))
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {keep}", stacklevel=2)
        combos = combos[:keep]
    fig, axes = grid_figure(len(shown) * len(combos), ncols=len(shown), sharey=False)
    norms = variant_order(probe["norm"].dropna())
    for r, combo in enumerate(combos):
        sub = select(probe, cols, combo)
        for i, name in enumerate(shown):
            ax = axes[r * len(shown) + i]
            c = curves(sub, "probe", name, by=["norm"])
            for norm in norms:
                d = c[c["norm"].astype(str) == norm]
                if not d.empty:
                    _band(ax, d, color(norm), positive=True)
            ax.set_yscale("log")
            ax.set_ylabel(LANDSCAPE[name], fontsize=9)
            ax.set_xlabel(X_LABELS["step"])
            t = panel_title(cols, combo)
            if t:
                ax.set_title(t, fontsize=10)
            ax.grid(alpha=0.3, which="both")
    legend(fig, norms)
    fig.suptitle(
        "Loss landscape along the gradient over training (Santurkar et al. 2018, Fig. 4): lower is smoother\n"
        "(steps η ∈ {0.25, 0.5, 1, 2, 4} x lr on one fixed training batch; mean over seeds, band: 95% CI, log scale)",
        fontsize=11,
    )
    return fig


WEIGHT_STATS = {
    "eff_step": ("effective step", "‖W_t − W_{t−k}‖ / ‖W_{t−k}‖ per step"),
    "weight_norm": ("weight norm", "‖W‖ (Frobenius)"),
    "eff_lr": ("effective learning rate", "lr / ‖W‖²"),
}


def weight_layers(metrics: pd.DataFrame, stat: str) -> list[str]:
    """Layers with ``layer{i}/{stat}`` probe rows, in natural order."""
    pat = re.compile(rf"^(?P<layer>[^/]+)/{re.escape(stat)}$")
    return sorted({m.group("layer") for m in map(pat.match, _probe_names(metrics)) if m}, key=_natural)


def _lr_colours(lrs: Sequence[float]) -> dict[float, str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["viridis"]
    n = len(lrs)
    return {lr: to_hex(cmap(0.9 * i / max(1, n - 1))) for i, lr in enumerate(sorted(lrs))}


def weight_figure(runs: pd.DataFrame, metrics: pd.DataFrame, stat: str = "eff_step", layer: str | None = None) -> Figure | None:
    """``layer{i}/{stat}`` (``eff_step``, ``weight_norm`` or ``eff_lr``) against step: one panel per variant, one line per nominal lr.

    Rows: combinations of the other varying factors (e.g. weight decay). Mean
    over seeds with 95% CI bands, log scale. ``layer=None`` takes the last
    layer that logged ``stat``. With one learning rate, the line takes the
    variant's colour. None when no run logged ``stat``.
    """
    layers = weight_layers(metrics, stat)
    if not layers:
        return None
    layer = layer or layers[-1]
    name = f"{layer}/{stat}"
    probe = metrics[(metrics["split"] == "probe") & (metrics["metric"] == name)]
    norms = variant_order(probe["norm"].dropna())
    cols, combos = facets(runs, exclude=["lr"])
    if len(combos) * len(norms) > MAX_PANELS:
        keep = max(1, MAX_PANELS // len(norms))
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {keep}", stacklevel=2)
        combos = combos[:keep]
    lrs = sorted(float(v) for v in probe["lr"].dropna().unique()) if "lr" in probe else []
    colours = _lr_colours(lrs)
    fig, axes = grid_figure(len(norms) * len(combos), ncols=len(norms), w=max(3.8, 8.0 / len(norms)), h=3.1)  # room for the title
    for r, combo in enumerate(combos):
        sub = select(probe, cols, combo)
        for i, norm in enumerate(norms):
            ax = axes[r * len(norms) + i]
            d = sub[sub["norm"].astype(str) == norm]
            c = curves(d, "probe", name, by=["lr"]) if "lr" in d else curves(d, "probe", name, by=["norm"])
            for lr in lrs if "lr" in c else [None]:
                part = c if lr is None else c[c["lr"].astype(float) == lr]
                if not part.empty:
                    _band(ax, part, color(norm) if len(lrs) <= 1 else colours[lr], positive=True)
            ax.set_yscale("log")
            t = panel_title(cols, combo)
            ax.set_title(norm + (f" — {t}" if t else ""), fontsize=10, color=color(norm))
            if norm == "bn_frozen":
                mark_freeze(ax, cols, combo)
            ax.set_xlabel(X_LABELS["step"])
            if i == 0:
                ax.set_ylabel(f"{layer}: {WEIGHT_STATS.get(stat, (stat, stat))[1]}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
    if len(lrs) > 1:
        handles = [Line2D([], [], color=colours[lr], lw=2) for lr in lrs]
        fig.legend(handles, [f"lr {fmt(lr)}" for lr in lrs], loc="outside lower center", ncol=min(len(lrs), 6), frameon=False)
    title = WEIGHT_STATS.get(stat, (stat, stat))[0]
    fig.suptitle(
        f"{title[0].upper() + title[1:]} of the weights feeding {layer}'s norm over training, per nominal learning rate\n"
        "(mean over seeds, band: 95% CI, log scale)",
        fontsize=11,
    )
    return fig
