"""bnstudy-search: a tiny study's search finds a rate per variant, a re-run trains nothing, the pruner stops a
hopeless rate (no folder left), an interrupted trial resumes its rate, and the report's tuned table reads the runs."""
from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("optuna", reason="bnstudy-search needs the search extra: pip install -e '.[search]'")

from bnstudy import search as S  # noqa: E402

from .conftest import ROOT, private_data  # noqa: E402

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "data.val_size=64", "model.width=8",
        "train.batch_size=32", "train.steps=40", "train.eval_every=10", "train.log_every=10", "train.checkpoint_every=40",
        "train.progress=off", "train.threads=1"]  # fmt: skip


@contextlib.contextmanager
def hydra_conf():
    from hydra import initialize_config_dir

    import bnstudy.cli  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield


def trials_csv(out: Path) -> list[dict[str, str]]:
    with open(out / S.TRIALS_CSV) as f:
        return list(csv.DictReader(f))


def summaries(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 4-trial search per variant (bn, affine) of the tiny study."""
    out = tmp_path_factory.mktemp("search")
    args = [*TINY, "norm=bn,affine", "optim.lr=interval(0.01,3)", f"out_dir={out}", "--trials", "3", "--startup", "2"]
    with private_data(tmp_path_factory):
        S.main(args)
        yield out, args


def test_search_finds_a_rate_per_variant_in_ordinary_runs(searched, capsys):
    out, _ = searched
    rows = trials_csv(out)
    assert {r["setting"] for r in rows} == {"norm=bn", "norm=affine"}
    for setting in ("norm=bn", "norm=affine"):
        mine = [r for r in rows if r["setting"] == setting]
        assert len(mine) == 3 and {r["state"] for r in mine} <= {"complete", "pruned"}
        done = [r for r in mine if r["state"] == "complete"]
        assert done, f"{setting}: no trial completed"
        for r in done:
            assert 0.01 <= float(r["lr"]) <= 3 and int(r["steps_trained"]) == 40
            run = out / r["runs"]
            s = json.loads((run / "summary.json").read_text())
            assert s["status"] in ("completed", "diverged") and s["factors"]["lr"] == float(r["lr"])
            assert float(r["val_acc"]) == S.score(s)
    assert "bnstudy-search" in (out / "sweeps.log").read_text()  # the report's "command" line names it


def test_a_rerun_trains_nothing(searched, monkeypatch):
    out, args = searched
    import bnstudy.train.loop as loop

    def no_training(*a, **k):
        raise AssertionError("a finished search trained a run again")

    monkeypatch.setattr(loop, "train_run", no_training)
    before, journal = summaries(out), (out / S.JOURNAL).read_bytes()
    S.main(args)
    assert summaries(out) == before and (out / S.JOURNAL).read_bytes() == journal


def test_the_tuned_table_reads_the_search(searched):
    """The report's tuned table, over the search's runs (rates off any grid), picks each variant's best trial."""
    from bnstudy.analysis import load_metrics, load_runs
    from bnstudy.analysis.aggregate import group_columns, tuned_summary

    out, _ = searched
    runs = load_runs(out)
    assert set(runs["status"]) <= {"completed", "diverged"}  # a pruned trial left nothing a report could list
    tuned, _ = tuned_summary(runs, load_metrics(out, runs), by=group_columns(runs))
    chosen = dict(zip(tuned["norm"], tuned["lr"]))
    for norm in ("bn", "affine"):
        done = [r for r in trials_csv(out) if r["setting"] == f"norm={norm}" and r["state"] == "complete"]
        best = min(done, key=lambda r: (-float(r["val_acc"]), float(r["lr"])))  # ties: the smallest rate, as the table
        assert chosen[norm] == float(best["lr"])


def test_the_pruner_stops_a_hopeless_rate_and_never_trains_it_again(tmp_path, tmp_data):
    """A good rate first, then one too small to learn in the budget: pruned at the first evaluation the pruner reads."""
    opts = S.Options(trials=2, startup=1, warmup=0.0)
    with hydra_conf():
        p = S.plan([*TINY, "norm=bn", "optim.lr=interval(0.0001,1)", f"out_dir={tmp_path}"])
        setting = p.settings[0]
        storage = S._storage(tmp_path)
        study = S._open_study(storage, S.study_name(p, setting), p, setting, opts)
        study.enqueue_trial({"lr": 0.5})
        study.enqueue_trial({"lr": 0.0001})
        S.search_setting(storage, p, setting, opts)
        good, hopeless = study.get_trials()
        assert good.state.name == "COMPLETE" and hopeless.state.name == "PRUNED"
        assert hopeless.user_attrs["steps_trained"] == hopeless.user_attrs["stopped_at"] < 40
        assert not any(tmp_path.glob("*lr0.0001*")), "a pruned trial left a run folder"
        # the same rate asked for again: pruned at once, nothing trained
        study.enqueue_trial({"lr": 0.0001})
        S.search_setting(storage, p, setting, S.Options(trials=3, startup=1, warmup=0.0))
        again = study.get_trials()[-1]
        assert again.state.name == "PRUNED" and again.user_attrs["steps_trained"] == 0
        assert again.user_attrs["same_as"] == hopeless.number


def test_a_killed_search_resumes_the_rate_it_was_training(tmp_path, tmp_data):
    """A trial left running (the process was killed) is asked for again first, so its run resumes, not a new rate."""
    opts = S.Options(trials=1)
    with hydra_conf():
        p = S.plan([*TINY, "norm=bn", "optim.lr=interval(0.01,3)", f"out_dir={tmp_path}"])
        setting = p.settings[0]
        storage = S._storage(tmp_path)
        study = S._open_study(storage, S.study_name(p, setting), p, setting, opts)
        stale = study.ask()
        lr = stale.suggest_float("lr", p.low, p.high, log=True)
        S.search_setting(storage, p, setting, opts)
        states = [t.state.name for t in study.get_trials()]
        assert states == ["FAIL", "COMPLETE"] and study.get_trials()[1].params["lr"] == lr


def test_a_search_started_otherwise_is_refused(tmp_path, tmp_data):
    with hydra_conf():
        p = S.plan([*TINY, "norm=bn", "optim.lr=interval(0.01,3)", f"out_dir={tmp_path}"])
        q = S.plan([*TINY, "norm=bn", "optim.lr=interval(0.01,1)", f"out_dir={tmp_path}"])
        storage = S._storage(tmp_path)
        S._open_study(storage, S.study_name(p, p.settings[0]), p, p.settings[0], S.Options())
        with pytest.raises(S.ConfigError, match="started otherwise .*high 3.0 then, 1.0 now"):
            S._open_study(storage, S.study_name(q, q.settings[0]), q, q.settings[0], S.Options())


def test_the_plan_reads_the_experiments_sweep_and_the_command_line():
    with hydra_conf():
        p = S.plan(["experiment=mnist_tuned", "seed=0"])
        assert (p.low, p.high, p.seeds) == (0.01, 10.0, [0])
        assert [s.label for s in p.settings] == ["norm=bn", "norm=affine", "norm=none", "norm=affine_ddi"]
        assert S.plan(["experiment=mnist_tuned", "norm=bn"]).seeds == [0, 1, 2, 3, 4]
        with pytest.raises(S.ConfigError, match="optim.lr=0.1 is one rate"):
            S.plan(["norm=bn", "optim.lr=0.1"])
        # a trial's run is the run bnstudy-train names from the same overrides (the committed grid's, at a grid rate)
        run = S.run_dir_of(S.run_config(p, p.settings[1], 0.3, 0))
        assert run.parent.name == "mnist-mlp-affine-sgd-lr0.3-bs60-4694e17f"


def test_bad_options_and_a_missing_validation_split_are_one_line(tmp_path, tmp_data, capsys):
    with pytest.raises(SystemExit) as e:
        S.main([*TINY, "norm=bn", "optim.lr=interval(0.01,3)", "data.val_size=0", f"out_dir={tmp_path}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.val_size>0" in err
    with pytest.raises(SystemExit) as e:
        S.main([*TINY, "--trials", "0"])
    assert e.value.code == 2


def test_agreement_with_the_grid():
    from bnstudy.analysis.search import agreement

    grid = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    assert agreement(0.3, 0.3, grid) == (0.3, "same")
    assert agreement(0.5, 0.3, grid) == (0.3, "within a step")
    assert agreement(0.9, 0.3, grid) == (1.0, "within a step")  # nearer the next grid rate, but inside the step
    assert agreement(1.0, 0.3, grid) == (1.0, "no")
    assert agreement(20.0, 10.0, grid) == (10.0, "within a step")  # beyond the last rate: a step as wide as the one below


def test_compare_without_trials_or_matching_grid_runs_is_one_line(tmp_path, capsys):
    grid = ROOT / "results" / "mnist_tuned"  # read only: the committed grid of the tuned MNIST study
    header = ",".join(S.TRIAL_COLUMNS) + "\n"
    cases = {
        "empty": (header, "lists no trial"),  # a search refused at its first trial writes only the header
        "other": (header + "norm=foo,0,complete,0.44,0.967,5000,,x/seed0,norm=foo 1\n", "no trained run of the search's settings (norm=foo)"),
    }
    for name, (text, said) in cases.items():
        out = tmp_path / name
        out.mkdir()
        (out / S.TRIALS_CSV).write_text(text)
        with pytest.raises(SystemExit) as e:
            S.main(["--compare", str(out), str(grid)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and said in err, err
        assert not (out / "search_vs_grid.csv").exists()


def test_compare_reads_a_search_of_one_rate_over_several_seeds(searched, tmp_path, tmp_data):
    grid, _ = searched
    out = tmp_path / "one"
    S.main([*TINY, "norm=bn", "seed=0,1", "optim.lr=interval(0.01,3)", f"out_dir={out}", "--trials", "1"])
    (trial,) = trials_csv(out)
    from bnstudy.analysis.search import comparison

    table, _, _ = comparison(out, grid)
    assert table["search_lr"].tolist() == [float(trial["lr"])]  # the one rate both seeds trained is the search's choice
    assert table["search_val_acc"].tolist() == [pytest.approx(float(trial["val_acc"]))]
