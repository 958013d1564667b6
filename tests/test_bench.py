"""bnstudy-bench: the --quick path on synthetic data yields every row, finite ratios and its files.

Speed targets are printed by the bench, never asserted here: the test machine's
load decides them.
"""
from __future__ import annotations

import math
import os

import pandas as pd
import pytest
import torch

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


def test_bad_case_options_are_one_line_errors(capsys):
    for argv in (["--case", "fast"], ["--peak-tflops", "0"], ["--concurrent", "a"], ["--concurrent", "0"]):
        with pytest.raises(SystemExit) as e:
            bench.parse(argv)
        assert e.value.code == 2
    assert "--case takes speed, busy, full" in capsys.readouterr().err


def test_bare_and_dataloader_loops_use_the_trainers_optimizer(tmp_data):
    from bnstudy.bench.common import compose
    from bnstudy.bench.contenders import built

    for name, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        model, opt, data, _ = built(compose(["data=synthetic", f"optim={name}", "train.threads=1"]))
        assert isinstance(opt, cls) and model.training and data.train_x.shape[1:] == (1, 28, 28)


def test_full_width_quick_path_on_a_small_resnet(tmp_data, tmp_path, monkeypatch):
    from bnstudy.bench import full

    from bnstudy.bench import precision

    # the full-width code path, on a ResNet-8 of width 8 so that it takes seconds on a CPU (narrower is refused with
    # channels_last); the amp rows only where the CPU computes bf16 itself
    monkeypatch.setitem(full.FULL, "resnet", ["model=resnet", "model.depth=8", "model.width=8"])
    opts = bench.Options(quick=True, models=["resnet"], steps=1, repeats=1, data="synthetic", peak_tflops=1.0)
    rows, checks = full.bench_full(opts, tmp_path, torch.device("cpu"), 1)
    native = precision.unsupported(torch.device("cpu")) is None
    toggles = ["plain", "amp", "channels_last", "amp+channels_last"] if native else ["plain", "channels_last"]
    assert [r["toggles"] for r in rows] == toggles  # no compile in --quick
    assert all(r["ips_bnstudy"] > 0 and r["ips_bare"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    assert rows[0]["gflop_per_step"] == pytest.approx(step_flops_resnet8() / 1e9)
    assert {c.name for c in checks} == {"resnet full a/b", "resnet full MFU"}
    assert full.peak_tflops(torch.device("cpu"), None)[0] is None


def step_flops_resnet8() -> float:
    from bnstudy.config import ModelConfig, NormConfig
    from bnstudy.flops import step_flops

    return step_flops(ModelConfig(name="resnet", depth=8, width=8), NormConfig(), (3, 32, 32), 10, 128)


def test_busy_case_neighbour_and_fresh_process_runs(tmp_data):
    from bnstudy.bench import busy

    with busy.neighbour() as pid:
        os.kill(pid, 0)  # running (raises if not)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped by the bench
    args = ["data=synthetic", "train.steps=2", "train.eval_every=0", "train.progress=off"]
    new = busy.train_once("default", args)
    assert new["threads"] == 1 and "too small to split" in new["why"] and "PASSIVE" in new["why"]
    old = busy.train_once("old default", args)
    assert "actively" in old["why"] and old["step"] == 2


def test_precision_case_quick_path_on_a_small_resnet(tmp_data, tmp_path, monkeypatch):
    from bnstudy.bench import full, precision

    # the precision case's code path on a ResNet-8 of width 8 (seconds on a CPU; narrower is refused with channels_last): fp32, fp32 + channels_last, bf16, bf16 + channels_last,
    # each against the bare loop and against fp32; bf16 rows only where the CPU computes bf16 itself
    monkeypatch.setitem(full.FULL, "resnet", ["model=resnet", "model.depth=8", "model.width=8"])
    opts = bench.Options(quick=True, norms=["bn", "none"], steps=1, repeats=1, data="synthetic", cases={"precision"})
    rows, checks = precision.bench_precision(opts, tmp_path, torch.device("cpu"), 1)
    native = precision.unsupported(torch.device("cpu")) is None
    settings = ["fp32", "channels_last", "bf16", "bf16+channels_last"] if native else ["fp32", "channels_last"]
    assert [(r["norm"], r["setting"]) for r in rows] == [(n, s) for n in ("bn", "none") for s in settings]
    assert all(r["ips_bnstudy"] > 0 and r["ips_bare"] > 0 for r in rows)
    assert [r["speedup"] for r in rows if r["setting"] == "fp32"] == [1.0, 1.0]
    names = {c.name for c in checks}
    assert "precision a/b" in names and "channels_last / fp32" in names and (("bf16+channels_last / fp32" in names) == native)
    assert checks[0].value == min(r["ratio_a_b"] for r in rows)
