"""The default thread policy (bnstudy.threads) and the step FLOP count it reads (bnstudy.flops)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bnstudy import threads
from bnstudy.config import ModelConfig, NormConfig, RunConfig
from bnstudy.flops import step_flops


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    """Every test leaves torch's thread count and the launcher share as it found them."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    threads.share_cores(1)


def _cfg(model: str = "mlp", width: int = 100, depth: int = 3, data: str = "mnist", threads_: int = 0, bs: int = 60) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.model.width, cfg.model.depth = model, width, depth
    cfg.data.name, cfg.train.threads, cfg.train.batch_size = data, threads_, bs
    return cfg


def test_mlp_step_flops_are_the_matrix_products():
    # forward 2*B*MACs with MACs = 784*100 + 100*100 + 100*100 + 100*10 = 99,400; backward: weight
    # gradients of every layer (the same again) and input gradients of all but the first layer
    b = 60
    fwd = 2 * b * 99_400
    assert step_flops(ModelConfig(), NormConfig(), (1, 28, 28), 10, b) == 2 * fwd + 2 * b * (10_000 + 10_000 + 1_000)


def test_counting_draws_no_random_numbers_and_survives_data_dependent_layers():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    f = step_flops(ModelConfig(name="cnn", width=8), NormConfig(name="bn_frozen"), (1, 28, 28), 10, 128)
    assert torch.equal(torch.rand(3), expected)
    assert f == step_flops(ModelConfig(name="cnn", width=8), NormConfig(name="bn"), (1, 28, 28), 10, 128)


def test_explicit_threads_are_set_exactly():
    d = threads.apply(_cfg(threads_=1))
    assert (d.threads, torch.get_num_threads()) == (1, 1)
    assert d.why.startswith("train.threads=1") and threads.current() == d


def test_small_models_take_one_thread_large_ones_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: (4, "test"))
    small = threads.decide(_cfg())
    assert small.threads == 1 and "too small to split" in small.why
    big = threads.decide(_cfg("resnet", 16, 20, "cifar10", bs=128))
    assert big.threads == 4 and "4 cores" in big.why
    threads.share_cores(3)
    shared = threads.decide(_cfg("resnet", 16, 20, "cifar10", bs=128))
    assert shared.threads == 1 and "shared by 3 parallel jobs" in shared.why
    threads.share_cores(1, cpus=2)
    assert threads.decide(_cfg("resnet", 16, 20, "cifar10", bs=128)).threads == 2


def test_cgroup_quota_caps_the_cores(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpus(tmp_path) == 0.5
    assert threads.cgroup_cpus(tmp_path / "absent") is None
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 0.5)
    cores, why = threads.available_cores()
    assert cores == 1 and (why.startswith("cgroup CPU quota 0.5") or len(os.sched_getaffinity(0)) == 1)


@pytest.mark.parametrize(
    "code, env, expected",
    [
        ("import bnstudy", {}, "PASSIVE"),  # set before torch loads
        ("import bnstudy", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the user's choice stands
        ("import torch, bnstudy", {}, None),  # too late to matter: left alone, and said so
    ],
)
def test_openmp_wait_policy(code, env, expected):
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}, os; from bnstudy import threads; print(os.environ.get('OMP_WAIT_POLICY'), '|', threads._wait_note)"],
        env={**base, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    value, note = out.stdout.strip().split(" | ")
    assert value == str(expected), out.stderr
    assert ("actively" in note) == (expected is None)
