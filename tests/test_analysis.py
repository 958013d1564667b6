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


def write_run(
    root: Path,
    norm: str,
    seed: int,
    accs: list[float],
    status: str = "completed",
    lr: float = 0.1,
    val: float | None = None,
    precise: float | None = None,
    extra_factors: dict | None = None,
    **more,
) -> Path:
    """A run folder as train_run leaves it: summary.json and a tidy metrics.csv.

    ``val``/``precise``: a final validation / precise-statistics test accuracy
    (as with data.val_size > 0 / train.precise_bn > 0); ``extra_factors`` are
    added to (or replace) the factors, which otherwise lack init and pool like
    the committed runs.
    """
    d = root / f"synthetic-mlp-{norm}-lr{lr}" / f"seed{seed}"
    d.mkdir(parents=True)
    val_precise = more.pop("val_precise", val)  # a precise validation accuracy, where both are given
    rows = ["step,split,metric,value,seconds"]
    for i, acc in enumerate(accs):
        step = 10 * (i + 1)
        sec = 0.1 * step
        loss = 2.0 * (1 - acc) + 0.01
        rows += [f"{step},train,loss,{loss},{sec}", f"{step},train,lr,{lr},{sec}", f"{step},test,acc,{acc},{sec}"]
        if val is not None:
            rows.append(f"{step},val,acc,{val},{sec}")
        if precise is not None:
            rows.append(f"{step},test,precise_acc,{precise},{sec}")
        if precise is not None and val is not None:
            rows.append(f"{step},val,precise_acc,{val_precise},{sec}")
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    factors = {
        "data": "synthetic", "model": "mlp", "norm": norm, "optim": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0,
        "sched": "constant", "batch_size": 32, "steps": 30, "seed": seed, "depth": 3, "width": 16, "activation": "sigmoid",
        "augment": False, "study": "", **(extra_factors or {}),
    }  # fmt: skip
    # as train_run writes it: the last logged values (no test-loss rows here, so test/loss is null)
    final = {"test/acc": accs[-1] if accs else None, "test/loss": None, "train/loss": 2.0 * (1 - accs[-1]) + 0.01 if accs else None}
    final.update({"val/acc": val} if val is not None else {})
    final.update({"test/precise_acc": precise} if precise is not None else {})
    final.update({"val/precise_acc": val_precise} if precise is not None and val is not None else {})
    summary = {
        "status": status,
        "step": 10 * len(accs),
        "final": final,
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
    assert len(aff0) == 9


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


@pytest.mark.variants
def test_palette_is_fixed_and_has_a_fallback() -> None:
    # each variant's colour is the one its registry entry declares (bnstudy's own are pinned in test_norm_registry.py)
    from bnstudy.norm import NORMS

    assert A.palette() == {n: v.color for n, v in NORMS.items() if v.color}
    assert all(A.color(n) == (v.color or A.color(n)) for n, v in NORMS.items())
    assert len(set(A.palette().values())) == len(A.palette()), "two variants declare the same colour"
    assert A.color("my_new_norm") == A.color("my_new_norm")  # stable across calls
    assert plots.variant_order(["zz", "none", "bn"]) == ["bn", "none", "zz"]


def test_figures_skip_failed_runs_and_handle_nothing(tmp_path: Path) -> None:
    write_run(tmp_path, "bn", 0, [0.3], status="failed")
    runs = A.load_runs(tmp_path)
    assert A.figures(runs, A.load_metrics(tmp_path, runs)) == {}
    assert np.isnan(A.summary_table(runs, A.load_metrics(tmp_path, runs))["final_test_acc"]).all()


def test_probe_table_first_and_last_step_mean_over_seeds():
    from bnstudy.analysis import probe_tables

    rows = []
    for run, seed, scale in (("a/seed0", 0, 1.0), ("a/seed1", 1, 3.0)):
        for step in (10, 20, 30):
            for site in ("layer1", "layer2", "layer3", "pool1"):
                stat = "mean" if site == "pool1" else "sat_frac"
                rows.append({"run": run, "seed": seed, "norm": "bn", "split": "probe", "step": step,
                             "metric": f"{site}/{stat}", "value": scale * step})
    rows.append({"run": "a/seed0", "seed": 0, "norm": "bn", "split": "test", "step": 30, "metric": "acc", "value": 0.5})
    t = probe_tables.probe_table(pd.DataFrame(rows), ["norm"])
    assert sorted(t["site"].unique()) == ["layer1", "layer3", "pool1"]  # first and last norm layer, every pool
    assert sorted(t["step"].unique()) == [10, 30]
    row = t[(t.site == "layer3") & (t.step == 30)].iloc[0]
    assert row["sat_frac"] == pytest.approx(2.0 * 30)  # mean of 1x and 3x
    assert t[(t.site == "pool1") & (t.step == 10)].iloc[0]["pool/mean"] == pytest.approx(20.0)
    assert probe_tables.probe_table(pd.DataFrame(rows[-1:]), ["norm"]).empty


def test_t_quantile_matches_the_closed_form_it_replaced() -> None:
    # Student's t with 1 and 2 degrees of freedom in closed form: F(t) = 1/2 + atan(t)/π and 1/2 + t / (2 sqrt(2 + t²))
    for level in (0.5, 0.9, 0.95, 0.99):
        assert A.t_quantile(level, 1) == pytest.approx(math.tan(math.pi * level / 2), rel=1e-12)
        q = (1 + level) / 2
        assert A.t_quantile(level, 2) == pytest.approx((2 * q - 1) * math.sqrt(2 / (1 - (2 * q - 1) ** 2)), rel=1e-12)
    assert math.isnan(A.t_quantile(0.95, 0))


def test_welch_by_hand() -> None:
    a, b = [0.90, 0.92, 0.97], [0.80, 0.85]
    va, vb = 0.0013 / 3, 0.00125 / 2  # variance of each mean: s²/n
    se, df = math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)  # Welch–Satterthwaite
    w = A.welch(a, b)
    assert w.diff == pytest.approx(0.105) and w.df == pytest.approx(df)
    assert w.hi - w.diff == pytest.approx(A.t_quantile(0.95, df) * se) and w.diff - w.lo == pytest.approx(w.hi - w.diff)
    # the p-value and the interval agree: the (1 − p) interval ends at zero
    assert A.welch(a, b, level=1 - w.p).lo == pytest.approx(0.0, abs=1e-9)
    assert 0.05 < w.p < 0.1  # t = 3.23 on 2.3 degrees of freedom
    assert A.welch(b, a).diff == pytest.approx(-0.105) and A.welch(b, a).p == pytest.approx(w.p)
    one = A.welch([0.5], b)  # one seed: a difference, no interval, no p
    assert one.diff == pytest.approx(-0.325) and math.isnan(one.lo) and math.isnan(one.p)
    assert math.isnan(A.welch([], b).diff)
    assert A.welch([0.9, float("nan"), 0.92, None, 0.97], b) == w  # non-finite values are left out


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 over m = 4: x4, x3, x2, x1, never below the previous one
    adj = A.holm([0.01, 0.04, 0.03, float("nan"), 0.005])
    assert adj[[0, 1, 2, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj[3])
    assert A.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert len(A.holm([])) == 0


def test_differences_vs_reference(loaded) -> None:
    runs, _ = loaded
    d = A.differences(runs).set_index(["norm", "metric"])
    assert set(d.index) == {("affine", "final_test_acc"), ("affine", "best_test_acc"), ("none", "final_test_acc"), ("none", "best_test_acc")}
    aff = d.loc[("affine", "final_test_acc")]  # finished: 0.6 and the diverged 0.2, vs bn 0.90, 0.92, 0.97
    w = A.welch([0.6, 0.2], [0.90, 0.92, 0.97])
    assert aff["reference"] == "bn" and (aff["n"], aff["n_ref"]) == (2, 3)
    assert aff["diff"] == pytest.approx(0.4 - BN_MEAN) and aff["diff_lo"] == pytest.approx(w.lo) and aff["p"] == pytest.approx(w.p)
    assert aff["p_holm"] == pytest.approx(w.p)  # none's p is NaN (one seed), so the family is this one test
    none = d.loc[("none", "final_test_acc")]
    assert none["diff"] == pytest.approx(0.91 - BN_MEAN) and math.isnan(none["p"]) and math.isnan(none["p_holm"])
    other = A.differences(runs, reference="affine").set_index(["norm", "metric"])
    assert other.loc[("bn", "final_test_acc"), "diff"] == pytest.approx(BN_MEAN - 0.4)
    assert A.differences(runs, reference="layernorm").empty  # no such runs: nothing to compare


def test_differences_match_the_setting_and_correct_per_column(tmp_path: Path) -> None:
    for lr, base in ((0.1, 0.90), (1.0, 0.80)):
        for seed in range(3):
            write_run(tmp_path, "bn", seed, [base + 0.01 * seed], lr=lr, precise=base + 0.015 + 0.01 * seed)
            write_run(tmp_path, "affine", seed, [base - 0.05 + 0.02 * seed], lr=lr)
    for seed in range(2):
        write_run(tmp_path, "none", seed, [0.5 + 0.01 * seed], lr=3.0)  # no bn at lr 3: no comparison
    runs = A.load_runs(tmp_path)
    d = A.differences(runs)
    assert list(d.columns[:2]) == ["norm", "lr"] and set(d["norm"]) == {"affine"}
    fin = d[d["metric"] == "final_test_acc"].set_index("lr")
    assert fin.loc[0.1, "diff"] == pytest.approx(-0.04) and fin.loc[1.0, "diff"] == pytest.approx(-0.04)
    assert fin.loc[0.1, "ref_mean"] == pytest.approx(0.91) and fin.loc[1.0, "ref_mean"] == pytest.approx(0.81)
    assert fin["p_holm"].tolist() == pytest.approx(A.holm(fin["p"]).tolist())  # a family of two
    assert (fin["p_holm"] > fin["p"]).all()
    # affine has no running statistics: its precise accuracy is its accuracy, compared with bn's precise one
    pre = d[d["metric"] == "final_test_precise_acc"].set_index("lr")
    assert pre.loc[0.1, "diff"] == pytest.approx(0.87 - 0.925) and pre.loc[0.1, "ref_mean"] == pytest.approx(0.925)
    s = A.summary_table(runs, A.load_metrics(tmp_path, runs)).set_index(["norm", "lr"])
    assert s.loc[("bn", 0.1), "final_test_precise_acc"] == pytest.approx(0.925)
    assert s.loc[("bn", 0.1), "final_test_precise_acc_hi"] - 0.925 == pytest.approx(A.t_quantile(0.95, 2) * 0.01 / math.sqrt(3))
    assert s.loc[("affine", 0.1), "final_test_precise_acc"] == pytest.approx(s.loc[("affine", 0.1), "final_test_acc"])
    assert math.isnan(s.loc[("bn", 0.1), "final_val_acc"])


def test_no_precise_column_without_precise_runs(tmp_path: Path) -> None:
    for seed in range(2):
        write_run(tmp_path, "bn", seed, [0.9])
        write_run(tmp_path, "affine", seed, [0.8])
    assert A.load_runs(tmp_path)["final_test_precise_acc"].isna().all()


def test_missing_init_and_pool_read_as_the_old_defaults(tmp_path: Path) -> None:
    write_run(tmp_path / "old", "bn", 0, [0.9])  # a committed run: its factors predate init and pool
    write_run(tmp_path / "new", "bn", 1, [0.9], extra_factors={"init": "default", "pool": "max"})
    write_run(tmp_path / "new", "affine", 0, [0.8], extra_factors={"init": "he", "pool": "avg"})
    runs = A.load_runs(tmp_path).set_index("run")
    assert runs.loc["old/synthetic-mlp-bn-lr0.1/seed0", ["init", "pool"]].tolist() == ["default", "max"]
    assert runs.loc["new/synthetic-mlp-affine-lr0.1/seed0", ["init", "pool"]].tolist() == ["he", "avg"]
    bn = A.load_runs(tmp_path)[lambda r: r["norm"] == "bn"]
    assert "init" not in A.varying_factors(bn) and "pool" not in A.varying_factors(bn)  # old and new bn: one group
    assert len(A.summary_table(bn, A.load_metrics(tmp_path, bn))) == 1
    assert A.group_columns(A.load_runs(tmp_path)) == ["norm", "init", "pool"]


def make_lr_sweep(root: Path) -> Path:
    """bn and affine over learning rates, with a validation split; val and test disagree on affine's best rate.

    Test accuracy at steps 10, 20, 30 (target 0.9) and a final validation accuracy per run.
    """
    for seed in range(3):
        e = 0.01 * seed
        write_run(root, "bn", seed, [0.5, 0.88 + e, 0.90 + e], lr=0.1, val=0.90 + e)
        write_run(root, "bn", seed, [0.8, 0.92 + e, 0.93 + e], lr=1.0, val=0.95 + e)  # bn's choice
        write_run(root, "affine", seed, [0.91 + e, 0.92, 0.92 + e], lr=0.1, val=0.85 + e)  # affine's choice
        write_run(root, "affine", seed, [0.5, 0.7, 0.96 + e], lr=1.0, val=0.80 + e)  # best on test: must not be chosen
        if seed < 2:  # best on validation for the seeds that survived, but one of three diverged
            write_run(root, "affine", seed, [0.5, 0.6, 0.7], lr=3.0, val=0.99)
    write_run(root, "affine", 2, [0.5], lr=3.0, status="diverged", diverged_at=12)
    return root


def test_rates_are_chosen_on_validation_not_test(tmp_path: Path) -> None:
    runs = A.load_runs(make_lr_sweep(tmp_path))
    metrics = A.load_metrics(tmp_path, runs)
    choice = A.choose_rates(runs).set_index("norm")
    assert choice.loc["bn", "lr"] == 1.0 and choice.loc["affine", "lr"] == 0.1
    assert choice.loc["affine", "val_acc"] == pytest.approx(0.86) and choice.loc["affine", "rates"] == 3
    assert choice.loc["bn", "val_runs"] == 3 and choice.loc["bn", "rates"] == 2

    table, picked = A.tuned_summary(runs, metrics)
    t = table.set_index("norm")
    assert list(table.columns[:2]) == ["norm", "lr"] and {"val_acc", "rates"} <= set(table.columns)
    assert t.loc["bn", "lr"] == 1.0 and t.loc["bn", "final_test_acc"] == pytest.approx(0.94)
    assert t.loc["affine", "final_test_acc"] == pytest.approx(0.93) and t.loc["affine", "val_acc"] == pytest.approx(0.86)
    # time to target at the chosen rate: affine reaches 0.9 at its first evaluation, bn at its second
    assert t.loc["affine", "steps_to_target"] == 10 and t.loc["bn", "steps_to_target"] == 20
    assert sorted(picked["lr"].unique()) == [0.1, 1.0] and len(picked) == 6
    d = A.differences(picked, ["norm"]).set_index("metric")
    assert d.loc["final_test_acc", "diff"] == pytest.approx(-0.01) and d.loc["final_test_acc", "n"] == 3


def test_bn_rates_are_chosen_on_precise_validation(tmp_path: Path) -> None:
    # bn's standard evaluation favours lr 0.1, its precise statistics lr 1: the rate is chosen as it is reported
    for seed in range(3):
        write_run(tmp_path, "bn", seed, [0.90], lr=0.1, val=0.90, precise=0.91, val_precise=0.91)
        write_run(tmp_path, "bn", seed, [0.80], lr=1.0, val=0.80, precise=0.95, val_precise=0.95)
        write_run(tmp_path, "affine", seed, [0.85], lr=0.1, val=0.85)
        write_run(tmp_path, "affine", seed, [0.88], lr=1.0, val=0.88)
    runs = A.load_runs(tmp_path)
    assert runs.loc[runs["norm"] == "affine", "final_val_precise_acc"].notna().all()  # plain: the same either way
    choice = A.choose_rates(runs, ["norm", "precise_bn", "lr"]).set_index("norm")
    assert choice.loc["bn", "lr"] == 1.0 and choice.loc["bn", "val_acc"] == pytest.approx(0.95)
    assert choice.loc["affine", "lr"] == 1.0 and choice.loc["affine", "val_acc"] == pytest.approx(0.88)


def test_untunable_says_why(tmp_path: Path, loaded) -> None:
    runs, _ = loaded
    with pytest.raises(A.Untunable, match=r"one lr \(lr=0.1\)"):
        A.choose_rates(runs)
    for lr in (0.1, 1.0):
        write_run(tmp_path / "sweep", "bn", 0, [0.9], lr=lr)
    with pytest.raises(A.Untunable, match="no run has a validation split"):
        A.choose_rates(A.load_runs(tmp_path / "sweep"))


def test_a_plain_variant_is_precise_only_beside_bn_runs_of_its_own_setting(tmp_path: Path) -> None:
    # resnet_full's rate choice: bn (branches as initialised, precise) at 0.05 and 0.1, affine with
    # zero-initialised branches at 0.025, 0.05, 0.1 -- a setting bn never ran, so none of its runs is "precise",
    # and its three rates stay one group with one rate chosen among three
    for lr in (0.05, 0.1):
        write_run(tmp_path, "bn", 0, [0.8], lr=lr, val=0.8, precise=0.81, extra_factors={"zero_init_residual": False})
    for lr, acc in ((0.025, 0.6), (0.05, 0.65), (0.1, 0.7)):
        write_run(tmp_path, "affine", 0, [acc], lr=lr, val=acc, extra_factors={"zero_init_residual": True})
    runs = A.load_runs(tmp_path)
    assert not runs.loc[runs["norm"] == "affine", "precise_bn"].any()
    choice = A.choose_rates(runs).set_index("norm")
    assert choice.loc["affine", "lr"] == 0.1 and choice.loc["affine", "rates"] == 3


def test_precise_reruns_are_their_own_group(tmp_path: Path) -> None:
    # a study's bn re-run with precise statistics (same seeds) must not be pooled with its earlier
    # standard-evaluation runs; affine counts as evaluated precisely where bn was
    for seed in range(3):
        write_run(tmp_path / "old", "bn", seed, [0.85])
        write_run(tmp_path / "new", "bn", seed, [0.86], precise=0.90 + 0.001 * seed)
        write_run(tmp_path / "old", "affine", seed, [0.88 + 0.001 * seed])
    runs = A.load_runs(tmp_path)
    groups = runs.groupby(["norm", "precise_bn"]).size().to_dict()
    assert groups == {("bn", False): 3, ("bn", True): 3, ("affine", True): 3}
    d = A.differences(runs).set_index("metric")
    assert d.loc["final_test_precise_acc", "ref_mean"] == pytest.approx(0.901)
    assert d.loc["final_test_precise_acc", "mean"] == pytest.approx(0.881)


def test_a_factor_the_reference_lacks_matches_any_value(tmp_path: Path) -> None:
    # freeze_after exists only for bn_frozen: bn (blank there) is its reference at every freeze point
    for seed in range(2):
        write_run(tmp_path, "bn", seed, [0.90 + 0.01 * seed])
        for f in (100, 1000):
            write_run(tmp_path / f"f{f}", "bn_frozen", seed, [0.80 + 0.01 * seed], extra_factors={"freeze_after": f})
    runs = A.load_runs(tmp_path)
    d = A.differences(runs, by=["norm", "freeze_after"])
    fin = d[d["metric"] == "final_test_acc"].set_index("freeze_after")
    assert sorted(fin.index) == [100, 1000] and fin["diff"].tolist() == pytest.approx([-0.1, -0.1])


def test_large_figures_are_saved_at_a_lower_dpi(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from PIL import Image

    from bnstudy.analysis.plots import PNG_DPI, PNG_MAX_PIXELS, png_dpi, save_figure

    small, big = plt.figure(figsize=(4, 3)), plt.figure(figsize=(30, 20))
    assert png_dpi(small) == PNG_DPI and png_dpi(big) < PNG_DPI
    (path,) = save_figure(big, tmp_path, "big", formats=("png",))
    w, h = Image.open(path).size
    assert w * h <= PNG_MAX_PIXELS * 1.01
    plt.close("all")


def test_difference_of_differences_adds_the_four_variances():
    from scipy import stats

    from bnstudy.analysis import difference_of_differences, welch

    a, b, c, d = [0.97, 0.96, 0.98], [0.90, 0.91, 0.92, 0.89], [0.95, 0.97, 0.96], [0.94, 0.95, 0.96]
    r = difference_of_differences(a, b, c, d)
    v = [np.var(g, ddof=1) / len(g) for g in (a, b, c, d)]
    df = sum(v) ** 2 / sum(vi**2 / (len(g) - 1) for vi, g in zip(v, (a, b, c, d)))
    half = stats.t.ppf(0.975, df) * np.sqrt(sum(v))
    assert r.diff == pytest.approx(np.mean(a) - np.mean(b) - np.mean(c) + np.mean(d))
    assert (r.lo, r.hi, r.df) == pytest.approx((r.diff - half, r.diff + half, df))
    # with no second gap (c, d equal constants) it is Welch's interval of a − b
    w = welch(a, b)
    same = difference_of_differences(a, b, [0.5, 0.5], [0.5, 0.5])
    assert (same.diff, same.lo, same.hi, same.p) == pytest.approx((w.diff, w.lo, w.hi, w.p))
    assert np.isnan(difference_of_differences(a, b, c, [0.9]).lo) and np.isnan(difference_of_differences(a, [], c, d).diff)
