"""The default evaluation grid: a tenth of the budget, so every curve has at least 10 test points.

train.eval_every defaults to null, which resolves to ``steps // 10`` in the run's config. The run is
named by the interval it resolves to, as its config.yaml records it; committed runs recorded whole
intervals (every experiment sets its own), so their folder names are unchanged.
"""
import copy

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from bnstudy.archive import iter_runs
from bnstudy.cli import run_job
from bnstudy.config import RunConfig, default_eval_every, run_name

from .conftest import ROOT, compose

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=8", "train.batch_size=32",
        "train.log_every=5", "train.progress=off", "train.threads=1"]  # fmt: skip


def grid(steps: int, every: int) -> list[int]:
    """The steps the loop evaluates at: every ``every`` steps, plus the last."""
    return sorted({*range(every, steps + 1, every), steps})


def named(overrides: list[str]) -> str:
    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    cfg.pop("hydra", None)
    return run_name(cfg)


@pytest.mark.parametrize("steps", [10, 37, 205])
def test_a_default_run_logs_at_least_10_test_points(steps, tmp_path, tmp_data):
    cfg = compose([*TINY, f"train.steps={steps}", f"out_dir={tmp_path}"])
    assert cfg.train.eval_every is None  # nothing set it: the default grid
    assert run_job(cfg) == "completed"
    (summary,) = tmp_path.glob("**/summary.json")
    run = summary.parent
    m = pd.read_csv(run / "metrics.csv")
    tested = sorted(m[(m.split == "test") & (m.metric == "acc")].step)
    assert len(tested) >= 10 and tested == grid(steps, steps // 10)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["train"]["eval_every"] == steps // 10  # the interval itself, as committed runs recorded theirs
    assert run_name(recorded) == f"{run.parent.name}/{run.name}"
    # the same interval given on the command line names the same folder: the re-run trains nothing
    before = summary.read_bytes()
    again = compose([*TINY, f"train.steps={steps}", f"train.eval_every={steps // 10}", f"out_dir={tmp_path}"])
    assert run_job(again) == "completed"
    assert summary.read_bytes() == before and list(tmp_path.glob("**/summary.json")) == [summary]


def test_the_default_grid_has_10_points_for_every_budget():
    for steps in [*range(10, 5001), 11700, 50000, 71000, 10**6 + 7]:
        every = RunConfig.from_dict({"train": {"steps": steps}}).train.eval_every
        assert every == default_eval_every(steps) and len(grid(steps, every)) >= 10, steps
    assert RunConfig.from_dict({"train": {"steps": 4}}).train.eval_every == 1  # shorter than 10 steps: every step
    assert RunConfig().train.eval_every == 500  # the 5,000-step default budget: the interval the fixed default had


def test_a_set_interval_is_kept():
    assert RunConfig.from_dict({"train": {"steps": 2000, "eval_every": 0}}).train.eval_every == 0  # evaluation off
    assert RunConfig.from_dict({"train": {"steps": 2000, "eval_every": 700}}).train.eval_every == 700
    cfg = compose(["experiment=quickstart"])
    assert (cfg.train.steps, cfg.train.eval_every) == (3000, 250)  # not 300: the experiment's own grid


def test_default_runs_keep_the_names_of_the_fixed_default():
    # the fixed default was 500: a default 5,000-step run names the folder it named before
    assert named([]) == named(["train.eval_every=500"])
    assert named(["train.steps=2000"]) == named(["train.steps=2000", "train.eval_every=200"])
    assert named(["train.steps=2000"]) != named(["train.steps=2000", "train.eval_every=500"])


def test_committed_runs_recorded_their_interval_and_keep_their_names():
    runs = list(iter_runs(ROOT / "results"))
    if not runs:
        pytest.skip("no committed results in this checkout")
    tenth = 0
    for rec in runs:
        cfg = copy.deepcopy(rec.config)  # a pack may share parts of its records' configs
        every, steps = cfg["train"]["eval_every"], cfg["train"]["steps"]
        assert isinstance(every, int) and not isinstance(every, bool), rec.rel
        name = "/".join(rec.rel.split("/")[-2:])
        assert run_name(cfg) == name, rec.rel
        if every == default_eval_every(steps):  # a run on today's default grid: the default names it too
            tenth += 1
            cfg["train"]["eval_every"] = None
            assert run_name(cfg) == name, rec.rel
    assert tenth > 0
