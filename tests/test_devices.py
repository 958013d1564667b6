"""Several jobs per GPU: device assignment by job number, cuda:N, the run's identity, and a shared-device sweep."""
import json
import os
import time

import pytest
import torch
from omegaconf import OmegaConf

from bnstudy import devices
from bnstudy.config import run_name
from bnstudy.errors import ConfigError

from .conftest import ROOT, cli, compose

FAST = ["data=synthetic", "train.progress=off", "train.eval_every=10", "train.log_every=10"]


def test_jobs_share_one_gpu_and_spread_over_several():
    assert [devices.assign("cuda", j, 1) for j in range(4)] == ["cuda:0"] * 4
    assert [devices.assign("auto", j, 2) for j in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert [devices.assign("cuda", j, 3) for j in (0, 4, 8)] == ["cuda:0", "cuda:1", "cuda:2"]
    assert devices.assign("cuda", None, 2) == "cuda:0"  # a single run outside a multirun
    assert devices.assign("cuda:1", 0, 2) == "cuda:1"  # an explicit device is kept
    assert devices.assign("auto", 3, 0) == "cpu" and devices.assign("cpu", 3, 2) == "cpu"


def test_device_values_are_checked():
    assert devices.resolve("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or cuda:N"):
        devices.resolve("gpu0")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0"):
            with pytest.raises(ConfigError, match="no CUDA device"):
                devices.resolve(name)
    else:
        with pytest.raises(ConfigError, match=r"CUDA device\(s\)"):
            devices.resolve(f"cuda:{torch.cuda.device_count()}")


def test_device_is_not_part_of_the_run_name():
    names = {run_name(OmegaConf.to_container(compose(["data=synthetic", f"device={d}"]), resolve=True)) for d in ("cpu", "cuda", "cuda:1", "auto")}
    assert len(names) == 1


def test_joblib_gpu_launcher_composes():
    from hydra import compose as hc, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        full = hc(config_name="config", overrides=["hydra/launcher=joblib_gpu", "hydra.launcher.n_jobs=3"], return_hydra_config=True)
    assert "JoblibLauncher" in full.hydra.launcher._target_ and full.hydra.launcher.n_jobs == 3


def test_deadline_value_is_checked(monkeypatch):
    monkeypatch.setenv(devices.DEADLINE_ENV, "soon")
    with pytest.raises(ConfigError, match="Unix time"):
        devices.deadline()
    monkeypatch.setenv(devices.DEADLINE_ENV, str(time.time() - 1))
    assert devices.out_of_time()
    monkeypatch.delenv(devices.DEADLINE_ENV)
    assert devices.deadline() is None and not devices.out_of_time()
