"""Every config in conf/ and experiments/ composes and runs a few steps on synthetic data."""
from pathlib import Path

import pytest
import torch

from bnstudy.cli import run_job
from bnstudy.runs import read_summary
from bnstudy.train import precision

from .conftest import ROOT, compose

GROUPS = ["data", "model", "norm", "optim", "sched"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
SHRINK = ["train.steps=4", "train.eval_every=2", "train.log_every=2", "train.eval_batch_size=64", "train.progress=off"]


def run_dirs(out: Path) -> list[Path]:
    return [p.parent for p in out.glob("**/summary.json")]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_runs(group, option, tmp_path, tmp_data):
    overrides = [f"{group}={option}", f"out_dir={tmp_path}", *SHRINK]
    if group != "data":
        overrides.append("data=synthetic")
    else:
        overrides += ["data.name=synthetic"]  # the option's other keys still apply
    if group == "data" and option.startswith("cifar"):
        overrides += ["data.channels=3", "data.size=32"]
    cfg = compose(overrides)
    assert run_job(cfg) == "completed"
    (run,) = run_dirs(tmp_path)
    assert read_summary(run)["status"] == "completed"
    assert {"config.yaml", "metrics.csv", "summary.json"} <= {p.name for p in run.iterdir()}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs(name, tmp_path, tmp_data):
    lines = (ROOT / "experiments" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    text = [line for line in lines if line.startswith("#") and not line.startswith("# @")]
    assert text[0].startswith("# bnstudy-train"), "an experiment's first comment is the command that runs it"
    assert text[1].startswith("# Hypothesis"), "an experiment's second comment states its hypothesis"
    cfg = compose([f"experiment={name}"])
    shape = ["data.channels=3", "data.size=32"] if str(cfg.data.name).startswith("cifar") else []
    # synthetic at 512 training and 128 test examples (64 held out where the study validates): each split is still evaluated
    val = ["data.val_size=64"] if cfg.data.val_size else []
    small = ["data.train_size=512", "data.test_size=128"]
    # full-width studies are heavy on a CPU: a small batch and one precise-statistics batch still run every code path
    light = [f"train.batch_size={min(cfg.train.batch_size, 32)}"] + (["train.precise_bn=1"] if cfg.train.precise_bn else [])
    if cfg.train.amp and precision.cpu_bf16() is not None and not torch.cuda.is_available():
        light.append("train.amp=false")  # refused on a CPU that would emulate bf16 (tests/test_precision.py)
    cfg = compose([f"experiment={name}", "data.name=synthetic", *shape, *small, *val, *light, f"out_dir={tmp_path}", *SHRINK])
    assert cfg.study == name
    assert run_job(cfg) == "completed"
    assert len(run_dirs(tmp_path)) == 1


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_swept_values_reach_the_run(name):
    """A value swept by an experiment must not be overwritten by the experiment's own settings."""
    import yaml
    from omegaconf import OmegaConf

    doc = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())
    params = (doc.get("hydra") or {}).get("sweeper", {}).get("params", {})
    for key, values in params.items():
        last = str(values).split(",")[-1].strip()
        cfg = compose([f"experiment={name}", f"{key}={last}"])
        if key in GROUPS:
            assert cfg[key].name == last, f"{name}: {key}={last} is overridden by the experiment"
        else:
            got, want = OmegaConf.select(cfg, key), yaml.safe_load(last)
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                assert float(got) == float(want), f"{name}: {key}={last} lost"  # the schema makes lr=10 a float
            else:
                assert str(got) == str(want), f"{name}: {key}={last} lost"
