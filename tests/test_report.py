"""``bnstudy-report`` end to end on a tiny real sweep (trained here on synthetic data) and on a single run."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bnstudy.analysis.report import main
from bnstudy.config import RunConfig
from bnstudy.train import train_run

NORMS = ("bn", "affine", "none")


def tiny(norm: str, seed: int) -> RunConfig:
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
            "study": "tiny",
        }
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("BNSTUDY_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    try:
        for norm in NORMS:
            for seed in (0, 1):
                train_run(tiny(norm, seed), root / f"synthetic-mlp-{norm}" / f"seed{seed}")
    finally:
        mp.undo()
    # what Hydra leaves at the top of a sweep folder (abridged)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - norm=bn,affine,none\n    - seed=0,1\n    - data=synthetic\n  job:\n    name: train\n"
    )
    return root


def test_report_on_a_sweep(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])
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


def test_report_lists_diverged_and_failed_runs(sweep: Path, tmp_path: Path) -> None:
    import json

    root = tmp_path / "mixed"
    shutil.copytree(sweep, root)
    run = root / "synthetic-mlp-none" / "seed1"
    s = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**s, "status": "diverged", "diverged_at": 12}))
    run = root / "synthetic-mlp-affine" / "seed1"
    (run / "summary.json").write_text(json.dumps({**s, "status": "failed", "error": "error.txt"}))
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
