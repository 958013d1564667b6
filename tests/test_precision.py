"""train.amp / train.channels_last on the CPU: bf16 autocast where the CPU computes bf16, refused where it would emulate it,
and what a run records of the precision and memory format it computed in."""
from __future__ import annotations

import json

import pytest
import torch

from bnstudy.config import RunConfig, run_name
from bnstudy.errors import ConfigError
from bnstudy.train import precision, train_run

from .conftest import cli

NATIVE = precision.cpu_bf16() is None
TINY = [
    "data=synthetic", "data.channels=3", "data.size=8", "data.train_size=64", "data.test_size=32", "model=cnn",
    "model.width=4", "train.steps=4", "train.batch_size=16", "train.eval_every=2", "train.log_every=2", "train.threads=1",
]  # fmt: skip


def _cfg(**train) -> RunConfig:
    cfg = RunConfig.from_dict({"data": {"name": "synthetic", "channels": 3, "size": 8, "train_size": 64, "test_size": 32},
                               "model": {"name": "cnn", "width": 4}, "device": "cpu", "probe": {"every": 2},
                               "train": {"steps": 4, "batch_size": 16, "eval_every": 2, "log_every": 2, "precise_bn": 2,
                                         "threads": 1, "progress": "off", **train}})
    return cfg


BF16 = pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16")


@pytest.mark.parametrize(
    "amp,channels_last", [pytest.param(True, True, marks=BF16), pytest.param(True, False, marks=BF16), (False, True), (False, False)]
)
def test_a_run_records_the_precision_and_memory_format_it_computed_in(tmp_path, amp, channels_last):
    seen = []
    real = precision.autocast

    def spy(cfg, device):
        ctx = real(cfg, device)
        seen.append(type(ctx).__name__)
        return ctx

    mp = pytest.MonkeyPatch()
    mp.setattr(precision, "autocast", spy)
    try:
        result = train_run(_cfg(amp=amp, channels_last=channels_last), tmp_path / "run")
    finally:
        mp.undo()
    prov = json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"]
    assert result["status"] == "completed"
    assert prov["precision"] == ("bf16 autocast" if amp else "fp32")
    assert prov["memory_format"] == ("channels_last" if channels_last else "contiguous")
    # training steps, precise BN and the probes all asked for the context; under amp each one was autocast
    assert len(seen) >= 4 + 2 + 2 and set(seen) == {"autocast" if amp else "nullcontext"}


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16")
def test_bf16_autocast_computes_in_bf16_on_the_cpu():
    model = torch.nn.Linear(8, 4)
    with precision.autocast(_cfg(amp=True), torch.device("cpu")):
        assert model(torch.randn(2, 8)).dtype == torch.bfloat16
    with precision.autocast(_cfg(amp=False), torch.device("cpu")):
        assert model(torch.randn(2, 8)).dtype == torch.float32


def test_an_mlp_records_the_contiguous_format_it_keeps():
    cfg = RunConfig.from_dict({"train": {"channels_last": True, "amp": True}})
    assert precision.record(cfg) == {"precision": "bf16 autocast", "memory_format": "contiguous"}


def test_amp_is_refused_where_the_cpu_would_emulate_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: "this CPU has neither AVX-512 BF16 nor AMX")
    with pytest.raises(ConfigError, match=r"^train.amp=true asks for bf16 autocast, but this CPU has neither"):
        precision.check(_cfg(amp=True), torch.device("cpu"))
    precision.check(_cfg(amp=False), torch.device("cpu"))  # fp32 needs nothing


def test_channels_last_is_refused_for_a_resnet_narrower_than_8_on_the_cpu(tmp_path):
    # torch's CPU weight gradient of a 1x1 stride-2 NHWC convolution over 2-7 input channels crashes (a segfault,
    # seen on an AVX2 CPU); the refusal is one line, exit 2, before any run file exists
    r = cli(["data=synthetic", "data.channels=3", "data.size=8", "data.train_size=64", "data.test_size=32", "model=resnet",
             "model.depth=8", "model.width=4", "train.channels_last=true", "train.steps=2", "train.threads=1",
             f"out_dir={tmp_path / 'out'}"], tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.width=4" in lines[0] and "drop train.channels_last=true" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("summary.json"))
    cfg = RunConfig.from_dict({"model": {"name": "resnet", "depth": 8, "width": 8}, "train": {"channels_last": True}})
    precision.check(cfg, torch.device("cpu"))  # width 8 and wider train
    precision.check(RunConfig.from_dict({"model": {"name": "resnet", "depth": 8, "width": 4}}), torch.device("cpu"))


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with native bf16, to show that AVX2 kernels take it away")
def test_amp_on_avx2_kernels_is_one_line_exit_2_and_leaves_nothing(tmp_path):
    # the same CPU with torch's AVX2 kernels emulates bf16 (measured: 21 against 377 img/s for fp32 on ResNet-20)
    r = cli([*TINY, "train.amp=true", f"out_dir={tmp_path / 'out'}"], tmp_path, env={"ATEN_CPU_CAPABILITY": "avx2"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.amp=true" in lines[0] and "ATEN_CPU_CAPABILITY" in lines[0] and "drop train.amp" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("summary.json"))


def test_amp_and_channels_last_keep_committed_folder_names():
    # the keys existed before they acted on a CPU; no committed run set amp, so every committed name is unchanged
    # (tests/test_init.py re-derives them all), and amp=true names another run than amp=false
    base = {"data": {"name": "mnist"}, "optim": {"lr": 0.01}, "train": {"batch_size": 60}}
    plain = RunConfig.from_dict(base).to_dict()
    amp = RunConfig.from_dict({**base, "train": {"batch_size": 60, "amp": True}}).to_dict()
    assert run_name(plain) != run_name(amp)


def test_no_run_trained_before_cpu_bf16_set_amp():
    # train.amp acted on CUDA only before runs recorded their precision: had a run on a CPU set it, it would have
    # trained in fp32 under a name that now means bf16. None did, so every earlier name still means what it trained
    from bnstudy.archive import iter_runs

    from .conftest import ROOT

    runs = list(iter_runs(ROOT / "results"))
    before = [r for r in runs if "precision" not in ((r.summary or {}).get("provenance") or {})]
    assert len(before) >= 1200 and all(r.config for r in before)
    assert [r.rel for r in before if r.config.get("train", {}).get("amp")] == []
    after = [r for r in runs if r not in before and r.summary.get("device", "cpu").startswith("cpu")]
    assert all(r.summary["provenance"]["precision"] == ("bf16 autocast" if r.config["train"]["amp"] else "fp32") for r in after)
