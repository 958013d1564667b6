"""Figures of a study: learning curves, sensitivity to each swept factor, activation percentiles, mechanisms.

The mechanism figures (per-unit percentiles, loss landscape, weight norm and
effective step) are drawn from the probe rows of :mod:`bnstudy.train.probes`
whenever a run logged them.

Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot (so nothing depends on the interactive backend and figures are never
kept alive by a global registry); :func:`save_figure` writes PNG and SVG. Each
norm variant has one colour, the same in every figure (:data:`PALETTE`).
"""
from __future__ import annotations

import io
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
    "freeze_after": "bn_frozen: steps before the statistics freeze",
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
    """Factors other than norm (and ``exclude``) that vary, and their value combinations.

    A factor that only some runs have (``freeze_after``: only ``bn_frozen``) makes
    no panel for the runs without it; :func:`_select` draws those in every panel.
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


def _select(df: pd.DataFrame, cols: list[str], combo: tuple) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for c, v in zip(cols, combo):
        mask &= ((df[c].astype(str) == str(v)) | df[c].isna()).to_numpy()  # no value: the factor does not apply
    return df[mask]


def _title(cols: list[str], combo: tuple) -> str:
    return ", ".join(f"{c}={_fmt(v)}" for c, v in zip(cols, combo))


def _mark_freeze(ax, cols: list[str], combo: tuple) -> None:
    """A dotted vertical line at the step a panel's bn_frozen runs froze their statistics."""
    if "freeze_after" in cols:
        v = combo[cols.index("freeze_after")]
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            ax.axvline(float(v), color=color("bn_frozen"), ls=":", lw=1.2, label="_freeze")


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
        if x == "step":
            _mark_freeze(ax, cols, combo)
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
        _mark_freeze(ax, cols, combo)
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
    cols, combos = _facets(runs)
    norms = variant_order(probe["norm"].dropna())
    # one row per combination of the other factors; a single combination wraps at 3 panels a row
    fig, axes = _grid(len(norms) * len(combos), ncols=len(norms) if len(combos) > 1 else 3, w=3.6, h=3.0)
    styles = PERCENTILE_STYLES
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
    cols, combos = _facets(runs[runs["norm"].astype(str) == str(norm)])
    rows = MAX_PANELS // 2  # rows of small panels, one per unit, stay readable further than a grid of large ones
    if len(combos) > rows:
        keep = rows
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {keep}", stacklevel=2)
        combos = combos[:keep]
    fig, axes = _grid(len(units) * len(combos), ncols=len(units), w=3.4, h=2.9)
    for r, combo in enumerate(combos):
        sub = _select(probe, cols, combo)
        for i, u in enumerate(units):
            ax = axes[r * len(units) + i]
            for q, ls in PERCENTILE_STYLES.items():
                d = sub[sub["metric"] == f"{layer}/unit{u}/{where}/p{q}"]
                for _, run in d.groupby("run", sort=True):
                    run = run.sort_values("step")
                    ax.plot(run["step"], run["value"], color=color(norm), ls=ls, lw=1.3, alpha=0.8)
            t = _title(cols, combo)
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
    cols, combos = _facets(runs)
    if len(combos) * len(shown) > MAX_PANELS:
        keep = max(1, MAX_PANELS // len(shown))
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {keep}", stacklevel=2)
        combos = combos[:keep]
    fig, axes = _grid(len(shown) * len(combos), ncols=len(shown), sharey=False)
    norms = variant_order(probe["norm"].dropna())
    for r, combo in enumerate(combos):
        sub = _select(probe, cols, combo)
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
            t = _title(cols, combo)
            if t:
                ax.set_title(t, fontsize=10)
            ax.grid(alpha=0.3, which="both")
    _legend(fig, norms)
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
    cols, combos = _facets(runs, exclude=["lr"])
    if len(combos) * len(norms) > MAX_PANELS:
        keep = max(1, MAX_PANELS // len(norms))
        warnings.warn(f"{len(combos)} combinations of {', '.join(cols)}: showing the first {keep}", stacklevel=2)
        combos = combos[:keep]
    lrs = sorted(float(v) for v in probe["lr"].dropna().unique()) if "lr" in probe else []
    colours = _lr_colours(lrs)
    fig, axes = _grid(len(norms) * len(combos), ncols=len(norms), w=max(3.8, 8.0 / len(norms)), h=3.1)  # room for the title
    for r, combo in enumerate(combos):
        sub = _select(probe, cols, combo)
        for i, norm in enumerate(norms):
            ax = axes[r * len(norms) + i]
            d = sub[sub["norm"].astype(str) == norm]
            c = curves(d, "probe", name, by=["lr"]) if "lr" in d else curves(d, "probe", name, by=["norm"])
            for lr in lrs if "lr" in c else [None]:
                part = c if lr is None else c[c["lr"].astype(float) == lr]
                if not part.empty:
                    _band(ax, part, color(norm) if len(lrs) <= 1 else colours[lr], positive=True)
            ax.set_yscale("log")
            t = _title(cols, combo)
            ax.set_title(norm + (f" — {t}" if t else ""), fontsize=10, color=color(norm))
            if norm == "bn_frozen":
                _mark_freeze(ax, cols, combo)
            ax.set_xlabel(X_LABELS["step"])
            if i == 0:
                ax.set_ylabel(f"{layer}: {WEIGHT_STATS.get(stat, (stat, stat))[1]}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
    if len(lrs) > 1:
        handles = [Line2D([], [], color=colours[lr], lw=2) for lr in lrs]
        fig.legend(handles, [f"lr {_fmt(lr)}" for lr in lrs], loc="outside lower center", ncol=min(len(lrs), 6), frameon=False)
    title = WEIGHT_STATS.get(stat, (stat, stat))[0]
    fig.suptitle(
        f"{title[0].upper() + title[1:]} of the weights feeding {layer}'s norm over training, per nominal learning rate\n"
        "(mean over seeds, band: 95% CI, log scale)",
        fontsize=11,
    )
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
