"""Figures a reader can trust: accuracy bands inside [0, 1], a y-range that cuts no curve, seeds on request, 150 dpi + PDF."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bnstudy.analysis import plots


def _study(accs: dict[str, list[list[float]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs and tidy metrics: per variant, one accuracy curve per seed (evaluated at steps 100, 200, ...)."""
    runs, rows = [], []
    for norm, curves in accs.items():
        for seed, curve in enumerate(curves):
            run = f"{norm}/seed{seed}"
            runs.append({"run": run, "norm": norm, "seed": seed, "status": "completed", "final_test_acc": curve[-1]})
            for i, v in enumerate(curve):
                rows.append({"run": run, "norm": norm, "step": 100 * (i + 1), "split": "test", "metric": "acc", "value": v,
                             "seconds": float(i + 1)})  # fmt: skip
    return pd.DataFrame(runs), pd.DataFrame(rows)


def test_proportion_interval_stays_inside_0_1_where_the_t_interval_does_not():
    two_seeds = [0.99, 0.88]  # a t interval with 1 degree of freedom: 0.935 ± 0.70
    lo, hi = plots.proportion_ci(two_seeds)
    assert 0 < lo < min(two_seeds) and max(two_seeds) < hi < 1
    from bnstudy.analysis.aggregate import mean_ci

    assert mean_ci(two_seeds)[2] > 1  # what the band used to draw (and clip without saying)
    assert np.isnan(plots.proportion_ci([0.5])).all()
    assert plots.proportion_ci([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1))
    lo, hi = plots.proportion_ci([1.0, 1.0, 0.98])
    assert 0 < lo < hi <= 1


def test_accuracy_band_and_y_range_hold_every_curve():
    runs, metrics = _study({
        "bn": [[0.50, 0.90, 0.99], [0.40, 0.80, 0.88]],
        "affine": [[0.10, 0.10, 0.11], [0.10, 0.30, 0.60]],  # far below the bulk: the old 10th-percentile floor cut it
    })
    fig = plots.accuracy_figure(runs, metrics)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert 0 <= lo <= 0.10 and 0.99 <= hi <= 1.02
    for coll in ax.collections:  # the bands
        ys = np.concatenate([p.vertices[:, 1] for p in coll.get_paths()])
        assert ys.min() >= 0 and ys.max() <= 1
    assert "logit" in fig.texts[0].get_text() or "logit" in fig._suptitle.get_text()


def test_seeds_draw_one_thin_line_per_run_under_the_mean():
    runs, metrics = _study({"bn": [[0.5, 0.9], [0.4, 0.8], [0.45, 0.85]], "none": [[0.3, 0.6], [0.35, 0.7], [0.2, 0.5]]})
    plain = plots.accuracy_figure(runs, metrics).axes[0]
    seeded = plots.accuracy_figure(runs, metrics, seeds=True).axes[0]
    assert len(seeded.lines) - len(plain.lines) == len(runs)
    thin = [l for l in seeded.lines if l.get_linewidth() < 1]
    assert len(thin) == len(runs) and all(l.get_linewidth() < 1.8 for l in thin)


def test_figures_are_saved_at_150_dpi_with_a_vector_copy(tmp_path):
    from PIL import Image

    runs, metrics = _study({"bn": [[0.5, 0.9], [0.4, 0.8]]})
    fig = plots.accuracy_figure(runs, metrics)
    paths = plots.save_figure(fig, tmp_path, "acc", formats=("png", "pdf"))
    w, h = Image.open(paths[0]).size
    fw, fh = fig.get_size_inches()
    assert plots.PNG_DPI >= 150 and w == pytest.approx(fw * 150, abs=2) and h == pytest.approx(fh * 150, abs=2)
    assert paths[1].read_bytes().startswith(b"%PDF")


def test_a_figure_saved_twice_writes_the_same_bytes(tmp_path, monkeypatch):
    """No creation date or random ids in PNG, PDF or SVG: a regenerated report does not churn its committed files."""
    import time

    runs, metrics = _study({"bn": [[0.5, 0.9], [0.4, 0.8]]})
    first = plots.save_figure(plots.accuracy_figure(runs, metrics), tmp_path / "a", "acc", formats=("png", "pdf", "svg"))
    clock = time.time()
    monkeypatch.setattr(time, "time", lambda: clock + 86400)  # a day later, as far as any date in a file goes
    second = plots.save_figure(plots.accuracy_figure(runs, metrics), tmp_path / "b", "acc", formats=("png", "pdf", "svg"))
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_report_writes_pdf_and_draws_seeds(tmp_path):
    """bnstudy-report --seeds on a tiny study: every figure as PNG and PDF, the report links the PDF."""
    from tests.test_analysis import write_run  # the suite's writer of a finished run folder

    for seed in range(2):
        for norm in ("bn", "affine"):
            write_run(tmp_path / "runs", norm, seed, [0.6 + 0.1 * seed, 0.8 + 0.05 * seed])
    from bnstudy.analysis.report import main

    main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--seeds"])
    figs = tmp_path / "rep" / "figures"
    pngs, pdfs = sorted(figs.glob("*.png")), sorted(figs.glob("*.pdf"))
    assert pngs and [p.stem for p in pngs] == [p.stem for p in pdfs]
    assert "figures/test_acc_vs_step.pdf" in (tmp_path / "rep" / "report.md").read_text()
