"""Tables of the probe rows: statistics at the first and last probe, and landscape and weight probes late in training."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from bnstudy.analysis.aggregate import mean_ci
from bnstudy.runs import DONE

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


# ---------------------------------------------------------------- landscape and weight probes, late in training

# probe rows summarised per run by their mean over the second half of training
LATE_PROBES = {
    "landscape/loss_range": "loss range",
    "landscape/grad_change": "gradient change",
    "landscape/beta_smooth": "β-smoothness",
    "weight_norm": "‖W‖",
    "eff_step": "effective step",
    "eff_lr": "lr/‖W‖²",
}


def late_probes(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: each :data:`LATE_PROBES` quantity averaged over the probes of the second half of its steps.

    Weight rows (``layer{i}/weight_norm``, ``eff_step``, ``eff_lr``) are first
    averaged over the layers that have them. Columns: ``run`` and one per
    quantity a run logged; empty when no run logged any.
    """
    p = metrics[metrics["split"] == "probe"]
    if p.empty:
        return pd.DataFrame()
    name = p["metric"].where(p["metric"].str.startswith("landscape/"), p["metric"].str.split("/").str[-1])
    weight_row = p["metric"].str.fullmatch(r"layer\d+/(weight_norm|eff_step|eff_lr)")
    p = p.assign(q=name)[p["metric"].str.startswith("landscape/") | weight_row]
    p = p[p["q"].isin(LATE_PROBES)]
    if p.empty:
        return pd.DataFrame()
    half = runs.set_index("run")["steps"].astype(float) / 2
    p = p[p["step"].astype(float) > p["run"].map(half)]
    per_step = p.groupby(["run", "q", "step"])["value"].mean()  # mean over layers
    table = per_step.groupby(["run", "q"]).mean().unstack("q").reset_index()
    table.columns.name = None
    return table[["run", *[q for q in LATE_PROBES if q in table.columns]]]


def late_probe_table(runs: pd.DataFrame, metrics: pd.DataFrame, by: Sequence[str], level: float = 0.95) -> pd.DataFrame:
    """Per group: mean and CI over seeds of each run's late-training probe value (:func:`late_probes`)."""
    late = late_probes(runs, metrics)
    if late.empty:
        return pd.DataFrame()
    df = runs[runs["status"].isin(DONE)][["run", *by]].merge(late, on="run")
    rows = []
    for key, g in df.groupby(list(by), sort=True, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["runs"] = len(g)
        for q in LATE_PROBES:
            if q in g.columns:
                m, lo, hi, _ = mean_ci(g[q], level)
                row[q], row[f"{q}_lo"], row[f"{q}_hi"] = m, lo, hi
        rows.append(row)
    return pd.DataFrame(rows)
