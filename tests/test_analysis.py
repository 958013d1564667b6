"""Loading, seed aggregation, time-to-target and figures on a hand-made results folder with known numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnstudy import analysis as A
from bnstudy.analysis import plots

# test accuracy at steps 10, 20, 30 (0.1 training seconds per step); target 0.9 (synthetic)
ACC = {
    ("bn", 0): [0.5, 0.9, 0.90],  # reaches at step 20
    ("bn", 1): [0.6, 0.85, 0.92],  # reaches at step 30
    ("bn", 2): [0.7, 0.95, 0.97],  # reaches at step 20
    ("affine", 0): [0.3, 0.5, 0.6],  # never
    ("none", 0): [0.4, 0.8, 0.91],  # the only finished none run: a single seed
}
# mean of bn's final accuracies 0.90, 0.92, 0.97 and the half-width of its 95% interval,
# by hand: sd = sqrt((0.03^2 + 0.01^2 + 0.04^2) / 2) = 0.0360555; t(0.975, 2) = 4.3026527
BN_MEAN, BN_HALF = 0.93, 4.3026527 * 0.0360555 / math.sqrt(3)


def write_run(root: Path, norm: str, seed: int, accs: list[float], status: str = "completed", lr: float = 0.1, **more) -> Path:
    """A run folder as train_run leaves it: summary.json and a tidy metrics.csv."""
    d = root / f"synthetic-mlp-{norm}-lr{lr}" / f"seed{seed}"
    d.mkdir(parents=True)
    rows = ["step,split,metric,value,seconds"]
    for i, acc in enumerate(accs):
        step = 10 * (i + 1)
        sec = 0.1 * step
        loss = 2.0 * (1 - acc) + 0.01
        rows += [f"{step},train,loss,{loss},{sec}", f"{step},train,lr,{lr},{sec}", f"{step},test,acc,{acc},{sec}", f"{step},test,loss,{loss},{sec}"]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    factors = {
        "data": "synthetic", "model": "mlp", "norm": norm, "optim": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0,
        "sched": "constant", "batch_size": 32, "steps": 30, "seed": seed, "depth": 3, "width": 16, "activation": "sigmoid",
        "augment": False, "study": "",
    }  # fmt: skip
    summary = {
        "status": status,
        "step": 10 * len(accs),
        "final": {"test/acc": accs[-1] if accs else None, "test/loss": None, "train/loss": 0.5},
        "best": {"test/acc": max(accs) if accs else None},
        "params": 1000 if norm == "none" else 1100,
        "seconds": 0.1 * 10 * len(accs),
        "hook_seconds": 0.01,
        "ms_per_step": 100.0,
        "factors": factors,
        "run": f"{d.parent.name}/{d.name}",
        "device": "cpu",
        **more,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def make_results(root: Path) -> Path:
    """The hand-made study: bn x3 seeds, affine (one diverged), none (one failed), plus two broken files."""
    for (norm, seed), accs in ACC.items():
        write_run(root, norm, seed, accs)
    write_run(root, "affine", 1, [0.2], status="diverged", diverged_at=15)
    write_run(root, "none", 1, [0.3], status="failed", error="error.txt")
    # a truncated last line (a run killed mid-write) must not lose the rest
    with open(root / "synthetic-mlp-affine-lr0.1" / "seed0" / "metrics.csv", "a") as f:
        f.write("40,tes")
    broken = root / "broken" / "seed0"
    broken.mkdir(parents=True)
    (broken / "summary.json").write_text('{"status": "compl')
    return root


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return make_results(tmp_path / "results")


@pytest.fixture
def loaded(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with pytest.warns(UserWarning, match="broken"):
        runs = A.load_runs(results)
    return runs, A.load_metrics(results, runs)


def test_load_runs_one_row_per_readable_run(results: Path) -> None:
    with pytest.warns(UserWarning, match="unreadable summary.json"):
        runs = A.load_runs(results)
    assert len(runs) == 7  # the broken summary is skipped
    for col in ["run", "run_dir", *A.FACTORS, "status", "step", "params", "seconds", "ms_per_step", "final_test_acc",
                "final_test_loss", "final_train_loss", "best_test_acc", "diverged_at"]:  # fmt: skip
        assert col in runs.columns, col
    bn0 = runs.set_index("run").loc["synthetic-mlp-bn-lr0.1/seed0"]
    assert bn0["norm"] == "bn" and bn0["lr"] == 0.1 and bn0["final_test_acc"] == 0.90
    assert Path(bn0["run_dir"]).is_absolute()
    assert math.isnan(bn0["final_test_loss"])  # null in JSON
    div = runs[runs["status"] == "diverged"].iloc[0]
    assert div["diverged_at"] == 15


def test_load_empty_folder_has_the_columns(tmp_path: Path) -> None:
    runs = A.load_runs(tmp_path)
    assert runs.empty and "final_test_acc" in runs.columns and "norm" in runs.columns
    assert A.load_metrics(tmp_path, runs).empty


def test_load_metrics_long_table_joined_with_factors(loaded) -> None:
    runs, metrics = loaded
    assert list(metrics.columns[:6]) == ["run", "step", "split", "metric", "value", "seconds"]
    assert {"norm", "lr", "seed", "status"} <= set(metrics.columns)
    aff0 = metrics[metrics["run"] == "synthetic-mlp-affine-lr0.1/seed0"]
    assert aff0["step"].max() == 30  # truncated "40,tes" line dropped, the rest kept
    assert len(aff0) == 12


def test_unreadable_metrics_skip_with_warning(results: Path) -> None:
    (results / "synthetic-mlp-bn-lr0.1" / "seed2" / "metrics.csv").write_text("garbage\n1,2\n")
    with pytest.warns(UserWarning):
        runs = A.load_runs(results)
        metrics = A.load_metrics(results, runs)
    assert "synthetic-mlp-bn-lr0.1/seed2" not in set(metrics["run"])
    assert "synthetic-mlp-bn-lr0.1/seed0" in set(metrics["run"])


def test_t_quantile_and_mean_ci_by_hand() -> None:
    assert A.t_quantile(0.95, 1) == pytest.approx(12.7062, abs=1e-4)
    assert A.t_quantile(0.95, 2) == pytest.approx(4.3027, abs=1e-4)
    assert A.t_quantile(0.95, 9) == pytest.approx(2.2622, abs=1e-4)
    m, lo, hi, n = A.mean_ci([0.90, 0.92, 0.97])
    assert (m, n) == (pytest.approx(BN_MEAN), 3)
    assert lo == pytest.approx(BN_MEAN - BN_HALF, abs=1e-6) and hi == pytest.approx(BN_MEAN + BN_HALF, abs=1e-6)
    m, lo, hi, n = A.mean_ci([0.5])  # a single seed: a mean, no interval, no error
    assert m == 0.5 and n == 1 and math.isnan(lo) and math.isnan(hi)
    assert A.mean_ci([float("nan"), None])[3] == 0


def test_curves_mean_and_ci_per_step(loaded) -> None:
    _, metrics = loaded
    c = A.curves(metrics, "test", "acc", by=["norm"]).set_index(["norm", "step"])
    assert c.loc[("bn", 30), "mean"] == pytest.approx(BN_MEAN)
    assert c.loc[("bn", 30), "hi"] - c.loc[("bn", 30), "mean"] == pytest.approx(BN_HALF, abs=1e-6)
    assert c.loc[("bn", 30), "seconds"] == pytest.approx(3.0)
    # none: seed0 (finished) and seed1 (failed, logged step 10 only)
    assert c.loc[("none", 30), "n"] == 1 and math.isnan(c.loc[("none", 30), "lo"])
    assert c.loc[("none", 10), "n"] == 2


def test_time_to_target(loaded) -> None:
    runs, metrics = loaded
    t = A.time_to_target(runs, metrics).set_index("run")
    assert (t["target"] == 0.9).all()  # synthetic's default
    bn1 = t.loc["synthetic-mlp-bn-lr0.1/seed1"]
    assert bn1["reached"] and bn1["steps_to_target"] == 30 and bn1["seconds_to_target"] == pytest.approx(3.0)
    assert t.loc["synthetic-mlp-bn-lr0.1/seed0", "steps_to_target"] == 20  # 0.9 counts as reached
    assert not t.loc["synthetic-mlp-affine-lr0.1/seed0", "reached"]
    assert math.isnan(t.loc["synthetic-mlp-affine-lr0.1/seed0", "steps_to_target"])
    t5 = A.time_to_target(runs, metrics, target=0.5).set_index("run")
    assert t5.loc["synthetic-mlp-affine-lr0.1/seed0", "steps_to_target"] == 20
    assert A.default_target("mnist") == 0.97 and A.default_target("cifar10_jpeg") == 0.75


def test_summary_table(loaded) -> None:
    runs, metrics = loaded
    assert A.varying_factors(runs) == ["norm"]
    s = A.summary_table(runs, metrics).set_index("norm")
    bn = s.loc["bn"]
    assert bn["runs"] == 3 and bn["final_test_acc"] == pytest.approx(BN_MEAN)
    assert bn["final_test_acc_lo"] == pytest.approx(BN_MEAN - BN_HALF, abs=1e-6)
    assert bn["reached"] == 3 and bn["steps_to_target"] == pytest.approx(70 / 3)
    assert bn["seconds_to_target"] == pytest.approx(7 / 3)
    aff = s.loc["affine"]  # one diverged run counts as a finished run that did not reach the target
    assert aff["runs"] == 2 and aff["diverged"] == 1 and aff["reached"] == 0 and math.isnan(aff["steps_to_target"])
    assert aff["final_test_acc"] == pytest.approx(0.4)
    none = s.loc["none"]  # single finished seed, one failed run
    assert none["runs"] == 1 and none["failed"] == 1 and math.isnan(none["final_test_acc_lo"])
    assert none["final_test_acc"] == pytest.approx(0.91) and none["params"] == 1000


def test_groups_by_other_varying_factors(tmp_path: Path) -> None:
    for lr in (0.1, 1.0):
        for seed in (0, 1):
            write_run(tmp_path, "bn", seed, [0.5, 0.95], lr=lr)
    write_run(tmp_path, "none", 0, [0.5, 0.6], lr=1.0, status="diverged", diverged_at=12)
    runs = A.load_runs(tmp_path)
    metrics = A.load_metrics(tmp_path, runs)
    assert A.group_columns(runs) == ["norm", "lr"]
    s = A.summary_table(runs, metrics)
    assert len(s) == 3 and set(s.columns) >= {"norm", "lr", "final_test_acc"}
    fig = plots.sensitivity_figure(runs, "lr")
    out = plots.save_figure(fig, tmp_path / "figs", "sens", formats=("png",))
    assert out[0].stat().st_size > 1000


def _probe_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    base = metrics[(metrics["split"] == "test") & (metrics["metric"] == "acc")]
    rows = []
    for layer, shift in (("layer1", 0.0), ("layer2", 1.0)):
        for q, off in (("p15", -1.0), ("p50", 0.0), ("p85", 1.0)):
            for where in ("pre", "post"):
                r = base.copy()
                r["split"], r["metric"], r["value"] = "probe", f"{layer}/{where}/{q}", r["value"] + off + shift
                rows.append(r)
    return pd.concat([metrics, *rows], ignore_index=True)


def test_every_figure_function_writes_a_nonempty_image(loaded, tmp_path: Path) -> None:
    runs, metrics = loaded
    metrics = _probe_rows(metrics)
    assert plots.probe_layers(metrics) == ["layer1", "layer2"]
    figs = {
        "acc_step": A.accuracy_figure(runs, metrics, "step"),
        "acc_seconds": A.accuracy_figure(runs, metrics, "seconds"),
        "loss_step": A.loss_figure(runs, metrics, "step"),
        "loss_seconds": A.loss_figure(runs, metrics, "seconds"),
        "sens_norm_only": A.sensitivity_figure(runs, "activation"),  # categorical, one value
        "probe": A.probe_figure(runs, metrics),
    }
    for name, fig in figs.items():
        (png,) = A.save_figure(fig, tmp_path, name, formats=("png",))
        assert png.stat().st_size > 1000, name
    svg = A.save_figure(figs["acc_step"], tmp_path, "acc_step", formats=("svg",))[0]
    assert svg.read_text().lstrip().startswith("<?xml")
    assert A.probe_figure(runs, loaded[1]) is None  # nothing probed: no figure
    assert set(A.figures(runs, metrics)) == {
        "test_acc_vs_step", "train_loss_vs_step", "test_acc_vs_seconds", "train_loss_vs_seconds", "activation_percentiles",
    }  # fmt: skip


def test_palette_is_fixed_and_has_a_fallback() -> None:
    assert A.color("bn") == A.PALETTE["bn"] and A.color("affine") != A.color("bn")
    assert len({A.PALETTE[k] for k in A.PALETTE}) == len(A.PALETTE)
    assert A.color("my_new_norm") == A.color("my_new_norm")  # stable across calls
    assert plots.variant_order(["zz", "none", "bn"]) == ["bn", "none", "zz"]


def test_figures_skip_failed_runs_and_handle_nothing(tmp_path: Path) -> None:
    write_run(tmp_path, "bn", 0, [0.3], status="failed")
    runs = A.load_runs(tmp_path)
    assert A.figures(runs, A.load_metrics(tmp_path, runs)) == {}
    assert np.isnan(A.summary_table(runs, A.load_metrics(tmp_path, runs))["final_test_acc"]).all()


def test_probe_table_first_and_last_step_mean_over_seeds():
    from bnstudy.analysis import aggregate

    rows = []
    for run, seed, scale in (("a/seed0", 0, 1.0), ("a/seed1", 1, 3.0)):
        for step in (10, 20, 30):
            for site in ("layer1", "layer2", "layer3", "pool1"):
                stat = "mean" if site == "pool1" else "sat_frac"
                rows.append({"run": run, "seed": seed, "norm": "bn", "split": "probe", "step": step,
                             "metric": f"{site}/{stat}", "value": scale * step})
    rows.append({"run": "a/seed0", "seed": 0, "norm": "bn", "split": "test", "step": 30, "metric": "acc", "value": 0.5})
    t = aggregate.probe_table(pd.DataFrame(rows), ["norm"])
    assert sorted(t["site"].unique()) == ["layer1", "layer3", "pool1"]  # first and last norm layer, every pool
    assert sorted(t["step"].unique()) == [10, 30]
    row = t[(t.site == "layer3") & (t.step == 30)].iloc[0]
    assert row["sat_frac"] == pytest.approx(2.0 * 30)  # mean of 1x and 3x
    assert t[(t.site == "pool1") & (t.step == 10)].iloc[0]["pool/mean"] == pytest.approx(20.0)
    assert aggregate.probe_table(pd.DataFrame(rows[-1:]), ["norm"]).empty
