"""A rate search (``bnstudy-search``) against a grid over the same rates: the rates each chose and the steps each trained.

Reads only results folders: the search's ``trials.csv`` and runs, the grid study's runs. Both choices are made
by :func:`~bnstudy.analysis.aggregate.choose_rates`, the rule of the report's "tuned per variant" table.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnstudy.analysis.aggregate import Untunable, choose_rates
from bnstudy.analysis.load import NoRuns, load_runs
from bnstudy.errors import BnstudyError
from bnstudy.fmt import fmt

TRIALS_CSV = "trials.csv"
FIGURE = "search_vs_grid"
COLUMNS = [
    "setting", "grid_lr", "grid_lr_search_seeds", "search_lr", "nearest_grid_lr", "agrees", "trials", "pruned",
    "search_steps", "grid_steps", "fraction", "search_val_acc", "grid_val_acc",
]  # fmt: skip


class CompareError(BnstudyError):
    """The folders cannot be compared; the message (one line) says why."""


def _setting(label: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in str(label).split(",") if "=" in kv)


def _select(runs: pd.DataFrame, setting: dict[str, str]) -> pd.DataFrame:
    mask = np.ones(len(runs), dtype=bool)
    for k, v in setting.items():
        col = k.split(".")[-1]  # norm, model.depth -> depth: the runs table's factor columns
        if col not in runs.columns:
            raise CompareError(f"the grid's runs have no factor {col!r} to match the search's setting {k}={v}")
        mask &= (runs[col].astype(str) == v).to_numpy()
    return runs[mask]


def _choice(runs: pd.DataFrame) -> tuple[float, float]:
    """(chosen rate, its mean validation accuracy) over ``runs`` of one setting; (nan, nan) when none is finished."""
    try:
        c = choose_rates(runs.assign(_one="x"), by=["_one", "lr"])
    except Untunable:
        c = pd.DataFrame()
    if c.empty:
        done = runs[runs["status"].isin(("completed", "diverged"))]
        if done["lr"].nunique() == 1:  # one finished rate (its seeds): nothing to choose between, but it is the choice
            return float(done["lr"].iloc[0]), float(pd.to_numeric(done["final_val_acc"], errors="coerce").mean())
        return math.nan, math.nan
    return float(c["lr"].iloc[0]), float(c["val_acc"].iloc[0])


def agreement(search_lr: float, grid_lr: float, grid_rates: list[float]) -> tuple[float, str]:
    """(the grid rate nearest ``search_lr`` on a log scale, and "same", "within a step" or "no")."""
    rates = sorted(grid_rates)
    nearest = min(rates, key=lambda r: abs(math.log(r / search_lr)))
    if math.isclose(search_lr, grid_lr, rel_tol=1e-9):
        return nearest, "same"
    i = rates.index(grid_lr)
    lo = rates[i - 1] if i > 0 else grid_lr * grid_lr / rates[i + 1]  # at an end: one step as wide as the next one
    hi = rates[i + 1] if i + 1 < len(rates) else grid_lr * grid_lr / rates[i - 1]
    return nearest, "within a step" if lo < search_lr < hi else "no"


def comparison(search_dir: Path, grid_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per setting with :data:`COLUMNS`, the search's trials, the grid's runs)."""
    path = Path(search_dir) / TRIALS_CSV
    if not path.exists():
        raise CompareError(f"{path} does not exist: give the out_dir of a bnstudy-search run as SEARCH")
    trials = pd.read_csv(path)
    if trials.empty:
        raise CompareError(f"{path} lists no trial: run the search before comparing it with a grid")
    try:
        search_runs, grid = load_runs(search_dir), load_runs(grid_dir)
    except NoRuns as e:
        raise CompareError(str(e)) from None
    if grid.empty or "lr" not in grid.columns or grid["lr"].nunique() < 2:
        raise CompareError(f"{grid_dir} holds no grid of rates to compare with: give a study that sweeps optim.lr as GRID")
    seeds = sorted(search_runs["seed"].dropna().astype(int).unique()) if len(search_runs) else []
    rows = []
    for label, tr in trials.groupby("setting", sort=False):
        setting = _setting(label)
        g = _select(grid, setting)
        s = _select(search_runs, setting) if len(search_runs) else search_runs
        grid_lr, grid_val = _choice(g)
        grid_lr_seeds, _ = _choice(g[g["seed"].isin(seeds)])
        search_lr, search_val = _choice(s)
        nearest, agrees = agreement(search_lr, grid_lr, sorted(g["lr"].unique())) if np.isfinite([search_lr, grid_lr]).all() else (math.nan, "–")
        counted = tr[tr["state"].isin(("complete", "pruned"))]
        steps = int(tr["steps_trained"].fillna(0).sum())  # failed attempts (a Ctrl-C) trained steps too
        grid_steps = int(g["step"].fillna(0).sum())
        rows.append([label, grid_lr, grid_lr_seeds, search_lr, nearest, agrees, len(counted), int((counted["state"] == "pruned").sum()),
                     steps, grid_steps, steps / grid_steps if grid_steps else math.nan, search_val, grid_val])  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    if not table["grid_steps"].sum():
        raise CompareError(f"{grid_dir} holds no trained run of the search's settings ({', '.join(table['setting'])}): "
                           "give the grid study that swept them as GRID")
    return table, trials, grid


def _figure(table: pd.DataFrame, trials: pd.DataFrame, grid: pd.DataFrame, seeds: list[int]) -> Any:
    from matplotlib.lines import Line2D

    from bnstudy.analysis.style import color, grid_figure

    fig, axes = grid_figure(len(table), ncols=min(4, len(table)), w=3.6, h=3.2)
    for ax, row in zip(axes, table.itertuples(index=False)):
        setting = _setting(row.setting)
        c = color(setting.get("norm", row.setting))
        g = _select(grid, setting)
        done = g[g["status"].isin(("completed", "diverged"))]
        val = pd.to_numeric(done["final_val_acc"], errors="coerce").fillna(0.0)
        mean = (1 - val).groupby(done["lr"]).mean()
        ax.plot(mean.index, mean.values, "-o", color="0.55", ms=4, lw=1.2, zorder=1)
        few = done[done["seed"].isin(seeds)]
        ax.plot(few["lr"], 1 - pd.to_numeric(few["final_val_acc"], errors="coerce").fillna(0.0), "s", mfc="none", color="0.55", ms=5, zorder=1)
        tr = trials[(trials["setting"] == row.setting) & trials["state"].isin(("complete", "pruned"))]
        for t in tr.itertuples(index=False):
            err = 1 - float(t.val_acc) if pd.notna(t.val_acc) else 1.0
            pruned = t.state == "pruned"
            ax.plot(t.lr, err, "x" if pruned else "o", color=c, ms=7 if pruned else 6, mew=1.8, zorder=3)
            ax.annotate(str(t.trial), (t.lr, err), xytext=(4, 3), textcoords="offset points", fontsize=7, color=c)
        if np.isfinite(row.grid_lr):
            ax.axvline(row.grid_lr, color="0.55", ls="--", lw=1)
        if np.isfinite(row.search_lr):
            ax.axvline(row.search_lr, color=c, lw=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{row.setting}: {fmt(row.search_lr)} vs {fmt(row.grid_lr)}, {100 * row.fraction:.0f}% of the steps", fontsize=9)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("final validation error (1 − acc)")
    handles = [
        (Line2D([], [], color="0.55", marker="o", ms=4), "grid: mean over seeds"),
        (Line2D([], [], color="0.55", marker="s", mfc="none", ls="none"), f"grid: seed {', '.join(map(str, seeds))}"),
        (Line2D([], [], color="k", marker="o", ls="none"), "search: trial (number)"),
        (Line2D([], [], color="k", marker="x", ls="none", mew=1.8), "search: pruned (last val error)"),
        (Line2D([], [], color="0.55", ls="--"), "grid's chosen rate"),
        (Line2D([], [], color="k"), "search's chosen rate"),
    ]
    fig.legend([h for h, _ in handles], [l for _, l in handles], loc="outside lower center", ncol=3, frameon=False, fontsize=8)
    fig.suptitle("Rate search (TPE + median pruner) vs the grid, chosen on validation accuracy", fontsize=10)
    return fig


def compare(search_dir: Path, grid_dir: Path) -> str:
    """The comparison as a markdown table; writes SEARCH/search_vs_grid.csv and SEARCH/figures/search_vs_grid.png/.pdf."""
    from bnstudy.analysis.plots import save_figure
    from bnstudy.analysis.report import markdown_table

    table, trials, grid = comparison(search_dir, grid_dir)
    table.to_csv(Path(search_dir) / f"{FIGURE}.csv", index=False)
    seeds = sorted(load_runs(search_dir)["seed"].dropna().astype(int).unique())
    paths = save_figure(_figure(table, trials, grid, seeds), Path(search_dir) / "figures", FIGURE, formats=("png", "pdf"))
    shown = pd.DataFrame({
        "setting": table["setting"],
        "grid's rate": table["grid_lr"].map(fmt),
        f"grid's rate, seed {', '.join(map(str, seeds))} only": table["grid_lr_search_seeds"].map(fmt),
        "search's rate": table["search_lr"].map(fmt),
        "agrees with the grid": table["agrees"],
        "trials (pruned)": [f"{t} ({p})" for t, p in zip(table["trials"], table["pruned"])],
        "steps: search / grid": [f"{s:,} / {g:,} = {100 * f:.1f}%" for s, g, f in zip(table["search_steps"], table["grid_steps"], table["fraction"])],
        "val acc: search / grid": [f"{a:.4f} / {b:.4f}" for a, b in zip(table["search_val_acc"], table["grid_val_acc"])],
    })  # fmt: skip
    total_s, total_g = int(table["search_steps"].sum()), int(table["grid_steps"].sum())
    lines = [markdown_table(shown), "", f"all settings: {total_s:,} / {total_g:,} steps = {100 * total_s / total_g:.1f}% of the grid's",
             "figure: " + ", ".join(str(p) for p in paths)]  # fmt: skip
    return "\n".join(lines)
