"""Seed aggregation (mean and Student-t confidence interval), time-to-target and the summary table.

Seeds are replicates: every other factor that varies across the runs, with the
norm variant first, names a group. A group of one seed has a mean and a NaN
interval, never an error.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bnstudy.analysis.load import FACTORS

DONE = ("completed", "diverged")

# Test accuracy a run "reaches" per dataset (chosen to separate the variants within the budget).
DEFAULT_TARGETS: dict[str, float] = {
    "mnist": 0.97,
    "fashion_mnist": 0.88,
    "cifar10": 0.75,
    "cifar10_jpeg": 0.75,
    "synthetic": 0.9,
}
FALLBACK_TARGET = 0.9


# ---------------------------------------------------------------- statistics


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (closed form, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    """Two-sided critical value: P(|T| < t) = ``level`` for Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, lower, upper, n) of the finite ``values``; the bounds are NaN below two values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(v.mean())
    if n < 2:
        return m, math.nan, math.nan, 1
    half = t_quantile(level, n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half, n


# ---------------------------------------------------------------- groups


def varying_factors(runs: pd.DataFrame, exclude: Sequence[str] = ("seed",)) -> list[str]:
    """Factors that take more than one value across ``runs`` (seed excluded), in table order."""
    cols = [c for c in FACTORS if c in runs.columns] + [c for c in runs.columns if c not in FACTORS and c in _extra_factors(runs)]
    return [c for c in cols if c not in exclude and runs[c].dropna().astype(str).nunique() > 1]


def _extra_factors(runs: pd.DataFrame) -> list[str]:
    from bnstudy.analysis.load import RESULT_COLUMNS

    return [c for c in runs.columns if c not in ("run", "run_dir", *FACTORS, *RESULT_COLUMNS)]


def group_columns(runs: pd.DataFrame) -> list[str]:
    """The columns naming a group of seeds: ``norm`` first, then every other varying factor."""
    return ["norm"] + [c for c in varying_factors(runs) if c != "norm"]


def curves(
    metrics: pd.DataFrame,
    split: str,
    metric: str,
    by: Sequence[str] = ("norm",),
    level: float = 0.95,
) -> pd.DataFrame:
    """Mean and CI over seeds of one metric at each step, per group ``by``.

    Columns: ``*by, step, n, mean, lo, hi, seconds`` (seconds: mean wall-clock
    training time at that step, for plotting against time). Non-finite values
    (a diverging run's last loss) are left out.
    """
    by = list(by)
    cols = [*by, "step", "n", "mean", "lo", "hi", "seconds"]
    if metrics.empty:
        return pd.DataFrame(columns=cols)
    d = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    d = d[np.isfinite(d["value"].astype(float))]
    if d.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in d.groupby([*by, "step"], sort=True, dropna=False):
        m, lo, hi, n = mean_ci(g["value"], level)
        rows.append((*key, n, m, lo, hi, float(g["seconds"].mean())))
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------- time to target


def default_target(data: str | None) -> float:
    """Test-accuracy target for a dataset (``DEFAULT_TARGETS``, else 0.9)."""
    return DEFAULT_TARGETS.get(str(data), FALLBACK_TARGET)


def time_to_target(runs: pd.DataFrame, metrics: pd.DataFrame, target: float | None = None) -> pd.DataFrame:
    """Per run: the target, whether test accuracy reached it, and the first step and training seconds it did.

    ``target=None`` picks :func:`default_target` from each run's dataset.
    """
    acc = metrics[(metrics["split"] == "test") & (metrics["metric"] == "acc")] if not metrics.empty else metrics
    first: dict[str, tuple[int, float]] = {}
    targets = {r: (target if target is not None else default_target(d)) for r, d in zip(runs["run"], runs["data"])}
    if not acc.empty:
        acc = acc.sort_values(["run", "step"])
        hit = acc[acc["value"] >= acc["run"].map(targets)]
        for run, g in hit.groupby("run", sort=False):
            first[run] = (int(g["step"].iloc[0]), float(g["seconds"].iloc[0]))
    out = pd.DataFrame(
        {
            "run": runs["run"].values,
            "target": [targets[r] for r in runs["run"]],
            "reached": [r in first for r in runs["run"]],
            "steps_to_target": [first[r][0] if r in first else np.nan for r in runs["run"]],
            "seconds_to_target": [first[r][1] if r in first else np.nan for r in runs["run"]],
        }
    )
    return out


# ---------------------------------------------------------------- the summary table

SUMMARY_COLUMNS = [
    "runs",
    "final_test_acc",
    "final_test_acc_lo",
    "final_test_acc_hi",
    "best_test_acc",
    "target",
    "reached",
    "steps_to_target",
    "seconds_to_target",
    "diverged",
    "failed",
    "params",
    "ms_per_step",
]


def summary_table(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    target: float | None = None,
    by: Sequence[str] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per group of seeds (``by``, default :func:`group_columns`).

    Final test accuracy: mean and CI over the finished (completed or diverged)
    runs; best test accuracy: mean of each run's best; steps/seconds to target:
    mean over the runs that reached it, with ``reached`` counting them among
    ``runs``; ``diverged``/``failed``: counts; params, ms/step: means.
    """
    by = list(by) if by is not None else group_columns(runs)
    if runs.empty:
        return pd.DataFrame(columns=[*by, *SUMMARY_COLUMNS])
    ttt = time_to_target(runs, metrics, target).set_index("run")
    rows = []
    for key, g in runs.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        done = g[g["status"].isin(DONE)]
        m, lo, hi, _ = mean_ci(done["final_test_acc"], level)
        t = ttt.loc[done["run"]]
        rows.append(
            (
                *key,
                len(done),
                m,
                lo,
                hi,
                _mean(done["best_test_acc"]),
                float(t["target"].iloc[0]) if len(t) else math.nan,
                int(t["reached"].sum()),
                _mean(t["steps_to_target"]),
                _mean(t["seconds_to_target"]),
                int((g["status"] == "diverged").sum()),
                int((g["status"] == "failed").sum()),
                _mean(g["params"]),
                _mean(done["ms_per_step"]),
            )
        )
    return pd.DataFrame(rows, columns=[*by, *SUMMARY_COLUMNS])


def _mean(s: pd.Series) -> float:
    v = pd.to_numeric(s, errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


# ---------------------------------------------------------------- probe statistics

PROBE_STATS = ("pre/ch_absmean", "pre/ch_std", "post/ch_absmean", "post/ch_std", "sat_frac")
POOL_STATS = ("mean", "std", "ch_absmean", "ch_std")


def probe_table(metrics: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Probe statistics at the first and last probed step, mean over seeds, per group and site.

    Sites: the first and last norm layer (``layer{i}``) and every max-pool
    (``pool{j}``). Columns: the group, ``site``, ``step`` and one column per
    statistic (:data:`PROBE_STATS` for norm layers, :data:`POOL_STATS` for
    pools, prefixed ``pool/``). Empty when no run logged probes.
    """
    p = metrics[metrics["split"] == "probe"]
    if p.empty:
        return pd.DataFrame()
    parts = p["metric"].str.split("/", n=1, expand=True)
    p = p.assign(site=parts[0], stat=parts[1])
    layers = sorted({s for s in p["site"] if s.startswith("layer")}, key=lambda s: int(s[5:]))
    keep_layers = {layers[0], layers[-1]} if layers else set()
    keep = (p["site"].isin(keep_layers) & p["stat"].isin(PROBE_STATS)) | (
        p["site"].str.startswith("pool") & p["stat"].isin(POOL_STATS)
    )
    p = p[keep]
    first_last = p.groupby("run")["step"].agg(["min", "max"])
    p = p.join(first_last, on="run")
    p = p[(p["step"] == p["min"]) | (p["step"] == p["max"])]
    p = p.assign(stat=np.where(p["site"].str.startswith("pool"), "pool/" + p["stat"], p["stat"]))
    table = p.pivot_table(index=[*by, "site", "step"], columns="stat", values="value", aggfunc="mean").reset_index()
    table.columns.name = None
    return table
