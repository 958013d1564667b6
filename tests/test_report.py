"""``bnstudy-report`` end to end on a tiny real sweep (trained here on synthetic data) and on a single run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnstudy.analysis.report import main
from bnstudy.config import RunConfig
from bnstudy.train import train_run

from .conftest import private_data

NORMS = ("bn", "affine", "none")


def tiny(norm: str = "bn", seed: int = 0, study: str = "tiny") -> RunConfig:
    """~30 steps of a small MLP on synthetic data: enough for curves, fast on two CPU cores."""
    return RunConfig.from_dict(
        {
            "data": {"name": "synthetic", "train_size": 256, "test_size": 128},
            "model": {"name": "mlp", "depth": 2, "width": 16},
            "norm": {"name": norm},
            "optim": {"lr": 0.5},
            "train": {"steps": 30, "batch_size": 32, "eval_every": 10, "log_every": 5, "progress": "off", "threads": 1},
            "seed": seed,
            "device": "cpu",
            "study": study,
        }
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    with private_data(tmp_path_factory):
        for norm in NORMS:
            for seed in (0, 1):
                train_run(tiny(norm, seed), root / f"synthetic-mlp-{norm}" / f"seed{seed}")
    # what Hydra leaves at the top of a sweep folder (abridged)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - norm=bn,affine,none\n    - seed=0,1\n    - data=synthetic\n  job:\n    name: train\n"
    )
    return root


def test_report_on_a_sweep(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out), "--svg"])
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    text = (out / "report.md").read_text()
    assert "bnstudy-train -m norm=bn,affine,none seed=0,1 data=synthetic" in text
    assert "**norm** (affine, bn, none)" in text and "seeds: 0, 1" in text and "device: cpu" in text
    assert "30 steps at batch size 32" in text and "6 run(s)" in text
    for name in ("test_acc_vs_step", "train_loss_vs_step", "test_acc_vs_seconds", "train_loss_vs_seconds"):
        assert f"](figures/{name}.png)" in text
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert "sensitivity" not in text  # only the variant varies
    main([str(sweep), "--out", str(out)])  # PNG + PDF, the default: the SVGs and their links go
    capsys.readouterr()
    assert not list((out / "figures").glob("*.svg")) and "svg)" not in (out / "report.md").read_text()
    assert "(vector: [figures/test_acc_vs_step.pdf](figures/test_acc_vs_step.pdf))" in (out / "report.md").read_text()
    assert (out / "figures" / "test_acc_vs_step.png").stat().st_size > 1000
    assert "init=default" in text and "pool=max" in text  # every run's init among the fixed factors
    assert "### Differences vs `bn`" in text and "| affine | 2 vs 2 |" in text and "Holm-adjusted over the 2 comparison(s)" in text
    assert "Unavailable: the study runs one lr (lr=0.5)" in text and not (out / "tuned.csv").exists()
    diffs = pd.read_csv(out / "differences.csv")
    assert set(diffs["table"]) == {"shared"} and set(diffs["reference"]) == {"bn"}
    assert sorted(diffs[diffs["metric"] == "final_test_acc"]["norm"]) == ["affine", "none"]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["norm"]) == sorted(NORMS)
    assert (summary["runs"] == 2).all() and summary["final_test_acc"].between(0, 1).all()
    assert {"final_test_acc_lo", "final_test_acc_hi", "reached", "steps_to_target", "seconds_to_target", "diverged", "params", "ms_per_step"} <= set(summary.columns)
    assert not (sweep / "report.md").exists()  # --out respected


def test_report_on_a_single_run_with_target(sweep: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    shutil.copytree(sweep / "synthetic-mlp-bn" / "seed0", one)
    main([str(one), "--target", "0.2"])  # default OUT is DIR
    text = (one / "report.md").read_text()
    assert "factors swept: none (one configuration)" in text
    assert "test accuracy ≥ 0.2 (from --target)" in text
    assert (one / "figures" / "test_acc_vs_step.png").stat().st_size > 1000
    summary = pd.read_csv(one / "summary.csv")
    assert len(summary) == 1 and summary.loc[0, "target"] == 0.2 and summary.loc[0, "runs"] == 1


def test_report_reference_option(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main([str(sweep), "--out", str(tmp_path / "ref"), "--reference", "none"])
    diffs = pd.read_csv(tmp_path / "ref" / "differences.csv")
    assert set(diffs["reference"]) == {"none"} and set(diffs["norm"]) == {"bn", "affine"}
    assert "### Differences vs `none`" in (tmp_path / "ref" / "report.md").read_text()
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--out", str(tmp_path / "bad"), "--reference", "layernorm"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: no run used norm=layernorm; give --reference one of: affine, bn, none"
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_report_tuned_table_from_validation(tmp_path: Path) -> None:
    from tests.test_analysis import make_lr_sweep

    root = make_lr_sweep(tmp_path / "sweep")
    main([str(root), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Tuned per variant" in text and "never used to choose" in text
    # norm | lr (chosen) | rates tried | val acc at chosen lr | runs | final test acc
    assert "| bn | 1 | 2 | 0.96 | 3 | 0.9400 ± 0.0248 |" in text
    assert "| affine | 0.1 | 3 | 0.86 | 3 | 0.9300 ± 0.0248 |" in text
    assert "### Differences vs `bn`, each at its chosen rate" in text
    tuned = pd.read_csv(tmp_path / "out" / "tuned.csv").set_index("norm")
    assert tuned.loc["affine", "lr"] == 0.1 and tuned.loc["affine", "steps_to_target"] == 10
    diffs = pd.read_csv(tmp_path / "out" / "differences.csv")
    t = diffs[(diffs["table"] == "tuned") & (diffs["metric"] == "final_test_acc")].iloc[0]
    assert (t["norm"], t["lr"], t["ref_lr"]) == ("affine", 0.1, 1.0) and t["diff"] == pytest.approx(-0.01)
    shared = diffs[diffs["table"] == "shared"]
    assert sorted(shared[shared["metric"] == "final_test_acc"]["lr"]) == [0.1, 1.0]  # no bn at 3.0 ...
    assert "Not compared (no finished `bn` runs in the same setting): affine, lr=3." in text  # ... and the report says so
    # the same folder without a validation split: the tuned table goes, and so does the stale tuned.csv
    for summary in root.glob("*/seed*/summary.json"):
        s = json.loads(summary.read_text())
        s["final"].pop("val/acc", None)
        summary.write_text(json.dumps(s))
    main([str(root), "--out", str(tmp_path / "out")])
    assert "Unavailable: no run has a validation split" in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "tuned.csv").exists()


def test_report_with_validation_and_precise_statistics(tmp_path: Path) -> None:
    """Runs trained here with data.val_size and train.precise_bn: the report shows precise accuracy and tunes lr."""
    root = tmp_path / "runs"
    mp = pytest.MonkeyPatch()
    mp.setenv("BNSTUDY_DATA_DIR", str(tmp_path / "data"))
    try:
        for norm in ("bn", "affine"):
            for lr in (0.1, 0.5):
                for seed in (0, 1):
                    cfg = tiny(norm, seed)
                    cfg.optim.lr, cfg.data.val_size, cfg.train.precise_bn = lr, 64, 2
                    train_run(cfg, root / f"synthetic-mlp-{norm}-lr{lr}" / f"seed{seed}")
    finally:
        mp.undo()
    main([str(root), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "precise test acc (±95% CI)" in text and "Final val acc" in text
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index(["norm", "lr"])
    assert summary.loc[("bn", 0.5), "final_test_precise_acc"] > 0.1  # bn has running statistics to recompute
    # affine has no running statistics: its precise accuracy is its accuracy
    assert (summary["final_test_precise_acc"].loc["affine"] == summary["final_test_acc"].loc["affine"]).all()
    assert summary["final_val_acc"].between(0, 1).all()
    tuned = pd.read_csv(tmp_path / "out" / "tuned.csv")
    assert sorted(tuned["norm"]) == ["affine", "bn"] and set(tuned["lr"]) <= {0.1, 0.5} and (tuned["rates"] == 2).all()


def test_report_lists_diverged_and_failed_runs(sweep: Path, tmp_path: Path) -> None:
    import json

    from bnstudy.runs import checksums, write_json

    root = tmp_path / "mixed"
    shutil.copytree(sweep, root)
    run = root / "synthetic-mlp-none" / "seed1"
    s = json.loads((run / "summary.json").read_text())
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if ",train,loss," in line)  # as a diverged run ends: the loss that stopped it
    lines[last] = ",".join([*lines[last].split(",")[:3], "1000000000.0", lines[last].split(",")[4]])
    (run / "metrics.csv").write_text("".join(lines))
    final = {**s["final"], "train/loss": 1e9}
    write_json(run / "summary.json", {**s, "status": "diverged", "diverged_at": 12, "final": final, "checksums": checksums(run)})
    run = root / "synthetic-mlp-affine" / "seed1"
    failed = {k: v for k, v in s.items() if k != "checksums"}  # a failed run's summary has none
    (run / "summary.json").write_text(json.dumps({**failed, "status": "failed", "error": "error.txt"}))
    (run / "error.txt").write_text("Traceback ...")
    main([str(root)])
    text = (root / "report.md").read_text()
    assert "| synthetic-mlp-none/seed1 | diverged | 30 | 12 |" in text
    assert "| synthetic-mlp-affine/seed1 | failed |" in text and "error.txt" in text


def test_report_without_runs_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no runs under") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing")])
    assert e.value.code == 2


MECHANISM_FIGURES = ("unit_percentiles_bn", "unit_percentiles_affine", "landscape", "effective_step", "weight_norm", "effective_lr")


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bn and affine at two rates, two seeds, trained here with every probe on (landscape included)."""
    root = tmp_path_factory.mktemp("probed")
    with private_data(tmp_path_factory):
        for norm in ("bn", "affine"):
            for lr in (0.1, 0.5):
                for seed in (0, 1):
                    cfg = tiny(norm, seed)
                    cfg.optim.lr, cfg.probe.every, cfg.probe.batch_size, cfg.probe.landscape = lr, 10, 64, True
                    train_run(cfg, root / f"synthetic-mlp-{norm}-lr{lr}" / f"seed{seed}")
    return root


def test_report_draws_the_mechanism_figures_when_probed(probed: Path, sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    main([str(probed), "--out", str(out)])
    text = (out / "report.md").read_text()
    for name in ("activation_percentiles", *MECHANISM_FIGURES):
        assert f"](figures/{name}.png)" in text, name
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert "### Single-unit activation-input percentiles, bn (Ioffe & Szegedy 2015, Fig. 1b,c)" in text
    assert "### Loss landscape along the gradient (Santurkar et al. 2018, Fig. 4)" in text
    assert "Sensitivity to unit" not in text and "Sensitivity to landscape" not in text
    # the per-unit figures sit right after the pooled one
    order = [line for line in text.splitlines() if line.startswith("![")]
    i = next(k for k, line in enumerate(order) if "activation_percentiles" in line)
    assert "unit_percentiles_bn" in order[i + 1] and "unit_percentiles_affine" in order[i + 2]
    # unprobed runs: none of them
    plain = tmp_path / "plain"
    main([str(sweep), "--out", str(plain)])
    assert not any(f"figures/{name}.png" in (plain / "report.md").read_text() for name in MECHANISM_FIGURES)


def test_mechanism_figures_plot_the_seed_means(probed: Path) -> None:
    from bnstudy.analysis import load_metrics, load_runs
    from bnstudy.analysis import plots

    runs = load_runs(probed)
    metrics = load_metrics(probed, runs)
    assert plots.probe_layers(metrics) == ["layer1", "layer2"]  # per-unit rows are not layers of their own
    assert plots.unit_layers(metrics) == ["layer2"] and plots.weight_layers(metrics, "eff_lr") == ["layer1", "layer2"]

    def panels(fig) -> list:
        return [ax for ax in fig.axes if ax.get_visible()]

    step = plots.weight_figure(runs, metrics, "eff_step")
    assert [ax.get_title() for ax in panels(step)] == ["bn", "affine"]  # one panel per variant, lr on the lines
    bn = panels(step)[0]
    assert len(bn.get_lines()) == 2 and bn.get_yscale() == "log"
    p = metrics[(metrics["metric"] == "layer2/eff_step") & (metrics["norm"] == "bn") & (metrics["lr"] == 0.5)]
    want = p.groupby("step")["value"].mean()
    assert sorted(want.index) == [20, 30]  # none at the first probe: no earlier weights
    line = bn.get_lines()[1]  # rates in increasing order
    assert list(line.get_xdata()) == [20, 30] and np.allclose(line.get_ydata(), want.to_numpy())
    eff_lr = plots.weight_figure(runs, metrics, "eff_lr")
    assert [ax.get_title() for ax in panels(eff_lr)] == ["bn"]  # affine is not scale-invariant: no rows
    land = plots.landscape_figure(runs, metrics)
    assert len(panels(land)) == 3 * 2  # three quantities x two rates
    unit = plots.unit_figure(runs, metrics, "bn")
    assert [ax.get_title() for ax in panels(unit)][:4] == [f"unit {u} — lr=0.1" for u in range(4)]
    assert len(panels(unit)) == 8 and len(panels(unit)[0].get_lines()) == 3 * 2  # 15/50/85th percentiles x 2 seeds
    assert plots.unit_figure(runs, metrics, "none") is None
    no_probes = metrics[metrics["split"] != "probe"]
    assert all(f(runs, no_probes) is None for f in (plots.landscape_figure, plots.weight_figure))


def test_freeze_after_splits_only_bn_frozen(tmp_path: Path) -> None:
    """freeze_after is a factor of bn_frozen runs only: bn joins every freeze_after panel, its seeds stay one group."""
    from bnstudy.analysis import load_metrics, load_runs, summary_table
    from bnstudy.analysis import plots
    from bnstudy.config import factors
    from tests.test_analysis import write_run

    assert factors(RunConfig.from_dict({"norm": {"name": "bn", "freeze_after": 100}}))["freeze_after"] is None
    assert factors(RunConfig.from_dict({"norm": {"name": "bn_frozen", "freeze_after": 100}}))["freeze_after"] == 100
    root = tmp_path / "frozen"
    for seed in (0, 1):
        write_run(root / "reference", "bn", seed, [0.5, 0.8, 0.9])
        for after in (100, 1000):
            write_run(root / f"after{after}", "bn_frozen", seed, [0.5, 0.7, 0.8], extra_factors={"freeze_after": after})
    runs = load_runs(root)
    metrics = load_metrics(root, runs)
    summary = summary_table(runs, metrics)
    assert sorted(zip(summary["norm"], summary["freeze_after"].fillna(0))) == [("bn", 0), ("bn_frozen", 100), ("bn_frozen", 1000)]
    assert (summary["runs"] == 2).all()
    panels = [ax for ax in plots.accuracy_figure(runs, metrics).axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["freeze_after=100", "freeze_after=1000"]
    curves = [[line for line in ax.get_lines() if line.get_label() != "_freeze"] for ax in panels]
    assert [len(c) for c in curves] == [2, 2]  # bn_frozen and the bn reference in each
    marks = [[line.get_xdata()[0] for line in ax.get_lines() if line.get_label() == "_freeze"] for ax in panels]
    assert marks == [[100], [1000]]  # where each panel's runs froze


def test_late_probe_table_averages_the_second_half(probed: Path, tmp_path: Path) -> None:
    from bnstudy.analysis import load_metrics, load_runs
    from bnstudy.analysis.probe_tables import late_probe_table, late_probes

    runs = load_runs(probed)
    metrics = load_metrics(probed, runs)
    late = late_probes(runs, metrics).set_index("run")
    run = runs[(runs["norm"] == "bn") & (runs["lr"] == 0.5) & (runs["seed"] == 0)]["run"].iloc[0]
    m = metrics[metrics["run"] == run]
    beta = m[(m["metric"] == "landscape/beta_smooth") & (m["step"] > 15)]["value"]
    assert late.loc[run, "landscape/beta_smooth"] == pytest.approx(beta.mean())  # steps 20 and 30 of 30
    eff = m[m["metric"].str.fullmatch(r"layer\d+/eff_step") & (m["step"] > 15)]
    assert late.loc[run, "eff_step"] == pytest.approx(eff.groupby("step")["value"].mean().mean())
    assert pd.isna(late.loc[runs[runs["norm"] == "affine"]["run"].iloc[0], "eff_lr"])  # not scale-invariant
    table = late_probe_table(runs, metrics, ["norm", "lr"]).set_index(["norm", "lr"])
    assert table.loc[("bn", 0.5), "runs"] == 2
    out = tmp_path / "r"
    main([str(probed), "--out", str(out), "--no-svg"])
    text = (out / "report.md").read_text()
    assert "## Landscape and weight probes, second half of training" in text and (out / "late_probes.csv").exists()
    assert "| affine | 0.5 | β-smoothness |" in text  # the difference vs bn
