"""``bnstudy-report DIR [--out OUT] [--target ACC] [--reference NORM]``: report.md, CSV tables and figures for the runs under DIR."""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bnstudy.analysis.aggregate import (
    DEFAULT_TARGETS,
    _matching,
    DONE,
    Untunable,
    differences,
    group_columns,
    summary_table,
    tuned_summary,
    varying_factors,
)
from bnstudy.analysis.load import FACTORS, NoRuns, load_metrics, load_runs, sweep_commands
from bnstudy.analysis.plots import figures, save_figure, variant_order
from bnstudy.archive import PackError, run_file_text
from bnstudy.archive_write import refuse_damaged
from bnstudy.analysis.probe_tables import probe_table
from bnstudy.fmt import fmt
from bnstudy.provenance import UNKNOWN
from bnstudy.runs import check_run

FIGURE_TITLES = {
    "test_acc_vs_step": "Test accuracy vs step",
    "train_loss_vs_step": "Training loss vs step",
    "test_acc_vs_seconds": "Test accuracy vs training time",
    "train_loss_vs_seconds": "Training loss vs training time",
    "activation_percentiles": "Activation-input percentiles over training (Ioffe & Szegedy 2015, Fig. 1b,c)",
    "landscape": "Loss landscape along the gradient (Santurkar et al. 2018, Fig. 4)",
    "effective_step": "Effective step ‖ΔW‖/‖W‖ per step, per nominal learning rate",
    "weight_norm": "Weight norm ‖W‖ per nominal learning rate",
    "effective_lr": "Effective learning rate lr/‖W‖² of scale-invariant layers",
    "branch_opening": "How each residual branch opens: its gain or its last norm's γ, per block",
}


def figure_title(name: str) -> str:
    """The report heading of a figure from :func:`bnstudy.analysis.plots.figures`, by its file name."""
    if name in FIGURE_TITLES:
        return FIGURE_TITLES[name]
    if name.startswith("unit_percentiles_"):
        return f"Single-unit activation-input percentiles, {name.removeprefix('unit_percentiles_')} (Ioffe & Szegedy 2015, Fig. 1b,c)"
    return f"Sensitivity to {name.removeprefix('sensitivity_')}"


class UnknownReference(Exception):
    """``--reference`` names a variant that none of the runs used."""


class MixedStudies(Exception):
    """The results folder holds runs of several studies (``study`` factor): one report would merge them."""


# How the differences block names each compared metric.
DIFF_LABELS = {"final_test_acc": "final test acc", "best_test_acc": "best test acc", "final_test_precise_acc": "precise test acc"}


def _fmt(v: Any, digits: int = 4) -> str:
    # a table cell: a dash for no value, large numbers whole
    return fmt(v, digits, missing="–", whole_above=1e4)


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

    def pm(r: pd.Series, col: str) -> str:
        if math.isnan(r[col]):
            return "–"
        half = (r[f"{col}_hi"] - r[f"{col}_lo"]) / 2
        return f"{r[col]:.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")

    out = summary[list(by)].copy()
    out["runs"] = summary["runs"]
    out["final test acc (±95% CI)"] = summary.apply(pm, axis=1, col="final_test_acc")
    out["best test acc"] = summary["best_test_acc"].map(lambda v: _fmt(v, 4))
    if summary["final_test_precise_acc"].notna().any():  # runs with train.precise_bn > 0
        out["precise test acc (±95% CI)"] = summary.apply(pm, axis=1, col="final_test_precise_acc")
    if summary["final_val_acc"].notna().any():  # runs with a validation split
        out["final val acc"] = summary["final_val_acc"].map(lambda v: _fmt(v, 4))
    out["target"] = summary["target"]
    out["reached"] = [f"{r}/{n}" for r, n in zip(summary["reached"], summary["runs"])]
    out["steps to target"] = summary["steps_to_target"].map(lambda v: _fmt(v, 5))
    out["time to target (s)"] = summary["seconds_to_target"].map(lambda v: _fmt(v, 3))
    out["diverged"] = summary["diverged"]
    out["failed"] = summary["failed"]
    out["params"] = summary["params"].map(lambda v: "–" if math.isnan(v) else f"{v:,.0f}")
    out["ms/step"] = summary["ms_per_step"].map(lambda v: _fmt(v, 3))
    return _sorted(out, by)


def _sorted(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Rows by setting, then by variant in the figures' order (bn first)."""
    order = {n: i for i, n in enumerate(variant_order(table["norm"]))}
    return table.sort_values([*by[1:], "norm"], key=lambda s: s.map(order) if s.name == "norm" else s, kind="stable")


def _p(v: float) -> str:
    if v is None or math.isnan(v):
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def differences_display(diffs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The differences as the report shows them: one row per group, Δ [95% CI], p and Holm p per metric."""
    by = list(by)
    ref = diffs["reference"].iloc[0]
    keys = diffs[by].drop_duplicates().reset_index(drop=True)
    out = keys.copy()
    out["runs (vs ref)"] = ""
    for metric in [m for m in DIFF_LABELS if m in set(diffs["metric"])] + sorted(set(diffs["metric"]) - set(DIFF_LABELS)):
        d = diffs[diffs["metric"] == metric]
        cols = [*by, "n", "n_ref", "diff", "diff_lo", "diff_hi", "p", "p_holm"]
        found = {tuple(map(str, r[: len(by)])): r for r in d[cols].itertuples(index=False, name=None)}
        rows = [found.get(tuple(map(str, k))) for k in keys.itertuples(index=False, name=None)]
        label = DIFF_LABELS.get(metric, metric)
        out[f"{label} − {ref} [95% CI]"] = [
            "–" if r is None else f"{r[-5]:+.4f}" + ("" if math.isnan(r[-4]) else f" [{r[-4]:+.4f}, {r[-3]:+.4f}]") for r in rows
        ]
        out[f"{label}: p"] = ["–" if r is None else _p(r[-2]) for r in rows]
        out[f"{label}: Holm p"] = ["–" if r is None else _p(r[-1]) for r in rows]
        if metric == "final_test_acc":
            out["runs (vs ref)"] = ["–" if r is None else f"{r[-7]} vs {r[-6]}" for r in rows]
    return _sorted(out, by)


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


def _problem_runs(runs: pd.DataFrame, skipped: list[str], damaged: dict[str, str] | None = None) -> list[str]:
    bad = runs[runs["status"] != "completed"].sort_values("run")
    lines = ["## Failed, diverged and unfinished runs", ""]
    if bad.empty and not skipped and not damaged:
        return lines + ["None: every run completed."]
    lines += ["| run | status | step | diverged at | detail |", "|---|---|---|---|---|"]
    for r in bad.itertuples(index=False):
        err = Path(r.run_dir) / "error.txt"
        detail = f"`{err}`" if err.exists() else ("error.txt kept in the pack (`bnstudy-runs --unpack`)" if run_file_text(err.parent, "error.txt") else "")
        lines.append(f"| {r.run} | {r.status} | {_fmt(r.step)} | {_fmt(r.diverged_at)} | {detail} |")
    lines += [f"| {s} | unreadable | – | – | skipped |" for s in skipped]
    lines += [f"| {run} | damaged | – | – | left out of every table and figure: {why} |" for run, why in (damaged or {}).items()]
    return lines


def _one_study(root: Path, runs: pd.DataFrame) -> None:
    """Refuse a folder holding several studies, naming each with its folder."""
    studies = runs["study"].fillna("").astype(str)
    names = sorted(set(studies))
    if len(names) < 2:
        return
    parts = []
    for name in names:
        folders = [str(Path(d).parent.parent) for d in runs.loc[studies == name, "run_dir"]]  # <study>/<config>/seedN
        parts.append(f"{name or '(no study)'} in {_shown(Path(os.path.commonpath(folders)))}")
    raise MixedStudies(f"{root} holds {len(names)} studies ({'; '.join(parts)}): report each folder on its own")


def _without_damaged(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The runs that pass :func:`bnstudy.runs.check_run`, and ``{run: what is damaged}`` for the others."""
    damaged = {}
    for run, run_dir in zip(runs["run"], runs["run_dir"]):
        problems = check_run(Path(run_dir))
        if problems:
            damaged[run] = "; ".join(problems)
    return runs[~runs["run"].isin(list(damaged))].reset_index(drop=True), damaged


def _code_lines(root: Path, runs: pd.DataFrame) -> list[str]:
    """The commits the runs came from, and a warning (also on stderr) when they come from different training code."""
    commits = runs["commit"].fillna(UNKNOWN)
    counts = commits.value_counts()
    shown = [f"{c} ({n} run{'s' if n > 1 else ''})" for c, n in counts.items() if c != UNKNOWN]
    # no commit but a code fingerprint: provenance was recorded, the code just was not a git checkout
    outside = int((commits.eq(UNKNOWN) & runs["code"].notna()).sum())
    before = int(counts.get(UNKNOWN, 0)) - outside
    if before:
        shown.append(f"unknown ({before} run{'s' if before > 1 else ''}: trained before provenance was recorded)")
    if outside:
        shown.append(f"unknown ({outside} run{'s' if outside > 1 else ''}: trained outside a git checkout)")
    lines = ["- code: commit " + ", ".join(shown)]
    versions = runs["code"].dropna().nunique()
    if versions > 1:
        msg = (
            f"these runs were trained by {versions} different versions of the training code; differences between "
            f"groups may come from the code, not the factors (`bnstudy-runs {_shown(root)} --stale` names the changed files)"
        )
        print(f"warning: {msg}", file=sys.stderr)
        lines.append(f"- **warning: {msg}**")
    return lines


def build_report(
    root: str | Path,
    out: str | Path | None = None,
    target: float | None = None,
    reference: str | None = None,
    vector: bool = False,
    seeds: bool = False,
) -> Path:
    """Write ``out/report.md``, ``summary.csv``, ``differences.csv``, ``tuned.csv`` and ``figures/`` for ``root``; return report.md.

    ``reference``: the variant the others are compared with (default ``bn``,
    skipped with a note when absent; an explicit one must have runs).
    Each figure is a PNG at 150 dpi and a PDF (vector); ``vector``: also an SVG
    (large for figures of many runs; off, the default, keeps a committed study
    small). ``seeds``: the curves draw each run as a thin line under the mean.
    """
    root = Path(root)
    out = Path(out) if out is not None else root
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(root)
        if runs.empty:
            raise NoRuns(f"no runs under {root} (a run folder holds summary.json)")
        _one_study(root, runs)
        runs, damaged = _without_damaged(runs)
        if runs.empty:
            raise NoRuns(f"every run under {root} is damaged; `bnstudy-runs {root} --check` says how, and its sweep retrains them")
        metrics = load_metrics(root, runs)
    skipped = [str(w.message) for w in caught]
    for msg in skipped:
        print(f"warning: {msg}", file=sys.stderr)
    for run, why in damaged.items():
        print(f"warning: left out {run}: damaged ({why}); running its sweep again retrains it", file=sys.stderr)
    code_lines = _code_lines(root, runs)

    norms = sorted(runs["norm"].dropna().astype(str).unique())
    if reference is not None and reference not in norms:
        raise UnknownReference(f"no run used norm={reference}; give --reference one of: {', '.join(norms)}")
    by = group_columns(runs)
    summary = summary_table(runs, metrics, target=target, by=by)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    comparisons = _comparison_sections(runs, metrics, by, target, reference or "bn", out)

    figs = figures(runs, metrics, seeds=seeds)
    formats = ("png", "pdf", "svg") if vector else ("png", "pdf")
    vectors = {name: _save_linked(fig, out, name, formats) for name, fig in figs.items()}

    lines = [f"# bnstudy report: {root.resolve().name}", ""]
    lines += _study_section(root, runs, target) + code_lines + [""]
    lines += [
        "## Summary",
        "",
        "Per group of seeds. Final test accuracy: mean ± half-width of the 95% Student-t interval over finished runs "
        "(completed or diverged; one seed: no interval). Best: mean over runs of each run's best test accuracy. "
        "Steps and time to target: mean over the runs that reached it (reached = k/n); time is training wall-clock, "
        "evaluation excluded. Raw numbers: `summary.csv`."
        + (
            " Precise test acc: the same evaluation after recomputing the BN-like running statistics over "
            "`train.precise_bn` training batches with the current weights (– for runs without it or without BN-like layers)."
            if summary["final_test_precise_acc"].notna().any()
            else ""
        )
        + (" Final val acc: mean final accuracy on the held-out validation split." if summary["final_val_acc"].notna().any() else ""),
        "",
        markdown_table(display_table(summary, by)),
        "",
        *comparisons,
        "## Figures",
        "",
    ]
    for name, vec in vectors.items():
        title = figure_title(name)
        lines += [f"### {title}", "", f"![{title}](figures/{name}.png)", vec, ""]
    lines += _late_probe_section(runs, metrics, by, out, reference or "bn")
    lines += _probe_section(metrics, by, out)
    lines += _branch_section(runs, metrics, by, out, formats, seeds)
    lines += _problem_runs(runs, skipped, damaged) + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _save_linked(fig: Any, out: Path, name: str, formats: Sequence[str]) -> str:
    """Write ``fig`` as ``out/figures/name.<format>`` (a stale SVG goes) and return the report's line linking its vector copies."""
    save_figure(fig, out / "figures", name, formats=formats)
    if "svg" not in formats:
        (out / "figures" / f"{name}.svg").unlink(missing_ok=True)  # a stale vector copy would not match
    svg = f", [svg](figures/{name}.svg)" if "svg" in formats else ""
    return f"(vector: [figures/{name}.pdf](figures/{name}.pdf){svg})"


def _differences_lines(
    diffs: pd.DataFrame, runs: pd.DataFrame, by: list[str], reference: str, norms: list[str], what: str
) -> list[str]:
    """The differences block of one table (``runs``: the runs compared), or one line saying why there is none."""
    if reference not in norms:
        return [f"No `{reference}` runs here, so no differences vs a reference variant (`--reference NORM` picks another).", ""]
    done = runs[runs["status"].isin(DONE)]
    ref = {tuple(map(str, k[1:])): True for k in done[done["norm"] == reference][by].itertuples(index=False, name=None)}
    others = done[done["norm"] != reference][by].drop_duplicates()
    unmatched = [k for k in others.itertuples(index=False, name=None) if _matching(ref, tuple(map(str, k[1:]))) is None]
    # a variant run only where the reference was not (e.g. another init) is named, not silently dropped
    note = (
        [
            f"Not compared (no finished `{reference}` runs in the same setting): "
            + "; ".join(f"{k[0]}" + "".join(f", {c}={_fmt(v)}" for c, v in zip(by[1:], k[1:])) for k in unmatched)
            + ".",
            "",
        ]
        if unmatched
        else []
    )
    if diffs.empty:
        return [f"Nothing to compare: no other variant has finished runs in a setting that `{reference}` ran {what}.", ""] + note
    n = int(diffs.groupby("metric").size().max())
    return [
        f"Each group minus `{reference}` in the same setting (every other factor equal) {what}, over finished runs: "
        "the difference of the means with its 95% Welch interval, the two-sided Welch t-test p-value, and that p-value "
        f"Holm-adjusted over the {n} comparison(s) of the same column. A group or its reference with one seed: "
        "difference only.",
        "",
        markdown_table(differences_display(diffs, by)),
        "",
    ] + note


def _comparison_sections(
    runs: pd.DataFrame, metrics: pd.DataFrame, by: list[str], target: float | None, reference: str, out: Path
) -> list[str]:
    """Differences vs ``reference`` at the shared rate and the tuned-per-variant table; writes differences.csv, tuned.csv."""
    norms = sorted(runs["norm"].dropna().astype(str).unique())
    shared = differences(runs, by, reference)
    lines = [f"### Differences vs `{reference}`", ""]
    lines += _differences_lines(shared, runs, by, reference, norms, "at the same rate")
    frames = [shared.assign(table="shared")]

    lines += ["## Tuned per variant", ""]
    try:
        tuned, picked = tuned_summary(runs, metrics, target=target, by=by)
    except Untunable as e:
        (out / "tuned.csv").unlink(missing_ok=True)  # a stale table from earlier runs would contradict this report
        lines += [f"Unavailable: {e}.", ""]
    else:
        setting = [c for c in by if c != "lr"]
        tuned.to_csv(out / "tuned.csv", index=False)
        shown = display_table(tuned, [*setting, "lr"]).rename(columns={"lr": "lr (chosen)"})
        shown.insert(len(setting) + 1, "rates tried", tuned.loc[shown.index, "rates"])
        shown.insert(len(setting) + 2, "val acc at chosen lr", tuned.loc[shown.index, "val_acc"].map(lambda v: _fmt(v, 4)))
        lines += [
            "Each group at its own learning rate: the rate with the best mean final *validation* accuracy over "
            "finished seeds (a diverged seed without one scores 0; runs evaluated with precise statistics are scored "
            "by their precise validation accuracy; the test split is never used to choose), and the "
            "test numbers of the runs at that rate, as in the summary above. Steps and time to target are at the "
            "chosen rate too. Raw numbers: `tuned.csv`.",
            "",
            markdown_table(shown.drop(columns=["final val acc"], errors="ignore")),
            "",
            f"### Differences vs `{reference}`, each at its chosen rate",
            "",
        ]
        tdiff = differences(picked, setting, reference)
        lr_of = {tuple(map(str, k)): r for *k, r in tuned[[*setting, "lr"]].itertuples(index=False, name=None)}
        ref_setting = [tuple(map(str, (reference, *k[1:]))) for k in tdiff[setting].itertuples(index=False, name=None)]  # norm first
        tdiff["lr"] = [lr_of.get(tuple(map(str, k))) for k in tdiff[setting].itertuples(index=False, name=None)]
        tdiff["ref_lr"] = [lr_of.get(k) for k in ref_setting]
        lines += _differences_lines(tdiff, picked, setting, reference, norms, "at their chosen rates")
        frames.append(tdiff.assign(table="tuned"))
    diffs = pd.concat([f for f in frames if not f.empty] or frames[:1], ignore_index=True)
    diffs = diffs[["table", *[c for c in diffs.columns if c != "table"]]]
    diffs.to_csv(out / "differences.csv", index=False)
    return lines


def _late_probe_section(runs: pd.DataFrame, metrics: pd.DataFrame, by: list[str], out: Path, reference: str) -> list[str]:
    """Landscape and weight probes over the second half of training, per group and vs the reference (late_probes.csv)."""
    from bnstudy.analysis.probe_tables import LATE_PROBES, late_probe_table, late_probes

    table = late_probe_table(runs, metrics, by)
    if table.empty:
        return []
    table.to_csv(out / "late_probes.csv", index=False)
    qs = [q for q in LATE_PROBES if q in table.columns]
    shown = table[[*by, "runs"]].copy()
    for q in qs:
        shown[LATE_PROBES[q]] = [
            "–" if pd.isna(m) else f"{_fmt(m, 3)} [{_fmt(lo, 3)}, {_fmt(hi, 3)}]" for m, lo, hi in zip(table[q], table[f"{q}_lo"], table[f"{q}_hi"])
        ]
    late = runs.merge(late_probes(runs, metrics), on="run")
    diffs = differences(late, by, reference, metrics=qs)
    lines = [
        "## Landscape and weight probes, second half of training",
        "",
        "Per run, the mean of each probe over the probes after half of its steps (weight rows: also over the layers "
        "that log them), then mean and 95% interval over seeds. Loss range, gradient change (‖∇L(θ − ηg) − ∇L(θ)‖, "
        "max over η) and β-smoothness: lower is smoother (Santurkar et al. 2018). ‖W‖: norm of a layer's weights; "
        "effective step: ‖W_t − W_{t−k}‖ / ‖W_{t−k}‖ / k; lr/‖W‖²: the effective rate of a scale-invariant layer. "
        "Raw numbers: `late_probes.csv`.",
        "",
        markdown_table(shown),
        "",
    ]
    if not diffs.empty:
        d = diffs.copy()
        d["difference"] = [f"{_fmt(v, 3)} [{_fmt(lo, 3)}, {_fmt(hi, 3)}]" for v, lo, hi in zip(d["diff"], d["diff_lo"], d["diff_hi"])]
        d["p"], d["Holm p"] = d["p"].map(_p), d["p_holm"].map(_p)
        d["quantity"] = d["metric"].map(LATE_PROBES)
        lines += [
            f"Differences vs `{reference}` in the same setting (Welch 95% interval; Holm over the rows of one quantity):",
            "",
            markdown_table(d[[*by, "quantity", "difference", "p", "Holm p"]]),
            "",
        ]
    return lines


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


def _branch_section(runs: pd.DataFrame, metrics: pd.DataFrame, by: list[str], out: Path, formats: Sequence[str], seeds: bool) -> list[str]:
    """ResNets whose probes log a branch scale: the branch-opening figure and branch_scales.csv; nothing otherwise."""
    from bnstudy.analysis.branches import GAMMA, branch_figure, branch_table

    name = "branch_opening"
    shown = runs[runs["status"] != "failed"]
    table = branch_table(shown, metrics, by)
    if table.empty:
        (out / "branch_scales.csv").unlink(missing_ok=True)  # a stale table or figure would not match these runs
        for ext in ("png", "pdf", "svg"):
            (out / "figures" / f"{name}.{ext}").unlink(missing_ok=True)
        return []
    table.to_csv(out / "branch_scales.csv", index=False)
    vec = _save_linked(branch_figure(shown, metrics, by=by, seeds=seeds), out, name, formats)

    def scale(v: float, spread: float) -> str:
        return _fmt(v, 3) + ("" if pd.isna(spread) else f" ± {_fmt(spread, 2)}")

    shown_table = table[[*by, "block", "stage", "scale", "site", "runs"]].copy()
    shown_table["first probe (step)"] = table["first_step"].map(_fmt)
    shown_table["first"] = [scale(v, s) for v, s in zip(table["first"], table["first_spread"])]
    shown_table["last probe (step)"] = table["last_step"].map(_fmt)
    shown_table["last"] = [scale(v, s) for v, s in zip(table["last"], table["last_spread"])]
    title = figure_title(name)
    return [
        "## Residual branches opening (probes)",
        "",
        "What multiplies each residual branch's output, per block, on the probe rows: the scalar gain where the "
        "network has one (`block{b}/gain`: SkipInit's gain of a variant without γ or under `model.branch_gate=scalar`, "
        f"Fixup's multiplier), else the mean over channels of the γ of the block's last norm (`{GAMMA}`, the site "
        "named in `site`, found from the run's model), ± its spread over channels. A setting with both has both rows "
        "(in the figure: the gain solid, the γ dashed). Mean over seeds at each run's first and last probe. "
        "Raw numbers: `branch_scales.csv`.",
        "",
        f"![{title}](figures/{name}.png)",
        vec,
        "",
        markdown_table(shown_table),
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
    p.add_argument("--reference", help="variant the others are compared with in the differences tables (default: bn)")
    svg = p.add_mutually_exclusive_group()
    svg.add_argument("--svg", action="store_true", help="also write each figure as SVG (large for many runs: not for committed studies)")
    svg.add_argument("--no-svg", action="store_true", help="PNG figures only (the default; kept for older commands)")
    p.add_argument("--seeds", action="store_true", help="draw each seed as a thin line under the mean in the curve figures")
    p.add_argument("--answer", action="store_true",
                   help="DIR is the results folder: measure the headline gaps of its packed studies, draw DIR/answer/gaps.png "
                        "and .svg, and write the one-screen table into DIR/README.md between its answer markers")
    a = p.parse_args(argv)
    if a.answer:
        from bnstudy.analysis.answer import write_answer

        try:
            for path in write_answer(a.dir):
                print(path)
        except (OSError, ValueError, PackError) as e:
            p.exit(2, f"error: {e}\n")
        return
    if not Path(a.dir).is_dir():
        p.exit(2, f"error: {a.dir} is not a folder; give the out_dir of a run or sweep\n")
    if a.target is not None and not 0 < a.target <= 1:
        p.exit(2, f"error: --target is a test accuracy in (0, 1], got {a.target}\n")
    try:
        refuse_damaged(a.dir)  # before anything is written
        path = build_report(a.dir, a.out, a.target, a.reference, vector=a.svg, seeds=a.seeds)
    except (NoRuns, UnknownReference, MixedStudies, PackError) as e:
        p.exit(2, f"error: {e}\n")
    except OSError as e:  # --out a file, a read-only folder, a full disk: the tables cannot be written
        out = a.out or a.dir
        p.exit(2, f"error: cannot write the report into {out}: {e.strerror or e} ({e.filename}); give --out a writable folder\n")
    print(path)


if __name__ == "__main__":
    main()
