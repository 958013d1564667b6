"""No silent config keys: every key that is part of a run's name acts on that run, or the run is refused.

The test walks RunConfig's tree. For each key of a run's identity, over a small data x model x norm x optimizer
matrix, it trains the run for 3 steps with the key at another value and compares every logged number with the
run at the default. A key that renames the run but changes no number is the trap the issue reported
(``data.train_size=1000`` on MNIST: identical metrics under two names).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import pytest
import torch

from bnstudy import data as data_lib
from bnstudy.config import NON_IDENTITY, RunConfig, run_name
from bnstudy.errors import ConfigError
from bnstudy.train import train_run

# the options of each group are picked by their YAML; these keys name the option itself
OPTION_NAMES = {"data.name", "model.name", "norm.name", "optim.name", "sched.name"}
# a value that makes each key act within 3 steps, where "the default + 1" would not
OTHER = {
    "model.activation": "tanh", "model.init": "he", "model.pool": "avg", "model.branch_gate": "scalar",
    "optim.betas": (0.5, 0.9), "sched.milestones": (0.3, 0.6), "sched.gamma": 0.5, "sched.warmup": 2,
    "norm.freeze_after": 1, "norm.eps": 0.5, "norm.momentum": 0.9, "norm.groups": 2, "train.diverge_loss": 1e-3,
    "train.steps": 4, "train.eval_every": 1, "train.log_every": 2, "train.batch_size": 8, "data.val_size": 32,
    "data.train_size": 100, "data.augment": True, "data.normalize": False, "optim.lr": 0.7, "optim.momentum": 0.9,
    "optim.weight_decay": 0.5, "optim.nesterov": True, "probe.every": 1, "probe.landscape": True, "probe.batch_size": 16,
    "train.precise_bn": 1, "model.zero_init_residual": True, "model.width": 6,
}  # fmt: skip
# Keys in a run's name since the first studies that say how a run executes, not what it computes: renaming them
# would rename every committed run. Each is asserted to still change no number, so a change to one shows here.
EXECUTION = {
    "train.eval_batch_size": "examples per evaluation batch (memory): the same numbers",
    "train.channels_last": "the memory layout of conv activations: the same numbers on the CPU",
    "train.amp": "bf16 autocast: refused on a CPU without native bf16, else acts",
}
# Still silently inert where their variant or optimizer does not use them (to be refused or left out of the name;
# a sweep over variants sets them for all, so refusing would stop it). Only these may be silent; a new one fails.
KNOWN = {
    "norm.eps", "norm.momentum", "norm.freeze_after", "norm.noise_mean_max", "norm.noise_std_max", "norm.groups",
    "optim.betas", "optim.momentum", "optim.nesterov", "train.precise_bn", "probe.batch_size", "probe.landscape", "model.activation",
}  # fmt: skip

BASE = {
    "model": {"depth": 2, "width": 8, "activation": "relu"},
    "optim": {"lr": 0.05},
    "train": {"steps": 3, "batch_size": 16, "eval_every": 3, "log_every": 1, "eval_batch_size": 64, "progress": "off",
              "threads": 1, "checkpoint_every": 100},
    "device": "cpu",
}  # fmt: skip
MATRIX = [
    {"data": "synthetic", "model": "mlp", "norm": "bn", "optim": "sgd"},
    {"data": "mnist", "model": "cnn", "norm": "affine", "optim": "adam"},
    {"data": "synthetic", "model": "resnet", "norm": "groupnorm", "optim": "sgd"},
    {"data": "mnist", "model": "mlp", "norm": "bn_frozen", "optim": "sgd"},
]


def leaves(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of a config dataclass, dotted."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out += leaves(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) else [prefix + f.name]
    return out


def config(combo: dict[str, str], key: str | None = None, value: Any = None) -> RunConfig:
    d: dict[str, Any] = {g: dict(BASE.get(g, {})) for g in ("data", "model", "norm", "optim", "train")}
    d["device"] = BASE["device"]
    for g, name in combo.items():
        d[g]["name"] = name
    if combo["model"] == "resnet":
        d["model"]["depth"] = 8
    if combo["data"] == "synthetic":
        d["data"].update(channels=1, size=8, train_size=256, test_size=64)
    if key is not None:
        group, leaf = key.split(".", 1) if "." in key else (None, key)
        (d.setdefault(group, {}) if group else d)[leaf] = value
    return RunConfig.from_dict(d)


def other(key: str, default: Any) -> Any:
    if key in OTHER:
        return OTHER[key]
    return (not default) if isinstance(default, bool) else default + 1 if isinstance(default, int) else default * 2


@pytest.fixture
def fake_mnist(monkeypatch, tmp_path):
    """MNIST as 600 training and 100 test images of seeded noise (the real files are not needed to see a key act)."""
    real = data_lib.load_raw
    g = torch.Generator().manual_seed(0)
    fake = (torch.randint(0, 256, (600, 1, 28, 28), generator=g, dtype=torch.uint8), torch.randint(0, 10, (600,), generator=g),
            torch.randint(0, 256, (100, 1, 28, 28), generator=g, dtype=torch.uint8), torch.randint(0, 10, (100,), generator=g))  # fmt: skip
    monkeypatch.setattr(data_lib, "load_raw", lambda cfg: fake if cfg.name == "mnist" else real(cfg))
    monkeypatch.setattr(data_lib, "_LOADED", {})
    monkeypatch.setenv("BNSTUDY_DATA_DIR", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def numbers(cfg: RunConfig, where) -> pd.DataFrame | str:
    """Every logged (step, split, metric, value) of the run, or the refusal's message."""
    try:
        train_run(cfg, where)
    except ConfigError as e:
        return f"refused: {e}"
    df = pd.read_csv(where / "metrics.csv")
    return df[["step", "split", "metric", "value"]].reset_index(drop=True)


@pytest.mark.parametrize("combo", MATRIX, ids=lambda c: "-".join(c.values()))
def test_no_key_of_a_runs_name_is_silently_inert(combo, fake_mnist, tmp_path):
    base = numbers(config(combo), tmp_path / "base")
    assert not isinstance(base, str), base
    name = run_name(config(combo).to_dict())
    silent, execution = set(), set()
    for key in leaves(RunConfig):
        top = key.split(".")[0]
        if key in OPTION_NAMES or key in NON_IDENTITY or top in NON_IDENTITY:
            continue
        default = dataclasses.asdict(config(combo))
        for part in key.split("."):
            default = default[part]
        cfg = config(combo, key, other(key, default))
        if run_name(cfg.to_dict()) == name:
            continue  # left out of the name where it cannot act (train.precise_bn on affine, sched.milestones, ...)
        got = numbers(cfg, tmp_path / key)
        if isinstance(got, str) or not got.equals(base):
            continue  # refused, or it acts
        (execution if key in EXECUTION else silent).add(key)
    assert execution <= set(EXECUTION)
    assert silent <= KNOWN, f"keys that rename a {'-'.join(combo.values())} run and change no number: {sorted(silent - KNOWN)}"


def test_data_train_size_is_a_seeded_subset_of_every_dataset(fake_mnist):
    cfg = config(MATRIX[1], "data.train_size", 100).data
    cfg.val_size = 50
    d = data_lib.load(cfg)
    assert d.train_x.shape[0] == 100 and d.val_x.shape[0] == 50 and data_lib.spec(cfg).train_size == 150
    again = data_lib._assemble(cfg, torch.device("cpu"))
    assert torch.equal(d.train_x, again.train_x)  # the same subset for every run
    whole = config(MATRIX[1]).data
    assert data_lib.load(whole).train_x.shape[0] == 600  # the default keeps every example
    with pytest.raises(ConfigError, match="must be from 1 to the 59950 training examples mnist has after data.val_size"):
        from bnstudy.checks import check_values

        check_values(config(MATRIX[1], "data", {"name": "mnist", "train_size": 60000, "val_size": 50}))
