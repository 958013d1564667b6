"""How each residual branch of a ResNet opens during training: the branch's scale per block from the probe rows.

A ResNet branch that starts closed is opened by whatever multiplies its output
(:mod:`bnstudy.train.probes`):

- a scalar, logged as ``block{b}/gain``: SkipInit's ``branch_gain`` (a variant
  without γ, or ``model.branch_gate=scalar``) and Fixup's multiplier
  (``model.init=fixup``);
- else the per-channel γ of the branch's last norm site (``norm2``), logged as
  ``layer{i}/gamma/{mean,std}`` (mean and spread over channels): under
  ``model.zero_init_residual=true`` with the default gate it starts at 0.

Which ``layer{i}`` is block b's ``norm2`` is read from the run's own model, not
from fixed positions: the model of the run's ``config.yaml`` is built on the
meta device (nothing allocated, no random numbers drawn) and the b-th site of
:func:`bnstudy.norm.norm_modules` whose name ends in ``.norm2`` is block b's.
A run whose config cannot be rebuilt keeps its gains and loses only its γ.

:func:`branch_figure` draws one panel per block (rows: stages); :func:`branch_table`
gives each group's scale per block at the first and the last probe.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bnstudy.analysis.style import _FALLBACK, X_LABELS, color, grid_figure, variant_order

GAIN = "gain"
GAMMA = "norm2 γ"
BRANCH_COLUMNS = ["run", "step", "block", "stage", "scale", "site", "value", "spread"]
TABLE_COLUMNS = ["block", "stage", "scale", "site", "runs", "first_step", "first", "first_spread", "last_step", "last", "last_spread"]
SPARE = ("#17becf", "#bcbd22", "#e377c2", "#8c564b", "#7f7f7f", "#9467bd")  # a second group of one variant: unlike the palette's
_GAIN_ROW = re.compile(r"^block(\d+)/gain$")
_GAMMA_ROW = re.compile(r"^(layer\d+)/gamma/(mean|std)$")


@dataclass(frozen=True)
class BranchSite:
    """Block ``block``'s last norm site: its probe name ``layer`` (``layer{i}``), qualified module name and stage."""

    block: int
    layer: str
    name: str
    stage: int | None


# ---------------------------------------------------------------- which layer ends which branch


def branch_sites(run_dir: str | Path) -> list[BranchSite] | None:
    """Each residual block's ``norm2`` site of the run in ``run_dir`` (a folder or a packed run), in block order.

    Read from the model its ``config.yaml`` builds, on the meta device. None when
    the run is not a ResNet or its config is missing or does not build a model.
    """
    from bnstudy.archive import run_file_text

    try:
        import yaml

        text = run_file_text(run_dir, "config.yaml")
        conf = yaml.safe_load(text) if text else None
    except Exception:  # an unreadable record: no mapping, never a crash
        return None
    if not isinstance(conf, dict):
        return None
    conf = {k: v for k, v in conf.items() if k != "hydra"}
    model = conf.get("model")
    if not isinstance(model, dict) or model.get("name") != "resnet":
        return None
    key = json.dumps({k: conf.get(k) for k in ("model", "norm", "data")}, sort_keys=True, default=str)
    return _sites(key)


@functools.lru_cache(maxsize=64)
def _sites(key: str) -> list[BranchSite] | None:
    # one build per distinct model config (the seeds of a study share theirs); a list the caller must not change
    try:
        import torch

        from bnstudy.config import RunConfig
        from bnstudy.models import build_model
        from bnstudy.norm import norm_modules

        cfg = RunConfig.from_dict({k: v for k, v in json.loads(key).items() if v is not None})
        try:
            from bnstudy.data import spec

            s = spec(cfg.data)
            in_shape, classes = tuple(s.shape), s.num_classes
        except Exception:
            in_shape, classes = (3, 32, 32), 10  # the site names do not depend on the input's shape
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            net = build_model(cfg.model, cfg.norm, in_shape, classes)
        sites = [(i + 1, name) for i, (name, _) in enumerate(norm_modules(net)) if name == "norm2" or name.endswith(".norm2")]
        out, stage, width = [], 0, None
        for b, (i, name) in enumerate(sites, start=1):
            block = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            w = getattr(getattr(block, "conv2", None), "out_channels", None)
            if w is None:
                stage = None
            elif stage is not None and w != width:
                stage, width = stage + 1, w
            out.append(BranchSite(b, f"layer{i}", name, stage))
        return out or None
    except Exception:  # a config today's code refuses, a plugin variant not loaded, ...: skip the γ lines
        return None


# ---------------------------------------------------------------- tidy rows


def branch_rows(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (ResNet run, probe step, block, scale): ``block{b}/gain``, and block b's ``norm2`` γ mean with
    its channel spread (``spread``, the γ std; NaN for a gain). Columns :data:`BRANCH_COLUMNS`; ``scale`` is
    :data:`GAIN` or :data:`GAMMA`, ``site`` the probe name (``block{b}/gain``, ``layer{i}``). Empty when no
    ResNet run logged a gain or a γ of a branch's last norm site.
    """
    empty = pd.DataFrame(columns=BRANCH_COLUMNS)
    if metrics.empty or runs.empty or "model" not in runs.columns:
        return empty
    res = runs[runs["model"].astype(str) == "resnet"]
    probe = metrics[(metrics["split"] == "probe") & metrics["run"].isin(res["run"])]
    probe = probe[probe["metric"].str.match(r"^(block\d+/gain|layer\d+/gamma/(mean|std))$")]
    if probe.empty:
        return empty
    frames = []
    for run, d in probe.groupby("run", sort=True):
        run_dir = res.loc[res["run"] == run, "run_dir"].iloc[0] if "run_dir" in res.columns else None
        sites = branch_sites(run_dir) if run_dir is not None else None
        stages = {s.block: s.stage for s in sites or []}
        gains = d[d["metric"].str.match(_GAIN_ROW.pattern)]
        if not gains.empty:
            blocks = gains["metric"].str.extract(_GAIN_ROW.pattern)[0].astype(int)
            frames.append(
                pd.DataFrame(
                    {
                        "run": run,
                        "step": gains["step"].to_numpy(),
                        "block": blocks.to_numpy(),
                        "stage": [stages.get(b) for b in blocks],
                        "scale": GAIN,
                        "site": gains["metric"].to_numpy(),
                        "value": gains["value"].astype(float).to_numpy(),
                        "spread": math.nan,
                    }
                )
            )
        if not sites:
            continue
        of_layer = {s.layer: s for s in sites}
        gam = d[d["metric"].str.match(_GAMMA_ROW.pattern)]
        parts = gam["metric"].str.extract(_GAMMA_ROW.pattern)
        gam = gam.assign(layer=parts[0].to_numpy(), stat=parts[1].to_numpy())
        gam = gam[gam["layer"].isin(list(of_layer))]
        if gam.empty:
            continue
        wide = gam.pivot_table(index=["layer", "step"], columns="stat", values="value", aggfunc="first").reset_index()
        if "mean" not in wide.columns:
            continue
        frames.append(
            pd.DataFrame(
                {
                    "run": run,
                    "step": wide["step"].to_numpy(),
                    "block": [of_layer[l].block for l in wide["layer"]],
                    "stage": [of_layer[l].stage for l in wide["layer"]],
                    "scale": GAMMA,
                    "site": wide["layer"].to_numpy(),
                    "value": wide["mean"].astype(float).to_numpy(),
                    "spread": wide["std"].astype(float).to_numpy() if "std" in wide.columns else math.nan,
                }
            )
        )
    if not frames:
        return empty
    out = pd.concat(frames, ignore_index=True)[BRANCH_COLUMNS]
    out["step"] = out["step"].astype("int64")
    out["block"] = out["block"].astype("int64")
    return out.sort_values(["run", "scale", "block", "step"], kind="stable").reset_index(drop=True)


def _with_groups(rows: pd.DataFrame, runs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    return rows.merge(runs[["run", *by]], on="run", how="left")


def _groups(runs: pd.DataFrame, rows: pd.DataFrame, by: Sequence[str]) -> list[tuple]:
    """The groups (values of ``by``) that have branch rows, norms in palette order."""
    keys = runs[runs["run"].isin(rows["run"])][list(by)].drop_duplicates()
    order = {n: i for i, n in enumerate(variant_order(keys["norm"].dropna()))} if "norm" in by else {}
    tuples = list(keys.itertuples(index=False, name=None))
    pos = list(by).index("norm") if "norm" in by else None
    return sorted(tuples, key=lambda k: (order.get(str(k[pos]), len(order)) if pos is not None else 0, tuple(map(str, k))))


def _match(df: pd.DataFrame, by: Sequence[str], key: tuple) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for c, v in zip(by, key):
        col = df[c]
        mask &= (col.isna() if _missing(v) else col.astype(str) == str(v)).to_numpy()
    return df[mask]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def group_label(by: Sequence[str], key: tuple) -> str:
    """``affine + zero_init_residual``, ``none + init=fixup``, ``affine + zero_init_residual + branch_gate=scalar``."""
    from bnstudy.analysis.ladder import setting_label

    values = dict(zip(by, key))
    return setting_label(str(values.pop("norm", "")), **values) if "norm" in by else ", ".join(f"{c}={v}" for c, v in values.items())


def group_colours(by: Sequence[str], keys: Sequence[tuple]) -> dict[tuple, str]:
    """One colour per group: its variant's (:func:`bnstudy.analysis.style.color`) for the first group of each
    variant, and for each further group of the same variant a colour that no group's variant has."""
    pos = list(by).index("norm") if "norm" in by else None
    own = [color(str(k[pos])) if pos is not None else None for k in keys]
    spare = [c for c in (*SPARE, *_FALLBACK) if c not in own]
    out: dict[tuple, str] = {}
    for key, c in zip(keys, own):
        if c is None or c in out.values():
            c = next((s for s in spare if s not in out.values()), _FALLBACK[len(out) % len(_FALLBACK)])
        out[key] = c
    return out


# ---------------------------------------------------------------- table


def branch_table(runs: pd.DataFrame, metrics: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Each group's branch scale per block at its first and last probe, mean over seeds.

    One row per group, block and scale (:data:`GAIN` where the runs log
    ``block{b}/gain``, :data:`GAMMA` for the mean γ of block b's ``norm2``; a
    setting with both, ``model.branch_gate=scalar``, has both rows). Columns:
    ``by`` then :data:`TABLE_COLUMNS`; ``first``/``last`` are the seeds' mean at
    each run's first and last probe, ``*_spread`` the mean channel std of γ
    (NaN for a gain). Empty when no ResNet run logged a branch scale.
    """
    by = list(by)
    rows = branch_rows(runs, metrics)
    if rows.empty:
        return pd.DataFrame(columns=[*by, *TABLE_COLUMNS])
    ends = rows.groupby("run")["step"].agg(["min", "max"])
    rows = rows.join(ends, on="run")
    rows = _with_groups(rows, runs, by)
    out = []
    for key in _groups(runs, rows, by):
        g = _match(rows, by, key)
        for block in sorted(g["block"].unique()):
            for scale in (GAIN, GAMMA):  # the gain before the γ beside it
                d = g[(g["block"] == block) & (g["scale"] == scale)]
                if d.empty:
                    continue
                first, last = d[d["step"] == d["min"]], d[d["step"] == d["max"]]
                stage = d["stage"].dropna()
                out.append(
                    {
                        **dict(zip(by, key)),
                        "block": int(block),
                        "stage": int(stage.iloc[0]) if len(stage) else None,
                        "scale": scale,
                        "site": ", ".join(sorted(d["site"].unique(), key=_natural)),
                        "runs": int(d["run"].nunique()),
                        "first_step": _step(first["step"]),
                        "first": float(first["value"].mean()),
                        "first_spread": _mean_or_nan(first["spread"]),
                        "last_step": _step(last["step"]),
                        "last": float(last["value"].mean()),
                        "last_spread": _mean_or_nan(last["spread"]),
                    }
                )
    return pd.DataFrame(out, columns=[*by, *TABLE_COLUMNS])


def _mean_or_nan(s: pd.Series) -> float:
    return float(s.mean()) if s.notna().any() else math.nan


def _step(s: pd.Series) -> int | float:
    vals = s.dropna().unique()
    return int(vals[0]) if len(vals) == 1 else float(np.mean(vals)) if len(vals) else math.nan


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ---------------------------------------------------------------- figure


def branch_figure(runs: pd.DataFrame, metrics: pd.DataFrame, by: Sequence[str] | None = None, seeds: bool = False) -> Figure | None:
    """How each residual branch opens over training: one panel per block (a row per stage), one colour per group.

    y is the branch's scale: the gain where the group's runs log ``block{b}/gain``
    (mean over seeds), else the mean γ of block b's ``norm2`` with a band of ± its
    channel spread (γ std), both means over seeds. A group with both
    (``model.branch_gate=scalar``) draws the gain solid and the γ mean dashed.
    ``by``: the columns naming a group (default: :func:`bnstudy.analysis.aggregate.group_columns`);
    ``seeds``: each run's scale as a thin line. None when no ResNet run logged a branch scale.
    """
    from bnstudy.analysis.aggregate import group_columns

    shown = runs[runs["status"] != "failed"] if "status" in runs.columns else runs
    rows = branch_rows(shown, metrics)
    if rows.empty:
        return None
    by = list(by) if by is not None else group_columns(shown)
    rows = _with_groups(rows, shown, by)
    keys = _groups(shown, rows, by)
    colours = group_colours(by, keys)
    blocks = sorted(rows["block"].unique())
    stage_of = rows.dropna(subset=["stage"]).groupby("block")["stage"].first().astype(int).to_dict()
    if stage_of and all(b in stage_of for b in blocks):
        per_stage = {s: [b for b in blocks if stage_of[b] == s] for s in sorted(set(stage_of[b] for b in blocks))}
        ncols = max(len(v) for v in per_stage.values())
        slots = [(s, b) for s, bs in per_stage.items() for b in bs + [None] * (ncols - len(bs))]
    else:
        ncols = 3 if len(blocks) > 3 else len(blocks)
        slots = [(None, b) for b in blocks]
    fig, axes = grid_figure(len(slots), ncols=ncols, w=3.8, h=2.9)
    dashed = False
    for ax, (stage, block) in zip(axes, slots):
        if block is None:
            ax.set_visible(False)
            continue
        for key in keys:
            g = _match(rows, by, key)
            g = g[g["block"] == block]
            has_gain = (g["scale"] == GAIN).any()
            for scale in (GAIN, GAMMA):
                d = g[g["scale"] == scale]
                if d.empty:
                    continue
                beside = scale == GAMMA and has_gain  # branch_gate=scalar: γ drawn dashed beside the gain
                dashed |= beside
                m = d.groupby("step").agg(value=("value", "mean"), spread=("spread", "mean")).reset_index().sort_values("step")
                xs = m["step"].to_numpy(float)
                if seeds:
                    for _, r in d.groupby("run", sort=True):
                        r = r.sort_values("step")
                        ax.plot(r["step"], r["value"], color=colours[key], lw=0.6, alpha=0.35, ls="--" if beside else "-")
                ax.plot(xs, m["value"], color=colours[key], lw=1.1 if beside else 1.7, ls="--" if beside else "-", marker="o" if len(xs) < 3 else None, ms=3)
                if scale == GAMMA and not beside and m["spread"].notna().any():
                    s = m["spread"].fillna(0).to_numpy(float)
                    ax.fill_between(xs, m["value"] - s, m["value"] + s, color=colours[key], alpha=0.15, lw=0)
        ax.axhline(0.0, color="0.6", lw=0.8, ls=":")
        ax.set_title(f"block {block}" + (f" (stage {stage})" if stage is not None else ""), fontsize=10)
        ax.set_xlabel(X_LABELS["step"], fontsize=8)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("branch scale", fontsize=9)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[k], lw=2) for k in keys]
    labels = [group_label(by, k) for k in keys]
    handles += [Line2D([], [], color="k", lw=1.7), Patch(color="k", alpha=0.15, lw=0)]
    labels += ["gain (mean over seeds); no gain: norm2 γ mean", "± norm2 γ channel std"]
    if dashed:
        handles.append(Line2D([], [], color="k", lw=1.1, ls="--"))
        labels.append("norm2 γ mean beside a gain")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), frameon=False, fontsize=9)
    fig.suptitle(
        "How each residual branch opens: the scalar ending it (SkipInit gain, Fixup multiplier) or its last norm's γ\n"
        "(mean over seeds; band: ± the spread of γ over channels; dotted: a closed branch)",
        fontsize=11,
    )
    return fig
