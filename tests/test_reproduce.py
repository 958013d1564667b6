"""`bnstudy-runs --reproduce`: re-trained runs match their committed numbers, and a changed number is caught."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from bnstudy import reproduce
from bnstudy.config import RunConfig, run_name
from bnstudy.runs_cli import runs
from bnstudy.train import train_run

from .conftest import private_data
from .test_provenance import call
from .test_report import tiny


def _train(root: Path, cfg: RunConfig) -> Path:
    run = root / run_name(cfg.to_dict())
    train_run(cfg, run)
    return run


def _cosine(steps: int = 40) -> RunConfig:
    cfg = tiny("bn", seed=3)
    cfg.sched = dataclasses.replace(cfg.sched, name="cosine", warmup=5)
    cfg.train.steps = steps
    return cfg


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished tiny runs: plain BN, and BN with probes and precise statistics (every kind of row)."""
    root = tmp_path_factory.mktemp("study")
    with private_data(tmp_path_factory):
        _train(root, tiny("bn", seed=0))
        rich = tiny("bn", seed=1)
        rich.probe.every, rich.train.precise_bn = 10, 2
        _train(root, rich)
    return root


def test_a_trained_study_reproduces_bit_identically(study, tmp_data):
    code, out, err = call(runs, [str(study), "--reproduce", "2", "--steps", "20"])
    assert code == 0, out + err
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("bit-identical") for line in lines), out
    assert "2 bit-identical, 0 within tolerance, 0 different, 0 not checked" in err
    rich = next(r for r in reproduce.committed_runs(study) if r.config["probe"]["every"] == 10)
    logged = rich.metrics()
    kinds = set(logged.loc[logged["step"] <= 20, "metric"])
    assert {"loss", "lr", "acc", "precise_acc"} <= kinds and len(kinds) > 5, kinds  # probe rows compared too


def _reseal(run: Path) -> None:
    """Record a finished run's edited files in its summary's checksums, as if the run had written them: a test
    that needs a changed value or config to reach the re-training, past the damage check."""
    import json

    from bnstudy.runs import checksums, write_json

    s = json.loads((run / "summary.json").read_text())
    s["checksums"] = checksums(run)
    write_json(run / "summary.json", s)


def test_a_changed_value_is_reported_with_its_row(study, tmp_path, tmp_data):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    run = next(p.parent for p in copy.rglob("metrics.csv") if "seed0" in p.parent.name)
    df = pd.read_csv(run / "metrics.csv", dtype=str, keep_default_na=False)
    i = df.index[(df["step"] == "10") & (df["split"] == "test") & (df["metric"] == "loss")][0]
    df.loc[i, "value"] = repr(float(df.loc[i, "value"]) * 1.001)
    df.to_csv(run / "metrics.csv", index=False)
    _reseal(run)  # an edited file is damage, which --reproduce names without re-training (tests/test_faults.py)
    code, out, err = call(runs, [str(copy), "--reproduce", "2", "--steps", "20"])
    assert code == 1
    line = next(line for line in out.splitlines() if "seed0" in line)
    assert line.startswith("different") and "first differing row: step 10 test/loss committed" in line, line
    assert "1 bit-identical, 0 within tolerance, 1 different" in err


def test_a_cosine_run_stopped_early_keeps_its_schedule(tmp_path, tmp_data):
    run = _train(tmp_path, _cosine(40))
    code, out, err = call(runs, [str(tmp_path), "--reproduce", "1", "--steps", "20"])
    assert code == 0 and out.startswith("bit-identical") and "20 steps" in out, out + err
    # the check can fail: a run whose train.steps were shortened to 20 logs other rates
    short = _train(tmp_path / "short", _cosine(20))
    committed, shortened = (reproduce._rows(reproduce.read_metrics(r / "metrics.csv"), 20) for r in (run, short))
    verdict, detail = reproduce.compare(reproduce.read_metrics(run / "metrics.csv"), reproduce.read_metrics(short / "metrics.csv"), 20, {})
    assert committed[(10, "train", "lr")] != shortened[(10, "train", "lr")] and verdict == "different", detail


def test_the_same_seed_picks_the_same_finished_runs():
    def rec(i: int, status: str = "completed") -> SimpleNamespace:
        return SimpleNamespace(rel=f"run{i:02d}/seed0", dir=Path("."), config={}, summary={"status": status})

    recs = [rec(i) for i in range(20)] + [rec(20, "failed"), rec(21, "running"), rec(22, "diverged")]
    picks = [[r.rel for r in reproduce.sample(recs, 5, seed)] for seed in (0, 0, 1)]
    assert picks[0] == picks[1] and len(set(picks[0])) == 5 and picks[0] != picks[2]
    assert picks[0] == [r.rel for r in reproduce.sample(recs[::-1], 5, 0)]  # the order found does not matter
    every = {r.rel for r in reproduce.sample(recs, 99, 0)}
    assert len(every) == 21 and "run20/seed0" not in every and "run22/seed0" in every


def test_too_few_steps_to_log_train_to_the_first_logged_step(study, tmp_data):
    code, out, _ = call(runs, [str(study), "--reproduce", "1", "--steps", "2"])
    assert code == 0 and "5 steps (its first logged step)" in out, out  # tiny logs every 5 steps


def test_a_config_that_cannot_be_rebuilt_is_reported(study, tmp_path, tmp_data):
    import shutil

    import yaml

    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    unknown, missing = sorted(p.parent for p in copy.rglob("config.yaml") if ".hydra" not in p.parts)
    conf = yaml.safe_load((unknown / "config.yaml").read_text())
    conf["train"]["no_such_key"] = 1
    (unknown / "config.yaml").write_text(yaml.safe_dump(conf))
    conf = yaml.safe_load((missing / "config.yaml").read_text())
    del conf["model"]["width"]  # today's default width (100) is not the 16 that named the run
    (missing / "config.yaml").write_text(yaml.safe_dump(conf))
    # a config edited after the run no longer names its folder: --check calls it damaged, so --reproduce names it
    # and re-trains nothing (exit 1) ...
    code, out, err = call(runs, [str(copy), "--reproduce", "2"])
    assert code == 1
    lines = sorted(out.splitlines())
    assert len(lines) == 2 and all(line.startswith("damaged") and "config.yaml names" in line for line in lines), out
    assert "2 damaged" in err
    # ... and where a config does name its run but today's code cannot rebuild it (a key since removed, a default
    # since changed), the rebuild says why, and the run is "not checked"
    from bnstudy.archive import iter_runs

    why = {rec.dir: reproduce.rebuild(rec) for rec in iter_runs(copy)}
    assert "unknown config key 'train.no_such_key'" in why[unknown]
    assert "not the recorded" in why[missing] and "missing or changed keys" in why[missing]


def test_tolerance_one_example_and_relative(tmp_path):
    base = pd.DataFrame(
        {"step": [10, 10, 10], "split": ["train", "test", "test"], "metric": ["loss", "loss", "acc"], "value": [1.0, 2.0, 0.5], "seconds": [0.0] * 3}
    )

    def verdict(loss: float, acc: float) -> str:
        fresh = base.assign(value=[loss, 2.0, acc])
        return reproduce.compare(base, fresh, 10, {"test": 100})[0]

    assert verdict(1.0, 0.5) == "bit-identical"
    assert verdict(1.0 + 1e-7, 0.51) == "within tolerance"  # one example in 100
    assert verdict(1.0, 0.52) == "different"
    assert verdict(1.0 + 1e-4, 0.5) == "different"
    assert verdict(float("nan"), 0.5) == "different"


@pytest.mark.parametrize("args", [["--reproduce", "0"], ["--reproduce", "1", "--steps", "0"]])
def test_bad_numbers_exit_2(study, args):
    code, _, err = call(runs, [str(study), *args])
    assert code == 2 and err.startswith("error:"), err


def test_a_folder_without_finished_runs_exits_2(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"status": "running"}))
    code, _, err = call(runs, [str(tmp_path), "--reproduce", "1"])
    assert code == 2 and "no finished runs" in err


def test_a_child_process_retrains_the_same_numbers(tmp_path, tmp_data):
    cfg = tiny("bn", seed=4)
    here, sizes = reproduce.retrain(cfg, 10, tmp_path / "here")
    child, child_sizes = reproduce._retrain_in_child(cfg, 10, tmp_path / "child", {})  # e.g. under AVX2_ENV
    assert reproduce.compare(here, child, 10, sizes)[0] == "bit-identical" and child_sizes == sizes == {"test": 128}
    first_avx512 = {"from_step": 0, "cpu_capability": "AVX512"}
    assert reproduce._may_be_avx2({"provenance": {"cpu_capability": "AVX512", "segments": [first_avx512]}}) is False
    first_avx2 = {"from_step": 0, "cpu_capability": "AVX2"}
    resumed = {"provenance": {"cpu_capability": "AVX512", "segments": [first_avx2, {**first_avx512, "from_step": 300}]}}
    avx512_here = torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert reproduce._may_be_avx2(resumed) is avx512_here  # its first steps ran on AVX2
    # no segments: the summary names only the machine that finished it, which may have resumed it
    assert reproduce._may_be_avx2({"provenance": {"cpu_capability": "AVX512"}}) is avx512_here


def test_rows_only_the_rerun_logs_judge_nothing_but_a_missing_row_does():
    base = pd.DataFrame({"step": [10, 10], "split": ["train", "test"], "metric": ["loss", "loss"], "value": [1.0, 2.0], "seconds": [0.0] * 2})
    more = pd.concat([base, base.iloc[:1].assign(split="probe", metric="layer1/new")])
    assert reproduce.compare(base, more, 10, {}) == ("bit-identical", "2 values (and 1 row the committed run did not log)")
    verdict, detail = reproduce.compare(more, base, 10, {})
    assert verdict == "different" and "step 10 probe/layer1/new" in detail
