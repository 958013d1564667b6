"""A variant defined only in this file, registered at test time, gets its probe rows, its colour and
precise BN with no edit anywhere else: every part asks the variant's registry entry what it is."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnstudy.analysis import plots
from bnstudy.config import RunConfig, run_name
from bnstudy.models import build_model
from bnstudy.norm import NORMS, Variant, register
from bnstudy.train import train_run
from bnstudy.train.precise_bn import running_stat_layers
from bnstudy.train.probes import scale_invariant

NAME = "test_newcomer"


class Newcomer(nn.Module):
    """y = γ (x − μ_B) / sqrt(σ_B² + ε) + β with running estimates, as a newcomer would write BN."""

    def __init__(self, num_features: int, dim: int, cfg) -> None:
        super().__init__()
        self.eps, self.momentum = cfg.eps, cfg.momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, self.momentum, self.eps)


@pytest.fixture
def declare(tmp_path, monkeypatch):
    """``declare(**what_it_is)`` registers :class:`Newcomer` under NAME; the registry is restored afterwards."""
    monkeypatch.setenv("BNSTUDY_DATA_DIR", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lambda **what: register(NAME, shift=True, **what)(Newcomer)
    NORMS.pop(NAME, None)
    torch.set_num_threads(threads)


def own() -> dict[str, Variant]:
    """The variants bnstudy itself registers (a plugin's, or a test's, are left out)."""
    return {n: v for n, v in NORMS.items() if getattr(v.build, "__module__", "").startswith("bnstudy.")}


@pytest.mark.variants
def test_the_study_variants_declare_what_they_are():
    """The one test that names the committed studies' variants, on purpose: their results were computed with these
    declarations and drawn in these colours, so a change to any of them must be deliberate. Every other test derives
    what it expects from the registry, so a new variant (bnstudy's or a plugin's) needs no edit there."""
    declared = {name: (v.centers, v.scales, v.running_stats, v.shift, v.color) for name, v in own().items()}
    committed = {
        "bn": ("batch", "batch", True, True, "#1f77b4"), "affine": (None, None, False, True, "#d62728"),
        "none": (None, None, False, False, "#555555"), "bn_noaffine": ("batch", "batch", True, False, "#17becf"),
        "bn_center": ("batch", None, True, True, "#ff9896"), "bn_scale": (None, "batch", True, True, "#0b3d91"),
        "affine_ddi": (None, None, False, True, "#ff7f0e"), "bn_nograd": ("batch", "batch", True, True, "#9467bd"),
        "bn_frozen": ("batch", "batch", True, True, "#8c564b"), "noisy_bn": ("batch", "batch", True, True, "#2ca02c"),
        "layernorm": ("example", "example", False, True, "#e377c2"),
        "groupnorm": ("example", "example", False, True, "#bcbd22"),
    }  # fmt: skip
    assert {n: declared.get(n) for n in committed} == committed  # a variant added since needs no edit here
    assert list(declared)[: len(committed)] == list(committed)  # figures list them first, in this order


@pytest.mark.variants
def test_declarations_read_back():
    for v in NORMS.values():
        assert v.standardizes == (v.centers if v.centers == v.scales else None)
        assert v.cancels_bias == (v.centers == "batch")
    for bad in ({"standardizes": "channel"}, {"centers": "channel"}, {"scales": "feature"}, {"color": "blue"},
                {"standardizes": "batch", "scales": "batch"}):  # fmt: skip
        with pytest.raises(ValueError):
            register("bad", shift=True, **bad)
    assert "bad" not in NORMS


def cfg() -> RunConfig:
    """40 steps on a tiny synthetic set, probes and precise BN at steps 20 and 40."""
    return RunConfig.from_dict(
        {
            "data": {"name": "synthetic", "channels": 1, "size": 8, "train_size": 256, "test_size": 96},
            "model": {"name": "mlp", "depth": 2, "width": 8},
            "norm": {"name": NAME},
            "optim": {"name": "sgd", "lr": 0.05},
            "train": {"steps": 40, "batch_size": 32, "log_every": 20, "eval_every": 20, "eval_batch_size": 96,
                      "precise_bn": 2, "progress": "off", "threads": 1},
            "probe": {"every": 20, "batch_size": 64},
            "device": "cpu",
        }
    )  # fmt: skip


def metrics(tmp_path, name: str) -> pd.DataFrame:
    train_run(cfg(), tmp_path / name)
    return pd.read_csv(tmp_path / name / "metrics.csv")


def test_a_variant_declared_bn_like_gets_probes_colour_and_precise_bn(declare, tmp_path):
    declare(running_stats=True, standardizes="batch", color="#0a0b0c")
    m = metrics(tmp_path, "bn_like")
    probe = set(m.loc[m["split"] == "probe", "metric"])
    assert {"layer1/eff_lr", "layer2/eff_lr", "layer1/weight_norm", "layer1/pre/std"} <= probe
    precise = m[m["metric"] == "precise_acc"]
    assert list(precise["step"]) == [20, 40] and set(precise["split"]) == {"test"}
    assert plots.color(NAME) == "#0a0b0c" and plots.palette()[NAME] == "#0a0b0c"
    assert plots.variant_order([NAME, "none", "bn"]) == ["bn", "none", NAME]
    # precise BN acts on it, so it is part of the run's identity, as for bn
    plain = cfg()
    plain.train.precise_bn = 0
    assert run_name(plain.to_dict()) != run_name(cfg().to_dict())


def test_the_declarations_not_the_module_decide(declare, tmp_path):
    """The same module declared as not standardizing and without running statistics: no eff_lr, no precise BN,
    though it has ``running_mean`` and ``momentum`` (duck typing would have picked it)."""
    declare()
    net = build_model(cfg().model, cfg().norm, (1, 8, 8), 10)
    norm = next(m for m in net.modules() if isinstance(m, Newcomer))
    assert running_stat_layers(net) == [] and not scale_invariant(norm, nn.Linear(2, 2, bias=False))
    m = metrics(tmp_path, "plain")
    assert not m["metric"].str.endswith("eff_lr").any() and not (m["metric"] == "precise_acc").any()
    assert (m["metric"] == "layer1/weight_norm").any()  # the rest of the probes, as for every variant
    assert plots.color(NAME) == plots.color(NAME) and NAME not in plots.palette()  # a stable fallback colour
    plain = cfg()
    plain.train.precise_bn = 0
    assert run_name(plain.to_dict()) == run_name(cfg().to_dict())


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("what", [{"centers": "batch"}, {"scales": "batch"}, {"scales": "example"}], ids=str)
def test_centering_and_scaling_are_declared_apart(declare, what, bias):
    """The effective rate needs scaling, and centering over the batch or no feeding bias: declared, not looked up by name."""
    declare(running_stats=True, **what)
    net = build_model(cfg().model, cfg().norm, (1, 8, 8), 10)
    norm = next(m for m in net.modules() if isinstance(m, Newcomer))
    assert running_stat_layers(net)  # either half of BN keeps running statistics for precise BN
    expected = "scales" in what and not bias
    assert scale_invariant(norm, nn.Linear(2, 2, bias=bias)) == expected


def test_a_wrong_declaration_fails_the_contract_with_a_line_that_says_which(declare):
    """The variant-wide tests check each declaration against what the module does: a newcomer learns the contract
    from the failure. Newcomer standardizes over the batch and keeps running statistics."""
    from .test_norm_variants import test_centers_and_scales_are_what_the_output_ignores as centers_and_scales
    from .test_norm_variants import test_running_statistics_are_declared_exactly_when_training_updates_them as running

    declare(running_stats=True, centers="batch")  # it scales too
    with pytest.raises(AssertionError, match="declares scales=None; a scale per batch group leaves its output"):
        centers_and_scales(NAME, 1)
    declare(standardizes="batch")  # running statistics left out
    with pytest.raises(AssertionError, match="declares running_stats=False, but training updates running_mean"):
        running(NAME, 2)
    declare(running_stats=True, standardizes="batch")
    centers_and_scales(NAME, 2)
    running(NAME, 1)
