"""Seed aggregation (mean and Student-t interval), differences between variants (Welch, Holm), time-to-target, tables.

Seeds are replicates: every other factor that varies across the runs, with the
norm variant first, names a group. A group of one seed has a mean and a NaN
interval, never an error.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bnstudy.analysis.load import FACTORS, factor_columns
from bnstudy.runs import DONE

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


def t_quantile(level: float, df: float) -> float:
    """Two-sided critical value: P(|T| < t) = ``level`` for Student's t with ``df`` degrees of freedom."""
    if not df > 0:
        return math.nan
    return float(stats.t.ppf((1 + level) / 2, df))


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


class Welch(NamedTuple):
    """Difference of two means with Welch's interval and two-sided p-value (NaN below two values a side)."""

    diff: float
    lo: float
    hi: float
    p: float
    df: float


def _finite(values: Iterable[float]) -> np.ndarray:
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float).to_numpy()
    return v[np.isfinite(v)]


def welch(values: Iterable[float], reference: Iterable[float], level: float = 0.95) -> Welch:
    """mean(values) − mean(reference), its Welch ``level`` interval and the Welch t-test's p-value (scipy.stats)."""
    a, b = _finite(values), _finite(reference)
    if len(a) == 0 or len(b) == 0:
        return Welch(math.nan, math.nan, math.nan, math.nan, math.nan)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Welch(diff, math.nan, math.nan, math.nan, math.nan)
    # identical seeds (e.g. every run at chance) give a zero variance; scipy warns and returns the limit
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(confidence_level=level)
    return Welch(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


def difference_of_differences(
    a: Iterable[float], b: Iterable[float], c: Iterable[float], d: Iterable[float], level: float = 0.95
) -> Welch:
    """(mean a − mean b) − (mean c − mean d) with a Welch–Satterthwaite ``level`` interval and two-sided p-value.

    Compares a gap measured in two conditions (a − b under Adam against c − d
    under SGD, say) from four independent groups of seeds: the standard error
    adds each group's s²/n, and the degrees of freedom follow
    Welch–Satterthwaite. NaN where a group has fewer than two finite values.
    """
    groups = [_finite(g) for g in (a, b, c, d)]
    if any(len(g) == 0 for g in groups):
        return Welch(math.nan, math.nan, math.nan, math.nan, math.nan)
    diff = float(groups[0].mean() - groups[1].mean() - groups[2].mean() + groups[3].mean())
    if any(len(g) < 2 for g in groups):
        return Welch(diff, math.nan, math.nan, math.nan, math.nan)
    v = [g.var(ddof=1) / len(g) for g in groups]
    se = math.sqrt(sum(v))
    if se == 0:
        return Welch(diff, diff, diff, 0.0 if diff else 1.0, math.inf)
    df = sum(v) ** 2 / sum(vi**2 / (len(g) - 1) for vi, g in zip(v, groups))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Welch(diff, diff - half, diff + half, p, float(df))


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not counted in the family."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m, running = len(ok), 0.0
    for i, j in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - i) * p[j]))  # monotone: never below a smaller p's adjustment
        out[j] = running
    return out


# ---------------------------------------------------------------- groups


def varying_factors(runs: pd.DataFrame, exclude: Sequence[str] = ("seed",)) -> list[str]:
    """Factors that take more than one value across ``runs`` (seed excluded), in table order."""
    cols = [c for c in FACTORS if c in runs.columns] + _extra_factors(runs)
    return [c for c in cols if c not in exclude and runs[c].dropna().astype(str).nunique() > 1]


def _extra_factors(runs: pd.DataFrame) -> list[str]:
    return [c for c in factor_columns(runs) if c not in FACTORS]


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
    "final_test_precise_acc",
    "final_test_precise_acc_lo",
    "final_test_precise_acc_hi",
    "final_val_acc",
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
    runs; best test accuracy: mean of each run's best; precise-statistics test
    accuracy (``train.precise_bn``; NaN where no run logged it): mean and CI
    like the final one; final validation accuracy (NaN without a val split):
    mean; steps/seconds to target: mean over the runs that reached it, with
    ``reached`` counting them among ``runs``; ``diverged``/``failed``: counts;
    params, ms/step: means.
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
        pm, plo, phi, _ = mean_ci(_column(done, "final_test_precise_acc"), level)
        t = ttt.loc[done["run"]]
        rows.append(
            (
                *key,
                len(done),
                m,
                lo,
                hi,
                _mean(done["best_test_acc"]),
                pm,
                plo,
                phi,
                _mean(_column(done, "final_val_acc")),
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


# ---------------------------------------------------------------- differences vs a reference variant

# Per-run numbers compared between variants. Time to target is left out: it exists
# only for the runs that reached the target, so a difference of it would be biased.
DIFF_METRICS = ("final_test_acc", "best_test_acc", "final_test_precise_acc")
DIFF_COLUMNS = ["metric", "reference", "n", "n_ref", "mean", "ref_mean", "diff", "diff_lo", "diff_hi", "p", "p_holm"]


def _key(row: Iterable) -> tuple[str, ...]:
    # str keys match NaN to NaN and 0.1 to 0.1 whatever the column dtype
    return tuple(str(v) for v in row)


def _matching(ref: dict[tuple[str, ...], Any], key: tuple[str, ...]) -> Any:
    """The reference entry of setting ``key``: an exact match, else one whose only differences are its own blanks.

    A factor that does not apply to the reference (blank, e.g. ``freeze_after``
    for ``bn`` beside ``bn_frozen``) matches any value of it.
    """
    if key in ref:
        return ref[key]
    blank = {"nan", "None", "<NA>"}
    for k, v in ref.items():
        if all(a == b or a in blank for a, b in zip(k, key)):
            return v
    return None


def differences(
    runs: pd.DataFrame,
    by: Sequence[str] | None = None,
    reference: str = "bn",
    metrics: Sequence[str] = DIFF_METRICS,
    level: float = 0.95,
) -> pd.DataFrame:
    """Each group minus the ``reference`` variant's group in the same setting (the other columns of ``by``).

    One row per (group, metric) over finished runs: the two means, their
    difference with Welch's ``level`` interval, the Welch t-test's two-sided
    p-value and its Holm adjustment over the rows of the same metric (the
    comparisons one table column makes). Metrics no run has, groups without a
    reference in their setting, and groups without a finite value are left out.
    """
    by = list(by) if by is not None else group_columns(runs)
    if "norm" not in by:
        raise ValueError("differences compare variants: 'norm' must be one of the group columns")
    setting = [c for c in by if c != "norm"]
    cols = [*by, *DIFF_COLUMNS]
    done = runs[runs["status"].isin(DONE)]
    if done.empty:
        return pd.DataFrame(columns=cols)
    frames = []
    for metric in metrics:
        if metric not in done.columns or not len(_finite(done[metric])):
            continue
        groups = list(done.groupby(by, sort=True, dropna=False))
        ref = {_key(g[setting].iloc[0]): g[metric] for _, g in groups if g["norm"].iloc[0] == reference}
        rows = []
        for key, g in groups:
            key = key if isinstance(key, tuple) else (key,)
            r = _matching(ref, _key(g[setting].iloc[0]))
            if g["norm"].iloc[0] == reference or r is None or not len(_finite(g[metric])) or not len(_finite(r)):
                continue
            w = welch(g[metric], r, level)
            rows.append((*key, metric, reference, len(_finite(g[metric])), len(_finite(r)), _mean(g[metric]), _mean(r),
                         w.diff, w.lo, w.hi, w.p))  # fmt: skip
        if rows:
            d = pd.DataFrame(rows, columns=cols[:-1])
            d["p_holm"] = holm(d["p"])
            frames.append(d)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


# ---------------------------------------------------------------- each variant at its own learning rate


class Untunable(ValueError):
    """The runs cannot give a tuned-per-variant table; the message (one line) says why."""


def choose_rates(runs: pd.DataFrame, by: Sequence[str] | None = None, factor: str = "lr") -> pd.DataFrame:
    """Per setting (``by`` without ``factor``): the ``factor`` value with the best mean final validation accuracy.

    Never the test split. A run evaluated with precise statistics
    (``train.precise_bn``) is scored by its precise validation accuracy, the
    one its precise test accuracy is read with; others by the standard one.
    Finished runs only; a diverged run without a finite
    validation accuracy scores 0, so a rate is not chosen for the seeds that
    survived it. Ties go to the first value in sorted order. Columns: the
    setting, ``factor``, ``val_acc`` (the chosen mean), ``val_runs`` and
    ``rates`` (how many values were tried). Raises :class:`Untunable` when
    ``factor`` is not swept or no run has a validation split.
    """
    by = list(by) if by is not None else group_columns(runs)
    setting = [c for c in by if c != factor]
    values = runs[factor].dropna().unique() if factor in runs.columns else []
    if len(values) < 2:
        shown = ", ".join(str(v) for v in values) or "not recorded"
        raise Untunable(f"the study runs one {factor} ({factor}={shown}), so there is no rate to tune; sweep optim.{factor} to get it")
    done = runs[runs["status"].isin(DONE)]
    val = pd.to_numeric(_column(done, "final_val_acc"), errors="coerce").astype(float)
    precise = pd.to_numeric(_column(done, "final_val_precise_acc"), errors="coerce").astype(float)
    val = precise.where(np.isfinite(precise), val)
    if not np.isfinite(val).any():
        raise Untunable(
            "no run has a validation split (data.val_size=0), and a rate chosen on the test split would flatter every "
            "variant; rerun the sweep with data.val_size>0 to get it"
        )
    score = val.where(np.isfinite(val) | (done["status"] != "diverged"), 0.0)
    scored = done.assign(_score=score)[lambda d: np.isfinite(d["_score"])]
    rows = []
    for key, g in scored.groupby(setting, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        per_rate = g.groupby(factor, sort=True)["_score"].agg(["mean", "size"])
        best = per_rate["mean"].idxmax()
        rows.append((*key, best, float(per_rate.loc[best, "mean"]), int(per_rate.loc[best, "size"]), len(per_rate)))
    return pd.DataFrame(rows, columns=[*setting, factor, "val_acc", "val_runs", "rates"])


def tuned_summary(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    target: float | None = None,
    by: Sequence[str] | None = None,
    factor: str = "lr",
    level: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary table at each setting's chosen ``factor``, the runs at it) — see :func:`choose_rates`.

    The table has :func:`summary_table`'s columns for ``[*setting, factor]``
    plus ``val_acc`` (mean final validation accuracy at the chosen value) and
    ``rates``; the runs are for :func:`differences` with ``by=setting``.
    Raises :class:`Untunable` like :func:`choose_rates`.
    """
    by = list(by) if by is not None else group_columns(runs)
    choice = choose_rates(runs, by, factor)
    setting = [c for c in by if c != factor]
    keys = [*setting, factor]
    chosen = {_key(r[:-3]): r[-3:] for r in choice.itertuples(index=False, name=None)}  # -> (val_acc, val_runs, rates)
    picked = runs[[_key(r) in chosen for r in runs[keys].itertuples(index=False, name=None)]]
    table = summary_table(picked, metrics, target=target, by=keys, level=level)
    found = [chosen[_key(r)] for r in table[keys].itertuples(index=False, name=None)]
    table["val_acc"] = [f[0] for f in found]
    table["rates"] = [f[2] for f in found]
    return table, picked.reset_index(drop=True)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    # tables loaded before a result column existed lack it: all NaN
    return df[name] if name in df.columns else pd.Series(math.nan, index=df.index)


def _mean(s: pd.Series) -> float:
    v = pd.to_numeric(s, errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan
