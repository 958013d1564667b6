"""``bnstudy-report DIR [--out OUT] [--target ACC]``: report.md, summary.csv and figures for the runs under DIR."""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bnstudy.analysis.aggregate import DEFAULT_TARGETS, group_columns, probe_table, summary_table, varying_factors
from bnstudy.analysis.load import FACTORS, load_metrics, load_runs, sweep_commands
from bnstudy.analysis.plots import figures, save_figure, variant_order

FIGURE_TITLES = {
    "test_acc_vs_step": "Test accuracy vs step",
    "train_loss_vs_step": "Training loss vs step",
    "test_acc_vs_seconds": "Test accuracy vs training time",
    "train_loss_vs_seconds": "Training loss vs training time",
    "activation_percentiles": "Activation-input percentiles over training (Ioffe & Szegedy 2015, Fig. 1b,c)",
}


class NoRuns(Exception):
    """The results folder holds no run folder."""


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def _values(s: pd.Series) -> str:
    vals = list(s.dropna().unique())
    try:
        vals = sorted(vals)
    except TypeError:
        vals = sorted(vals, key=str)
    return ", ".join(_fmt(v) for v in vals)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (no tabulate dependency)."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])


def display_table(summary: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The summary table as the report shows it: mean ± CI, reached as k/n, rounded."""

    def pm(r: pd.Series) -> str:
        if math.isnan(r["final_test_acc"]):
            return "–"
        half = (r["final_test_acc_hi"] - r["final_test_acc_lo"]) / 2
        return f"{r['final_test_acc']:.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")

    out = summary[list(by)].copy()
    out["runs"] = summary["runs"]
    out["final test acc (±95% CI)"] = summary.apply(pm, axis=1)
    out["best test acc"] = summary["best_test_acc"].map(lambda v: _fmt(v, 4))
    out["target"] = summary["target"]
    out["reached"] = [f"{r}/{n}" for r, n in zip(summary["reached"], summary["runs"])]
    out["steps to target"] = summary["steps_to_target"].map(lambda v: _fmt(v, 5))
    out["time to target (s)"] = summary["seconds_to_target"].map(lambda v: _fmt(v, 3))
    out["diverged"] = summary["diverged"]
    out["failed"] = summary["failed"]
    out["params"] = summary["params"].map(lambda v: "–" if math.isnan(v) else f"{v:,.0f}")
    out["ms/step"] = summary["ms_per_step"].map(lambda v: _fmt(v, 3))
    order = {n: i for i, n in enumerate(variant_order(out["norm"]))}
    return out.sort_values([*by[1:], "norm"], key=lambda s: s.map(order) if s.name == "norm" else s, kind="stable")


def _study_section(root: Path, runs: pd.DataFrame, target: float | None) -> list[str]:
    swept = varying_factors(runs)
    fixed = [f for f in FACTORS if f in runs.columns and f not in swept and f != "seed" and runs[f].notna().any()]
    counts = runs["status"].value_counts().to_dict()
    cmds = sweep_commands(root)
    lines = ["## Study", "", f"- results folder: `{_shown(root)}`"]
    if cmds:
        lines += [f"- command: `{c}`" for c in cmds]
    else:
        lines.append("- command: no `multirun.yaml` here (runs launched one by one, or a single run)")
    lines.append(
        "- factors swept: "
        + ("; ".join(f"**{f}** ({_values(runs[f])})" for f in swept) if swept else "none (one configuration)")
    )
    lines.append("- fixed: " + ", ".join(f"{f}={_values(runs[f])}" for f in fixed if str(_values(runs[f])) != ""))
    lines.append(
        f"- budget: {_values(runs['steps'])} steps at batch size {_values(runs['batch_size'])}; "
        f"{len(runs)} run(s) ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
        f"seeds: {_values(runs['seed'])}; "
        f"total training time {runs['seconds'].fillna(0).sum():.1f} s summed over runs (evaluation excluded); "
        f"device: {_values(runs['device'])}"
    )
    if target is not None:
        lines.append(f"- target: test accuracy ≥ {target:g} (from --target)")
    else:
        per = {str(d): DEFAULT_TARGETS.get(str(d)) for d in runs["data"].dropna().unique()}
        lines.append(
            "- target: test accuracy ≥ "
            + ", ".join(f"{t if t is not None else 0.9:g} for {d}" for d, t in per.items())
            + " (per-dataset default; --target changes it)"
        )
    return lines


def _problem_runs(runs: pd.DataFrame, skipped: list[str]) -> list[str]:
    bad = runs[runs["status"] != "completed"].sort_values("run")
    lines = ["## Failed, diverged and unfinished runs", ""]
    if bad.empty and not skipped:
        return lines + ["None: every run completed."]
    lines += ["| run | status | step | diverged at | detail |", "|---|---|---|---|---|"]
    for r in bad.itertuples(index=False):
        err = Path(r.run_dir) / "error.txt"
        detail = f"`{err}`" if err.exists() else ""
        lines.append(f"| {r.run} | {r.status} | {_fmt(r.step)} | {_fmt(r.diverged_at)} | {detail} |")
    lines += [f"| {s} | unreadable | – | – | skipped |" for s in skipped]
    return lines


def build_report(root: str | Path, out: str | Path | None = None, target: float | None = None) -> Path:
    """Write ``out/report.md``, ``out/summary.csv`` and ``out/figures/`` for the runs under ``root``; return report.md."""
    root = Path(root)
    out = Path(out) if out is not None else root
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(root)
        if runs.empty:
            raise NoRuns(f"no runs under {root} (a run folder holds summary.json)")
        metrics = load_metrics(root, runs)
    skipped = [str(w.message) for w in caught]
    for msg in skipped:
        print(f"warning: {msg}", file=sys.stderr)

    by = group_columns(runs)
    summary = summary_table(runs, metrics, target=target, by=by)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)

    figs = figures(runs, metrics)
    for name, fig in figs.items():
        save_figure(fig, out / "figures", name)

    lines = [f"# bnstudy report: {root.resolve().name}", ""]
    lines += _study_section(root, runs, target) + [""]
    lines += [
        "## Summary",
        "",
        "Per group of seeds. Final test accuracy: mean ± half-width of the 95% Student-t interval over finished runs "
        "(completed or diverged; one seed: no interval). Best: mean over runs of each run's best test accuracy. "
        "Steps and time to target: mean over the runs that reached it (reached = k/n); time is training wall-clock, "
        "evaluation excluded. Raw numbers: `summary.csv`.",
        "",
        markdown_table(display_table(summary, by)),
        "",
        "## Figures",
        "",
    ]
    for name in figs:
        title = FIGURE_TITLES.get(name) or f"Sensitivity to {name.removeprefix('sensitivity_')}"
        lines += [f"### {title}", "", f"![{title}](figures/{name}.png)", f"(vector: [figures/{name}.svg](figures/{name}.svg))", ""]
    lines += _probe_section(metrics, by, out)
    lines += _problem_runs(runs, skipped) + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _probe_section(metrics: pd.DataFrame, by: list[str], out: Path) -> list[str]:
    """Activation statistics at the first and last probe (written to probes.csv too); nothing without probes."""
    table = probe_table(metrics, by)
    if table.empty:
        return []
    table.to_csv(out / "probes.csv", index=False)
    shown = table.copy()
    for c in shown.columns:
        if c not in (*by, "site", "step"):
            shown[c] = shown[c].map(lambda v: _fmt(v, 3))
    return [
        "## Activation statistics (probes)",
        "",
        "On the fixed probe batch (the first test images), network in evaluation mode; mean over seeds, at the first "
        "and the last probed step. `pre` is a norm layer's input, `post` its output (what enters the activation); "
        "`ch_absmean` is the mean over channels of |per-channel mean| and `ch_std` the mean per-channel std, so a "
        "standardized layer has 0 and 1; `sat_frac` is the fraction of saturated units (|x| > 4 into a sigmoid, "
        "x ≤ 0 into a ReLU); `pool/...` are the statistics of a max-pool's output. Raw numbers: `probes.csv`.",
        "",
        markdown_table(shown),
        "",
    ]


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (reports are committed), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and write the report; exit 2 with a one-line error when there is nothing to report."""
    p = argparse.ArgumentParser(prog="bnstudy-report", description=__doc__)
    p.add_argument("dir", help="results folder holding run folders (searched recursively)")
    p.add_argument("--out", help="where report.md, summary.csv and figures/ go (default: DIR)")
    p.add_argument("--target", type=float, help="test accuracy for time-to-target (default: per dataset, e.g. mnist 0.97)")
    a = p.parse_args(argv)
    if not Path(a.dir).is_dir():
        p.exit(2, f"error: {a.dir} is not a folder; give the out_dir of a run or sweep\n")
    if a.target is not None and not 0 < a.target <= 1:
        p.exit(2, f"error: --target is a test accuracy in (0, 1], got {a.target}\n")
    try:
        path = build_report(a.dir, a.out, a.target)
    except NoRuns as e:
        p.exit(2, f"error: {e}\n")
    print(path)


if __name__ == "__main__":
    main()
