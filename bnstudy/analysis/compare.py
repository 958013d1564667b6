"""Fresh runs against committed ones: is a rerun of a study a reproduction?

Runs are matched by their folder name (config hash and seed), which does not
depend on ``out_dir``. Each pair gets one verdict on the final test accuracy,
the first that holds:

- **identical**: the same number; "every logged value" when the whole
  metrics.csv (wall-clock seconds aside) is bit-identical too, which is what the
  same code, CPU model, library versions and thread count give;
- **within the tolerance**: off by at most :data:`TOLERANCE`. Another CPU model,
  thread count or library build rounds float32 differently and the drift grows
  over training (reruns of ``ioffe_mnist`` on another machine of the same kind
  moved final accuracies by up to 0.004);
- **within the committed seed interval**: inside the 95% prediction interval for
  one more seed of the committed group (groups of 2+ seeds);
- **within the committed run's swing**: inside the largest change between two
  consecutive evaluations of the committed run over its last quarter of steps.
  A run whose test accuracy still moves that much from one evaluation to the
  next ends anywhere in that range once rounding perturbs its trajectory (the
  quickstart's single-seed ``affine`` run: 0.9605 at step 2,750, 0.9441 at 3,000);
- **outside: investigate**: none of these.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from bnstudy.analysis.aggregate import t_quantile, varying_factors
from bnstudy.analysis.load import load_runs
from bnstudy.runs import DONE

TOLERANCE = 0.005  # final test accuracy, absolute


@dataclass
class Comparison:
    """One fresh run against its committed counterpart."""

    run: str
    label: str
    fresh: float | None
    committed: float
    verdict: str
    ok: bool

    def line(self, width: int = 0) -> str:
        """``bn      0.9596 — committed 0.9596: identical``."""
        return f"{self.label:<{width}}  {_acc(self.fresh)} — committed {_acc(self.committed)}: {self.verdict}"


def _acc(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.4f}"


def seed_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` prediction interval for one more seed: mean ± t·sd·√(1 + 1/n); None below two finite values."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    n = len(v)
    if n < 2:
        return None
    m = sum(v) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    half = t_quantile(level, n - 1) * sd * math.sqrt(1 + 1 / n)
    return m - half, m + half


def _logged(run_dir: str) -> dict[tuple[str, str, str], str] | None:
    """(step, split, metric) -> value text of a metrics.csv (wall-clock seconds left out); None if unreadable."""
    try:
        with open(Path(run_dir) / "metrics.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
    except OSError:
        return None
    return {(r[0], r[1], r[2]): r[3] for r in rows if len(r) == 5}


def end_swing(logged: dict[tuple[str, str, str], str] | None, last_step: int) -> float | None:
    """Largest |change| of test accuracy between consecutive evaluations from 3/4 of ``last_step`` on; None below two."""
    if not logged:
        return None
    acc = sorted((int(s), float(v)) for (s, split, metric), v in logged.items() if (split, metric) == ("test", "acc"))
    start = max((i for i, (s, _) in enumerate(acc) if s <= 0.75 * last_step), default=0)  # the evaluation entering the window
    tail = [v for _, v in acc[start:] if math.isfinite(v)]
    if len(tail) < 2:
        return None
    return max(abs(b - a) for a, b in zip(tail, tail[1:]))


def _verdict(fresh: float, committed: float, group: list[float], swing: float | None, tol: float) -> tuple[str, bool]:
    if math.isnan(fresh) or math.isnan(committed):
        same = math.isnan(fresh) and math.isnan(committed)
        return ("identical (both without a final accuracy)", True) if same else ("one of the two has no final accuracy: investigate", False)
    diff = fresh - committed
    if diff == 0:
        return "identical", True
    said = f"differs by {diff:+.4f}"
    if abs(diff) <= tol:
        return f"{said}, within the tolerance (±{tol:g})", True
    interval = seed_interval(group)
    if interval is not None and interval[0] <= fresh <= interval[1]:
        return f"{said}, within the committed seed interval [{interval[0]:.4f}, {interval[1]:.4f}]", True
    if swing is not None and abs(diff) <= swing:
        return f"{said}, within the committed run's swing (±{swing:.4f} between its evaluations over the last quarter)", True
    bounds = [f"±{tol:g}"]
    if interval is not None:
        bounds.append(f"the committed seed interval [{interval[0]:.4f}, {interval[1]:.4f}]")
    if swing is not None:
        bounds.append(f"the committed run's swing (±{swing:.4f})")
    return f"{said}, outside {' and '.join(bounds)}: investigate", False


def compare(fresh_root: str | Path, committed_root: str | Path, tol: float = TOLERANCE) -> list[Comparison]:
    """Every finished committed run under ``committed_root`` against the run of the same name under ``fresh_root``."""
    fresh, ref = load_runs(fresh_root), load_runs(committed_root)
    ref = ref[ref["status"].isin(DONE)]
    if ref.empty:
        return []
    keys = ["norm", *[c for c in varying_factors(ref) if c != "norm"]]  # a group of seeds, as in the report
    label_cols = keys + (["seed"] if ref["seed"].nunique() > 1 else [])
    groups = {tuple(map(str, k)): list(g["final_test_acc"]) for k, g in ref.groupby(keys, dropna=False, sort=False)}
    by_run = {r: row for r, row in zip(fresh["run"], fresh.itertuples(index=False))}
    out = []
    for row in ref.sort_values("run").itertuples(index=False):
        label = " ".join(str(getattr(row, c)) if c == "norm" else f"{c}={getattr(row, c)}" for c in label_cols)
        committed = float(row.final_test_acc)
        mine = by_run.get(row.run)
        if mine is None or mine.status not in DONE:
            status = "not trained" if mine is None else f"status {mine.status}"
            out.append(Comparison(row.run, label, None, committed, f"no finished fresh run ({status})", False))
            continue
        theirs, ours = _logged(row.run_dir), _logged(mine.run_dir)
        group = groups.get(tuple(str(getattr(row, c)) for c in keys), [committed])
        swing = end_swing(theirs, int(row.step)) if row.step is not None else None
        verdict, ok = _verdict(float(mine.final_test_acc), committed, group, swing, tol)
        if verdict == "identical":
            verdict = "identical, every logged value" if ours == theirs else "identical final accuracy (other logged values differ at float level)"
        out.append(Comparison(row.run, label, float(mine.final_test_acc), committed, verdict, ok))
    return out


def report(fresh_root: str | Path, committed_root: str | Path, tol: float = TOLERANCE) -> tuple[list[str], bool]:
    """The comparison as printable lines, and whether every run reproduced (identical or within a stated bound)."""
    rows = compare(fresh_root, committed_root, tol)
    if not rows:
        return [f"no finished runs under {committed_root} to compare with"], False
    width = max(len(r.label) for r in rows)
    ok = all(r.ok for r in rows)
    exact = sum(r.verdict == "identical, every logged value" for r in rows)
    lines = [
        f"final test accuracy of {fresh_root} vs the committed {committed_root}:",
        *(r.line(width) for r in rows),
        f"{exact} of {len(rows)} bit-identical"
        + ("" if exact == len(rows) else " (bit-identity needs the same CPU model, library versions and torch thread count)")
        + ("; all within the stated bounds" if ok else "; some outside the stated bounds: investigate"),
    ]
    return lines, ok
