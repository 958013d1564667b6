"""The scale ladder: the same variants at growing scale, each rung's gap to the reference and how it moves.

A rung is one results folder in which every setting (a variant, and the
extra factors that change what it is, such as ``zero_init_residual``) ran at
one rate over several seeds: the ``skipinit`` study at width 8, then
``resnet_full``'s mid and full rungs at the rates chosen at 10 epochs. Per
rung and setting the table gives the mean test accuracy (precise statistics
where the run has them, as everywhere else) with its interval, and the
difference from the reference in the same rung with Welch's interval. Between
consecutive rungs, the change of that gap is a difference of differences
(four independent groups of seeds), and its verdict says whether the gap
shrinks, grows, flips or holds:

- **flips**: both gaps' intervals exclude zero, with opposite signs;
- **shrinks** / **grows**: the change's interval excludes zero, towards zero
  / away from it;
- **holds**: no change larger than its interval.

``python -m bnstudy.analysis.ladder LABEL=DIR[,DIR...] ...`` prints the table as
markdown (``bash scripts/resnet_full.sh ladder`` names the ResNet's rungs); a rung
given as several folders joins runs trained under the same conditions (the
committed rung and the fair settings trained beside it later).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bnstudy.analysis.aggregate import Welch, difference_of_differences, mean_ci, welch
from bnstudy.analysis.load import load_runs
from bnstudy.runs import DONE

SETTING = ("norm", "zero_init_residual", "init", "branch_gate", "norm_decay", "norm_lr_scale")
# factors a label names only where they differ from the ladder's usual setting (He init, the branch's own γ as its
# gate, γ and β decayed and stepped like the weights): "none + init=fixup + norm_decay=false + norm_lr_scale=0.1"
QUIET: dict[str, tuple] = {"init": ("he", "default"), "branch_gate": ("norm",), "norm_decay": (True,), "norm_lr_scale": (1.0,)}
RUNG_COLUMNS = ["rung", "setting", "lr", "runs", "diverged", "n", "mean", "lo", "hi", "diff", "diff_lo", "diff_hi", "p"]
TREND_COLUMNS = ["setting", "from", "to", "change", "change_lo", "change_hi", "p", "verdict"]


class NotARung(ValueError):
    """A results folder that cannot be a rung of the ladder; the message (one line) says what to do."""


def setting_label(norm: str, **extra: object) -> str:
    """``bn``, ``affine + zero_init_residual``, ``bn + freeze_after=500``: the variant and each extra factor that is set."""
    parts = [norm]
    for key, value in extra.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if key in QUIET:
            if not any(str(value).lower() == str(q).lower() or (isinstance(q, float) and _number(value) == q) for q in QUIET[key]):
                parts.append(f"{key}={str(value).lower() if str(value).lower() in ('true', 'false') else value}")
            continue
        if isinstance(value, (bool, np.bool_)) or str(value).lower() in ("true", "false"):
            parts += [key] if str(value).lower() == "true" else []
        else:
            parts.append(f"{key}={value}")
    return " + ".join(parts)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def final_test_accuracy(runs: pd.DataFrame) -> pd.Series:
    """Each run's final test accuracy: its precise-statistics one where it has it, else the standard one."""
    standard = pd.to_numeric(runs["final_test_acc"], errors="coerce").astype(float)
    if "final_test_precise_acc" not in runs.columns:
        return standard
    precise = pd.to_numeric(runs["final_test_precise_acc"], errors="coerce").astype(float)
    return precise.where(np.isfinite(precise), standard)


def rung_table(label: str, runs: pd.DataFrame, reference: str = "bn", by: Sequence[str] = SETTING, level: float = 0.95) -> pd.DataFrame:
    """One rung: per setting its rate, mean test accuracy with a ``level`` interval, and its gap to ``reference``.

    Finished runs only; a diverged run counts with the accuracy it ended at
    (chance, for the runs here) and is counted in ``diverged``. Raises
    :class:`NotARung` when a setting ran at several rates or under several
    configurations (run folder names), or there is no finished run of ``reference``.
    """
    return _table(label, _finished(runs, by), reference, level)


def _table(label: str, done: pd.DataFrame, reference: str, level: float) -> pd.DataFrame:
    """:func:`rung_table` of the runs :func:`_finished` kept."""
    if done.empty:
        raise NotARung(f"rung '{label}' has no finished run; train it first")
    several = {s: sorted(g["lr"].unique()) for s, g in done.groupby("_setting") if g["lr"].nunique() > 1}
    if several:
        s, lrs = next(iter(several.items()))
        shown = ", ".join(f"{lr:g}" for lr in lrs)
        raise NotARung(f"rung '{label}' has '{s}' at several rates ({shown}); a rung holds each setting at its one chosen rate")
    if "run" in done.columns:  # one configuration per setting: same rate but, say, another precision is another run
        configs = {s: sorted({str(r).split("/")[0] for r in g["run"]}) for s, g in done.groupby("_setting")}
        mixed = {s: c for s, c in configs.items() if len(c) > 1}
        if mixed:
            s, names = next(iter(mixed.items()))
            raise NotARung(f"rung '{label}' has '{s}' under several configurations ({', '.join(names)}); "
                           "a rung holds each setting at one configuration: move the others to a folder of their own")  # fmt: skip
    ref = done[done["_setting"] == reference]["_acc"]
    if ref.empty:
        raise NotARung(f"rung '{label}' has no finished '{reference}' run to compare with; train it or pass another reference")
    rows = []
    for s, g in sorted(done.groupby("_setting"), key=lambda kv: (kv[0] != reference, kv[0])):
        mean, lo, hi, n = mean_ci(g["_acc"], level)
        w = welch(g["_acc"], ref, level) if s != reference else Welch(*[math.nan] * 5)
        rows.append((label, s, float(g["lr"].iloc[0]), len(g), int((g["status"] == "diverged").sum()), n, mean, lo, hi, w.diff, w.lo, w.hi, w.p))
    return pd.DataFrame(rows, columns=RUNG_COLUMNS)


def _finished(runs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The finished runs, each with its setting's label (``_setting``) and its test accuracy (``_acc``)."""
    done = runs[runs["status"].isin(DONE)].copy()
    for col in by:
        if col not in done.columns:
            done[col] = None
    done["_setting"] = [setting_label(r["norm"], **{c: r[c] for c in by if c != "norm"}) for _, r in done.iterrows()]
    done["_acc"] = final_test_accuracy(done)
    return done


def _verdict(prev: pd.Series, nxt: pd.Series, change: Welch) -> str:
    if not all(np.isfinite([prev["diff"], nxt["diff"], change.lo, change.hi])):
        return "–"
    excludes = lambda lo, hi: lo > 0 or hi < 0  # noqa: E731
    if excludes(prev["diff_lo"], prev["diff_hi"]) and excludes(nxt["diff_lo"], nxt["diff_hi"]) and np.sign(prev["diff"]) != np.sign(nxt["diff"]):
        return "flips"
    if not excludes(change.lo, change.hi):
        return "holds"
    return "shrinks" if np.sign(change.diff) == -np.sign(prev["diff"]) else "grows"


def ladder(rungs: Sequence[tuple[str, pd.DataFrame]], reference: str = "bn", by: Sequence[str] = SETTING,
           level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Every rung's table (``RUNG_COLUMNS``), and per setting the change of its gap between consecutive rungs that
    both hold it (``TREND_COLUMNS``: the change as a difference of differences, its interval, p and the verdict)."""
    labels = [label for label, _ in rungs]
    if len(set(labels)) < len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise NotARung(f"rung label '{twice}' is given twice; give each rung its own label")
    done = {label: _finished(runs, by) for label, runs in rungs}
    tables = [_table(label, d, reference, level) for label, d in done.items()]
    accs = {label: dict(list(d.groupby("_setting")["_acc"])) for label, d in done.items()}
    trend = []
    for i in range(1, len(rungs)):
        (a, ta), (b, tb) = (labels[i - 1], tables[i - 1]), (labels[i], tables[i])
        for s in tb["setting"]:
            if s == reference or s not in set(ta["setting"]):
                continue
            change = difference_of_differences(accs[b][s], accs[b][reference], accs[a][s], accs[a][reference], level)
            prev, nxt = ta.set_index("setting").loc[s], tb.set_index("setting").loc[s]
            trend.append((s, a, b, change.diff, change.lo, change.hi, change.p, _verdict(prev, nxt, change)))
    return pd.concat(tables, ignore_index=True), pd.DataFrame(trend, columns=TREND_COLUMNS)


def markdown(table: pd.DataFrame, trend: pd.DataFrame, reference: str = "bn") -> str:
    """The ladder as two markdown tables: accuracy and gap per rung, then the gaps' changes."""
    rungs = list(dict.fromkeys(table["rung"]))
    settings = list(dict.fromkeys(table["setting"]))
    lines = ["| setting | " + " | ".join(rungs) + " |", "| --- |" + " --- |" * len(rungs)]
    for s in settings:
        cells = []
        for r in rungs:
            row = table[(table["rung"] == r) & (table["setting"] == s)]
            if row.empty:
                cells.append("not run")
                continue
            x = row.iloc[0]
            seeds = f"{x['n']} seed" + ("s" if x["n"] != 1 else "")
            spread = f" ± {x['hi'] - x['mean']:.3f}" if np.isfinite(x["hi"]) else ""  # one seed: no interval
            cell = f"{x['mean']:.3f}{spread} (lr {x['lr']:g}, {seeds}"
            cell += f", {x['diverged']} diverged)" if x["diverged"] else ")"
            if s != reference and np.isfinite(x["diff"]):
                cell += f"; {x['diff']:+.3f} {_interval(x['diff_lo'], x['diff_hi'])}"
            cells.append(cell)
        lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
    lines += ["", f"Accuracy: mean test accuracy ± the 95% interval's half-width; then the difference from `{reference}` "
              "in the same rung [95% Welch interval]."]  # fmt: skip
    if not trend.empty:
        lines += ["", "| setting | from → to | change of the gap [95% CI] | p | the gap |", "| --- | --- | --- | --- | --- |"]
        for _, t in trend.iterrows():
            p = f"{t['p']:.3f}" if np.isfinite(t["p"]) else "–"
            lines.append(f"| `{t['setting']}` | {t['from']} → {t['to']} | {t['change']:+.3f} "
                         f"{_interval(t['change_lo'], t['change_hi'])} | {p} | {t['verdict']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _interval(lo: float, hi: float) -> str:
    """``[lo, hi]``, or a note where a group of one seed leaves no interval."""
    return f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) and np.isfinite(hi) else "(no interval: one seed)"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnstudy.analysis.ladder LABEL=DIR [LABEL=DIR ...] [--reference NORM]``: the ladder as markdown."""
    args = list(sys.argv[1:] if argv is None else argv)
    reference = "bn"
    if "--reference" in args:
        i = args.index("--reference")
        if i + 1 >= len(args):
            print("ladder: --reference needs a variant name, e.g. --reference bn", file=sys.stderr)
            return 2
        reference = args[i + 1]
        del args[i : i + 2]
    if not args or any("=" not in a for a in args):
        print("ladder: give each rung as LABEL=DIR, smallest scale first, e.g. 'width 8=results/skipinit'", file=sys.stderr)
        return 2
    rungs = []
    for a in args:
        label, folders = a.split("=", 1)
        parts = []
        for folder in folders.split(","):  # a rung may join folders trained under the same conditions
            if not Path(folder).is_dir():
                print(f"ladder: rung '{label}': no folder {folder}; check the path (a rung is a study's results folder)", file=sys.stderr)
                return 2
            parts.append(load_runs(folder))
        rungs.append((label, pd.concat(parts, ignore_index=True)))
    try:
        table, trend = ladder(rungs, reference)
    except NotARung as e:
        print(f"ladder: {e}", file=sys.stderr)
        return 2
    print(markdown(table, trend, reference), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
