"""Training end to end: the CLI contract, determinism, and short real-data runs."""
import json
import os

import pandas as pd
import pytest
import torch
import yaml

from bnstudy.checks import check_values
from bnstudy.config import OptimConfig, RunConfig, run_name
from bnstudy.errors import ConfigError
from bnstudy.train import train_run
from bnstudy.train.build import OPTIMIZERS

from .conftest import cli, have_real

FAST = ["data=synthetic", "train.steps=30", "train.eval_every=10", "train.log_every=10", "train.progress=off"]


def small(**over) -> RunConfig:
    d = {"data": {"name": "synthetic"}, "train": {"steps": 30, "eval_every": 10, "log_every": 10, "progress": "off"}}
    for k, v in over.items():
        d.setdefault(k, {}).update(v) if isinstance(v, dict) else d.__setitem__(k, v)
    return RunConfig.from_dict(d)


def test_cli_run_writes_the_contract_files(tmp_path, tmp_data):
    r = cli([*FAST, "norm=affine", "model=cnn", "seed=1", f"out_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    (summary_path,) = (tmp_path / "out").glob("*/seed1/summary.json")
    run = summary_path.parent
    assert run.parent.name.startswith("synthetic-cnn-affine-sgd-lr")
    s = json.loads(summary_path.read_text())
    assert s["status"] == "completed" and s["step"] == 30
    assert set(s["final"]) >= {"test/acc", "test/loss", "train/loss"} and "test/acc" in s["best"]
    assert s["params"] > 0 and s["seconds"] > 0
    assert {"data", "model", "norm", "optim", "lr", "batch_size", "steps", "seed", "depth", "width", "activation"} <= set(s["factors"])
    assert (s["factors"]["norm"], s["factors"]["model"], s["factors"]["seed"]) == ("affine", "cnn", 1)
    m = pd.read_csv(run / "metrics.csv")
    assert list(m.columns[:4]) == ["step", "split", "metric", "value"]
    assert set(m.split) == {"train", "test"} and {"loss", "acc", "lr"} <= set(m.metric)
    assert sorted(m[(m.split == "test") & (m.metric == "acc")].step) == [10, 20, 30]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["norm"]["name"] == "affine" and cfg["seed"] == 1 and cfg["train"]["steps"] == 30
    assert (run / ".hydra" / "config.yaml").exists()  # Hydra's own outputs live in the run folder


def test_run_name_is_deterministic_and_seed_is_a_replicate():
    a = RunConfig().to_dict()
    b = RunConfig(seed=3).to_dict()
    c = RunConfig(device="cpu", out_dir="elsewhere").to_dict()
    d = RunConfig.from_dict({"optim": {"lr": 0.1}}).to_dict()
    assert run_name(a) == run_name(RunConfig().to_dict())
    assert run_name(a).split("/")[0] == run_name(b).split("/")[0] and run_name(b).endswith("/seed3")
    assert run_name(a) == run_name(c)  # where a run goes or runs does not change what it is
    assert run_name(a) != run_name(d) and "lr0.1" in run_name(d)


def test_same_seed_same_metrics(tmp_path, tmp_data):
    for name in ("a", "b"):
        train_run(small(norm={"name": "bn"}, seed=4), tmp_path / name)
    a = pd.read_csv(tmp_path / "a" / "metrics.csv")
    b = pd.read_csv(tmp_path / "b" / "metrics.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    train_run(small(norm={"name": "bn"}, seed=5), tmp_path / "c")
    c = pd.read_csv(tmp_path / "c" / "metrics.csv")
    assert not a["value"].equals(c["value"])


def test_schedules_and_adam(tmp_path, tmp_data):
    s = train_run(small(sched={"name": "cosine", "warmup": 5}, optim={"name": "adam", "lr": 0.01}), tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    lrs = m[m.metric == "lr"].value.tolist()
    assert lrs[0] < 0.01 and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert s["status"] == "completed"


@pytest.mark.slow
def test_mnist_mlp_bn_500_steps_beats_90_percent(tmp_path):
    reason = have_real("mnist")
    if reason:
        pytest.skip(reason)
    s = train_run(RunConfig.from_dict({"norm": {"name": "bn"}, "train": {"steps": 500, "eval_every": 250, "progress": "off"}}), tmp_path / "r")
    assert s["status"] == "completed"
    assert s["final"]["test/acc"] > 0.90


@pytest.mark.slow
def test_cifar10_jpeg_cnn_short_run(tmp_path):
    reason = have_real("cifar10_jpeg")
    if reason:
        pytest.skip(reason)
    cfg = RunConfig.from_dict(
        {
            "data": {"name": "cifar10_jpeg", "augment": True},
            "model": {"name": "cnn", "width": 16, "activation": "relu"},
            "optim": {"lr": 0.05, "momentum": 0.9},
            "train": {"steps": 60, "batch_size": 64, "eval_every": 60, "progress": "off"},
        }
    )
    s = train_run(cfg, tmp_path / "r")
    assert s["status"] == "completed" and s["final"]["test/acc"] > 0.15


def test_tensorboard_events_are_optional(tmp_path, tmp_data):
    pytest.importorskip("tensorboard")
    train_run(small(logger={"tensorboard": True}), tmp_path / "tb_on")
    assert list((tmp_path / "tb_on" / "tb").glob("events.out.tfevents.*"))
    train_run(small(), tmp_path / "tb_off")
    assert not (tmp_path / "tb_off" / "tb").exists()


def test_eval_every_zero_turns_evaluation_off(tmp_path, tmp_data):
    s = train_run(small(train={"steps": 30, "eval_every": 0, "log_every": 10, "progress": "off"}), tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert "test" not in set(m.split) and s["final"]["test/acc"] is None and s["status"] == "completed"
    assert set(s["hook_times"]) == {"log", "checkpoint"}


def test_adamw_decays_the_weights_apart_from_the_gradient():
    """adamw shrinks w by lr * weight_decay * w outside the adaptive step; adam puts weight_decay * w into it."""
    def one_step(name: str) -> torch.Tensor:
        w = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
        opt = OPTIMIZERS[name]([w], OptimConfig(name=name, lr=0.1, weight_decay=0.5))
        w.grad = torch.zeros_like(w)  # no loss gradient: only the decay moves w
        opt.step()
        return w.detach()

    assert torch.allclose(one_step("adamw"), torch.tensor([2.0, -4.0]) * (1 - 0.1 * 0.5))
    assert torch.allclose(one_step("adam"), torch.tensor([1.9, -3.9]), atol=1e-6)  # normalised: a step of lr per weight
    with pytest.raises(ConfigError, match="optim.betas"):
        check_values(RunConfig.from_dict({"optim": {"name": "adamw", "betas": [0.9]}}))
