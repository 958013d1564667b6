"""Analysis of results folders, usable from a notebook without Hydra.

    root, runs, metrics = load_study("results/quickstart")  # folder (relative: from the project root), runs, metrics
    runs = load_runs("results/quickstart")        # one row per run
    metrics = load_metrics("results/quickstart", runs)  # long table, factors joined
    summary_table(runs, metrics)                   # per variant: mean ± CI, time to target, ...
    differences(runs, reference="bn")              # each variant − bn: Welch interval, p, Holm p
    figures(runs, metrics)                         # {name: matplotlib Figure}

``bnstudy-report DIR`` (:mod:`bnstudy.analysis.report`) writes all of it to disk.
"""
from __future__ import annotations

from bnstudy.analysis.aggregate import (
    DEFAULT_TARGETS,
    Untunable,
    choose_rates,
    curves,
    default_target,
    difference_of_differences,
    differences,
    group_columns,
    holm,
    mean_ci,
    summary_table,
    t_quantile,
    time_to_target,
    tuned_summary,
    varying_factors,
    welch,
)
from bnstudy.analysis.load import FACTORS, NoRuns, find_run_dirs, load_metrics, load_runs, load_study, project_root, sweep_commands
from bnstudy.analysis.probe_tables import probe_table

_PLOTS = {
    "accuracy_figure",
    "color",
    "curves_figure",
    "figures",
    "landscape_figure",
    "loss_figure",
    "palette",
    "probe_figure",
    "save_figure",
    "sensitivity_figure",
    "unit_figure",
    "weight_figure",
}


def __getattr__(name: str):
    # figures import matplotlib lazily, so `bnstudy-runs` (tables only) starts fast
    if name in _PLOTS:
        from bnstudy.analysis import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'bnstudy.analysis' has no attribute '{name}'")

__all__ = [
    "DEFAULT_TARGETS",
    "FACTORS",
    "NoRuns",
    "Untunable",
    "accuracy_figure",
    "choose_rates",
    "color",
    "curves",
    "curves_figure",
    "default_target",
    "difference_of_differences",
    "differences",
    "figures",
    "find_run_dirs",
    "group_columns",
    "holm",
    "landscape_figure",
    "load_metrics",
    "load_runs",
    "load_study",
    "loss_figure",
    "mean_ci",
    "palette",
    "probe_figure",
    "project_root",
    "save_figure",
    "sensitivity_figure",
    "summary_table",
    "sweep_commands",
    "t_quantile",
    "time_to_target",
    "tuned_summary",
    "unit_figure",
    "varying_factors",
    "weight_figure",
    "welch",
]
