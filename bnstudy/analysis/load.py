"""Read results folders into tidy tables: one row per run, and the long metrics log.

A run is a folder holding ``summary.json`` (or a ``metrics.csv`` without one:
reported as unreadable), at any depth under the root, or a run of a packed
study (:mod:`bnstudy.archive`): both read the same. Files that are missing,
unreadable or cut short skip that run (or its metrics) with a warning;
loading never crashes on a bad run.

    load_metrics("results/depth")   # a whole study, one DataFrame: every logged row with its run's factors
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bnstudy.archive import iter_runs
from bnstudy.archive_write import refuse_damaged
from bnstudy.plugins import load_recorded
from bnstudy.provenance import code_version, commit_label
from bnstudy.runs import summary_damage
from bnstudy.sweep_log import SWEEPS_LOG, multirun_command

# The factors of summary.json, in the order tables show them.
FACTORS = [
    "data",
    "model",
    "norm",
    "optim",
    "lr",
    "momentum",
    "weight_decay",
    "sched",
    "batch_size",
    "steps",
    "seed",
    "depth",
    "width",
    "activation",
    "init",
    "pool",
    "precise_bn",
    "augment",
    "study",
]
# Factors added after studies were committed, with the value the code used before them:
# a summary without the key was produced with that value, so old and new runs group together.
FACTOR_DEFAULTS: dict[str, Any] = {"init": "default", "pool": "max", "norm_decay": True, "norm_lr_scale": 1.0}
RESULT_COLUMNS = [
    "status",
    "step",
    "params",
    "seconds",
    "ms_per_step",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "best_test_acc",
    "final_test_precise_acc",
    "final_val_acc",
    "final_val_precise_acc",
    "diverged_at",
    "device",
    "commit",  # short git commit of the code that trained the run ("unknown" before provenance was recorded)
    "code",  # fingerprint of its training code (bnstudy.provenance); None when unknown
]
METRIC_COLUMNS = ["run", "step", "split", "metric", "value", "seconds"]


class NoRuns(Exception):
    """The results folder holds no run folder."""


def factor_columns(df: pd.DataFrame) -> list[str]:
    """Every column of a runs table that names a factor: the known ``FACTORS`` and any extra key a study
    varies (``zero_init_residual``, ``freeze_after``, ...), in table order; not the run's identity or results."""
    return [c for c in df.columns if c not in ("run", "run_dir", *RESULT_COLUMNS)]


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run under ``root`` as its folder path (a packed run's would-be folder), sorted."""
    return [rec.dir for rec in iter_runs(root)]


def _num(x: Any) -> float:
    # summaries store non-finite numbers as null; tables want NaN
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _run_row(root: Path, run_dir: Path, s: dict[str, Any]) -> dict[str, Any]:
    final, best = s.get("final") or {}, s.get("best") or {}
    rel = run_dir.relative_to(root).as_posix()
    row: dict[str, Any] = {"run": rel if rel != "." else (s.get("run") or run_dir.name), "run_dir": str(run_dir.resolve())}
    factors = s.get("factors") or {}
    row.update({k: factors.get(k, FACTOR_DEFAULTS.get(k)) for k in FACTORS})
    row.update({k: v for k, v in factors.items() if k not in FACTORS})
    row.update({k: factors.get(k, v) for k, v in FACTOR_DEFAULTS.items() if k not in FACTORS})  # extra factors added later
    row.update(
        status=s.get("status", "unknown"),
        step=int(s["step"]) if isinstance(s.get("step"), (int, float)) else None,
        params=s.get("params"),
        seconds=_num(s.get("seconds")),
        ms_per_step=_num(s.get("ms_per_step")),
        final_test_acc=_num(final.get("test/acc")),
        final_test_loss=_num(final.get("test/loss")),
        final_train_loss=_num(final.get("train/loss")),
        best_test_acc=_num(best.get("test/acc")),
        final_test_precise_acc=_num(final.get("test/precise_acc")),
        final_val_acc=_num(final.get("val/acc")),
        final_val_precise_acc=_num(final.get("val/precise_acc")),
        diverged_at=s.get("diverged_at"),
        device=s.get("device"),
        commit=commit_label(s),
        code=_code(s),
    )
    return row


def _code(s: dict[str, Any]) -> str | None:
    # by today's staleness rule, so a record made under an older rule compares equal to a new one
    return code_version(s)


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per run under ``root`` (folders and packs): run, run_dir, every factor, status and final numbers.

    A damaged pack is not read: :class:`bnstudy.archive.PackError` says which and what to do.
    """
    root = Path(root)
    refuse_damaged(root)
    rows, summaries = [], []
    for rec in iter_runs(root):
        try:
            s = rec.summary
            if s is None:
                raise ValueError(summary_damage(rec.dir) or "summary.json is missing or not a JSON object")
            rows.append(_run_row(root, rec.dir, s))
            summaries.append(s)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            warnings.warn(f"skipped {rec.dir}: unreadable summary.json ({e})", stacklevel=2)
    # variants from plugins: their registry entries give colours and say which keep running statistics
    for problem in load_recorded(summaries):
        warnings.warn(problem, stacklevel=2)
    columns = ["run", "run_dir", *FACTORS, *RESULT_COLUMNS]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows)
    extra = [c for c in df.columns if c not in columns]
    df = df.reindex(columns=columns + extra)
    for c in ("step", "params", "diverged_at"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    _fill_precise(df)
    return df.reset_index(drop=True)


def project_root(start: str | Path | None = None) -> Path:
    """The project a notebook belongs to: the nearest folder holding pyproject.toml, from ``start`` (default: the
    working directory) up; ``start`` itself when none does.

    Jupyter runs a notebook in the notebook's own folder (``notebooks/``), so a path typed relative to the project
    (``results/quickstart``) has to be read from here, not from the working directory.
    """
    start = Path(start if start is not None else Path.cwd()).resolve()
    return next((d for d in (start, *start.parents) if (d / "pyproject.toml").is_file()), start)


def load_study(path: str | Path, start: str | Path | None = None) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A results folder to analyse, its runs table and its metrics: ``(folder, runs, metrics)``.

    A relative ``path`` is read from :func:`project_root` of ``start``. A path that is not a folder, or a folder
    without a readable run, raises :class:`NoRuns` (one line saying so), never an empty table.
    """
    root = Path(path).expanduser()
    if not root.is_absolute():
        root = project_root(start) / root
    if not root.is_dir():
        raise NoRuns(f"{path}: no such folder ({root}); give a results folder, absolute or relative to the project root, e.g. results/quickstart")
    runs = load_runs(root)
    if runs.empty:
        raise NoRuns(f"no runs under {root} (a run folder holds summary.json); give a study's results folder, e.g. results/quickstart")
    return root, runs, load_metrics(root, runs)


def _fill_precise(df: pd.DataFrame) -> None:
    """The ``precise_bn`` factor, and precise-statistics accuracy for variants without running statistics.

    ``precise_bn`` (bool) says whether a run was evaluated with recomputed
    statistics (``train.precise_bn`` > 0): true where the run logged a precise
    accuracy. Precise BN recomputes running statistics; a variant without them
    (``affine``, ``none``, ``layernorm``, ...) evaluates the same either way, so
    its precise accuracy is its accuracy, and it counts as evaluated precisely
    wherever a BN-like run of its setting (same other factors) was — so that
    "precise bn − affine" is compared, and a study's earlier standard-evaluation
    runs of bn stay a group of their own instead of being pooled with the
    precise re-runs of the same seeds.
    """
    from bnstudy.norm import NORMS

    has = pd.to_numeric(df["final_test_precise_acc"], errors="coerce").notna()
    if not has.any():
        return
    plain = df["norm"].map(lambda n: n in NORMS and not NORMS[n].running_stats)
    df["precise_bn"] = has
    # every factor but these, the extra ones (zero_init_residual, freeze_after) included
    setting = [c for c in factor_columns(df) if c not in ("norm", "seed", "precise_bn")]
    key = df[setting].apply(lambda col: col.map(str)).agg("|".join, axis=1)
    precise_settings = set(key[has & ~plain])
    df.loc[plain, "precise_bn"] = key[plain].isin(precise_settings)
    evaluated = df.loc[plain, "precise_bn"].astype(bool)
    for split in ("test", "val"):
        df.loc[plain, f"final_{split}_precise_acc"] = df.loc[plain, f"final_{split}_acc"].where(evaluated)


def _read_metrics(path: Path) -> pd.DataFrame:
    # a run killed mid-write may leave a short last line: drop rows that do not parse
    df = pd.read_csv(path, on_bad_lines="skip", dtype=str, keep_default_na=False)
    missing = [c for c in METRIC_COLUMNS[1:] if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    df = df[METRIC_COLUMNS[1:]].copy()
    for c in ("step", "value", "seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce")  # 'nan' and 'inf' parse as floats
    df = df[df["step"].notna() & (df["split"] != "") & (df["metric"] != "")]
    df["step"] = df["step"].astype("int64")
    return df


def load_metrics(root: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table ``run, step, split, metric, value, seconds`` joined with each run's factors and status.

    ``load_metrics("results/depth")`` loads a whole study, packed or not, in one call.
    """
    refuse_damaged(root)
    if runs is None:
        runs = load_runs(root)
    frames = []
    packed = {}
    for rec in iter_runs(root):
        if rec.packed:
            packed[str(rec.dir.resolve())] = rec
    for run, run_dir in zip(runs["run"], runs["run_dir"]):
        rec = packed.get(run_dir)
        if rec is not None:
            df = rec.metrics()
            if len(df):
                frames.append(df.assign(run=run)[METRIC_COLUMNS])
            continue
        path = Path(run_dir) / "metrics.csv"
        if not path.exists():
            continue  # a run that has not logged yet
        try:
            df = _read_metrics(path)
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            warnings.warn(f"skipped metrics of {run_dir}: unreadable metrics.csv ({e})", stacklevel=2)
            continue
        df.insert(0, "run", run)
        frames.append(df)
    info = runs.drop(columns=["run_dir"]).drop(columns=[c for c in ("step", "seconds") if c in runs.columns])
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS + [c for c in info.columns if c != "run"])
    long = pd.concat(frames, ignore_index=True)
    return long.merge(info, on="run", how="left")


def sweep_commands(root: str | Path) -> list[str]:
    """``bnstudy-train -m ...`` commands of the sweeps under ``root``: every one in sweeps.log, then multirun.yaml's."""
    cmds: list[str] = []
    root = Path(root)
    here = (root / "multirun.yaml").exists() or (root / SWEEPS_LOG).exists()
    folders = [root] if here else sorted({p.parent for p in [*root.glob("*/multirun.yaml"), *root.glob(f"*/{SWEEPS_LOG}")]})
    for folder in folders:
        log = folder / SWEEPS_LOG
        if log.exists():
            cmds += [line for line in log.read_text().splitlines() if line.strip()]
        if (folder / "multirun.yaml").exists():
            cmd = multirun_command(folder / "multirun.yaml")
            if cmd is not None:
                cmds.append(cmd)
    return list(dict.fromkeys(cmds))
