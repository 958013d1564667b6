"""Printing and files of the speed case: the table, bench.csv, checks.csv and bench.png."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bnstudy.bench.common import TARGETS, Check
from bnstudy.bench.contenders import CONTENDERS

CSV_COLUMNS = [
    "model", "norm", "data", "batch_size", "steps", "ips_bnstudy", "ips_bare", "ips_conventional",
    "ratio_a_b", "ratio_a_c", "ms_step_bnstudy", "ms_step_bare",
]  # fmt: skip


def contender_checks(rows: list[dict[str, Any]]) -> list[Check]:
    """a/b and a/c targets, one check per model x norm row that has a target."""
    checks = []
    for r in rows:
        for ratio, col in (("a/b", "ratio_a_b"), ("a/c", "ratio_a_c")):
            name = f"{r['model']} {ratio}"
            if name in TARGETS and math.isfinite(r[col]):
                checks.append(Check(name, r[col], f"{r['norm']} on {r['data']}"))
    return checks


def fmt(x: float, digits: int = 0) -> str:
    """A number with thousands separators, "-" when missing."""
    return "-" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Images/s of each contender, the ratios and ms/step, one line per model x norm."""
    head = f"{'model':<7}{'norm':<12}{'data':<28}{'bs':>4}{'steps':>6}  {'a bnstudy':>10}{'b bare':>10}{'c conv':>10}  {'a/b':>5}{'a/c':>6}  {'ms a':>8}{'ms b':>8}{'ms c':>8}"
    print("\nimages/s (median over repeats; a = bnstudy.train_run, b = bare loop, c = DataLoader loop)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<7}{r['norm']:<12}{r['data']:<28}{r['batch_size']:>4}{r['steps']:>6}  "
            f"{fmt(r['ips_bnstudy']):>10}{fmt(r['ips_bare']):>10}{fmt(r['ips_conventional']):>10}  "
            f"{fmt(r['ratio_a_b'], 2):>5}{fmt(r['ratio_a_c'], 1):>6}  "
            f"{fmt(r['ms_step_bnstudy'], 2):>8}{fmt(r['ms_step_bare'], 2):>8}{fmt(r['ms_step_conventional'], 2):>8}"
        )


def write_csv(rows: list[dict[str, Any]], checks: list[Check], out: Path) -> None:
    """bench.csv (one row per model x norm) and checks.csv (one row per measured target)."""
    import pandas as pd

    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(out / "bench.csv", index=False)
    pd.DataFrame(
        [
            {
                "check": c.name,
                "value": c.value,
                "target": f"{TARGETS[c.name][1]} {TARGETS[c.name][0]:g}" if c.name in TARGETS else "",
                "status": c.status,
                "note": c.note,
            }
            for c in checks
        ]
    ).to_csv(out / "checks.csv", index=False)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of ms/step per norm, one panel per model, bars per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    width = 0.8 / len(CONTENDERS)
    for ax, m in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == m]
        norms = [r["norm"] for r in mine]
        for k, c in enumerate(CONTENDERS):
            ms = [r[f"ms_step_{c}"] for r in mine]
            if all(not math.isfinite(v) for v in ms):
                continue
            ax.bar([i + (k - 1) * width for i in range(len(norms))], ms, width, label=c)
        ax.set_xticks(range(len(norms)), norms)
        ax.set_title(f"{m} ({mine[0]['data']}, bs {mine[0]['batch_size']})", fontsize=9)
        ax.set_ylabel("ms / step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
