"""bnstudy-bench: the --quick path on synthetic data yields every row, finite ratios and its files.

Speed targets are printed by the bench, never asserted here: the test machine's
load decides them.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bnstudy import bench

NORMS = ("bn", "affine", "none")


def test_quick_synthetic_writes_every_row(tmp_data, tmp_path, capsys):
    out = tmp_path / "bench"
    # the quick path, shrunk further (1 step, 2 repeats, no subprocess sweep) to stay well under 30 s
    bench.main(["--quick", "--data", "synthetic", "--out", str(out), "--threads", "1", "--steps", "1", "--repeats", "2", "--skip", "f"])

    df = pd.read_csv(out / "bench.csv")
    assert list(df.columns) == bench.CSV_COLUMNS
    assert sorted(zip(df["model"], df["norm"])) == sorted((m, n) for m in bench.QUICK_MODELS for n in NORMS)
    assert df["data"].str.startswith("synthetic").all()
    numeric = ["ips_bnstudy", "ips_bare", "ips_conventional", "ratio_a_b", "ratio_a_c", "ms_step_bnstudy", "ms_step_bare"]
    for col in numeric:
        assert all(math.isfinite(v) and v > 0 for v in df[col]), col
    assert (df["steps"] == 1).all()

    checks = pd.read_csv(out / "checks.csv")
    ev = checks[checks["check"] == "eval / train"]
    assert len(ev) == 1 and ev["value"].iloc[0] > 0
    assert (out / "bench.png").stat().st_size > 0

    printed = capsys.readouterr().out
    assert "a/b" in printed and ("PASS" in printed or "MISS" in printed)
    assert not list(tmp_data.glob("cache/*")), "synthetic data must not be cached"


def test_sweep_overhead_is_measured(tmp_path):
    checks = bench.bench_sweep(bench.Options(quick=True), tmp_path)
    assert [c.name for c in checks] == ["sweep s/job incl. process start"]
    assert checks[0].value is not None and checks[0].value > 0, checks[0].note


def test_bad_arguments_are_one_line_errors(capsys):
    for argv in (["--models", "transformer"], ["--skip", "x"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as e:
            bench.parse(argv)
        assert e.value.code == 2
    assert "unknown model(s) transformer" in capsys.readouterr().err


def test_check_status():
    assert bench.Check("mlp a/b", 0.95).status == "PASS"
    assert bench.Check("mlp a/b", 0.5).status == "MISS"
    assert bench.Check("eval / train", 0.2).status == "MISS"
    assert bench.Check("eval / train", None).status == "n/a"
