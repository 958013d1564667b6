"""The fair treatment of γ, β, biases and gains (optim.norm_decay, optim.norm_lr_scale) and Fixup (model.init=fixup)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from bnstudy.config import ModelConfig, NormConfig, OptimConfig, RunConfig
from bnstudy.errors import ConfigError
from bnstudy.models import MODELS, FixupBlock, FixupResNet, build_model
from bnstudy.norm import NORMS, norm_modules
from bnstudy.train import train_run
from bnstudy.train.build import OPTIMIZERS, lr_factor, param_groups, split_params, validate

from .test_train import small

RGB = (3, 32, 32)


def resnet20_fixup() -> FixupResNet:
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="resnet", depth=20, width=16, activation="relu", init="fixup"), NormConfig(name="none"), RGB, 10)
    assert isinstance(net, FixupResNet)
    return net


# ---------------------------------------------------------------- which parameters form the group


def _model_cases():
    for model in MODELS:
        for zero in (False, True) if model == "resnet" else (False,):
            yield model, zero


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("model,zero", list(_model_cases()))
def test_the_group_holds_every_gamma_beta_bias_and_gain_and_no_weight(model, zero, norm):
    cfg = ModelConfig(name=model, depth=8 if model == "resnet" else 2, width=8, activation="relu", init="he", zero_init_residual=zero)
    net = build_model(cfg, NormConfig(name=norm), RGB, 10)
    weights, others = split_params(net)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert len(weights) + len(others) == len(list(net.parameters()))
    conv_linear = [m.weight for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert ids(weights) == ids(conv_linear)
    must = [p for _, m in norm_modules(net) for p in m.parameters()]  # every γ and β of the variant, whatever its shape
    must += [p for n, p in net.named_parameters() if n.endswith("bias") or n.endswith("branch_gain")]
    assert ids(must) <= ids(others) and not ids(others) & ids(conv_linear)
    if norm == "affine":  # stored as (1, C) or (1, C, 1, 1): a rule by ndim would miss them
        assert any(p.dim() >= 2 for p in others)


def test_fixup_scalars_and_biases_are_exactly_the_slow_group():
    net = resnet20_fixup()
    groups = param_groups(net, OptimConfig(lr=0.1, weight_decay=5e-4, norm_decay=False, norm_lr_scale=0.1))
    assert [g.get("lr") for g in groups] == [None, pytest.approx(0.01)]
    slow = {n for n, p in net.named_parameters() if any(p is q for q in groups[1]["params"])}
    scalars = {n for n, p in net.named_parameters() if p.dim() == 0}
    assert len(scalars) == 9 * 5 + 2  # per block 4 biases and 1 multiplier; the stem's and the classifier's bias
    assert slow == scalars | {"head.3.bias"}  # and the classifier's own bias: every bias, every scalar, nothing else


def test_defaults_step_every_parameter_alike():
    net = build_model(ModelConfig(name="cnn", depth=2, width=8), NormConfig(name="affine"), RGB, 10)
    params = param_groups(net, OptimConfig(lr=0.1, weight_decay=5e-4))
    opt = torch.optim.SGD(params, lr=0.1, weight_decay=5e-4)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(list(net.parameters()))


@pytest.mark.parametrize("optim", sorted(OPTIMIZERS))
def test_norm_decay_false_leaves_the_group_undecayed_with_every_optimizer(optim):
    net = build_model(ModelConfig(name="resnet", depth=8, width=8, init="he", zero_init_residual=True), NormConfig(name="affine"), RGB, 10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)  # away from 0 and 1, so that decay would move every parameter
    o = OptimConfig(name=optim, lr=0.1, weight_decay=0.1, norm_decay=False, norm_lr_scale=0.5)
    opt = OPTIMIZERS[optim](param_groups(net, o), o)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05] and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    weights, others = split_params(net)
    before = [p.detach().clone() for p in weights + others]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay moves a parameter
    opt.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, weights + others)]
    assert all(moved[: len(weights)]) and not any(moved[len(weights) :])


def test_the_schedule_scales_both_groups_alike():
    net = build_model(ModelConfig(name="mlp", depth=2, width=8), NormConfig(name="affine"), (1, 4, 4), 10)
    cfg = small(optim={"lr": 0.2, "weight_decay": 1e-4, "norm_lr_scale": 0.1}, sched={"name": "cosine"})
    opt = OPTIMIZERS["sgd"](param_groups(net, cfg.optim), cfg.optim)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    for _ in range(7):
        opt.step()
        sched.step()
    fast, slow = (g["lr"] for g in opt.param_groups)
    assert fast == pytest.approx(0.2 * lr_factor(cfg)(7)) and slow == pytest.approx(0.1 * fast)


def test_the_values_are_recorded_in_config_and_summary(tmp_path, tmp_data):
    cfg = small(optim={"weight_decay": 5e-4, "norm_decay": False, "norm_lr_scale": 0.1}, norm={"name": "affine"})
    run = tmp_path / "run"
    train_run(cfg, run)
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed"
    assert (s["factors"]["norm_decay"], s["factors"]["norm_lr_scale"]) == (False, 0.1)
    text = (run / "config.yaml").read_text()
    assert "norm_decay: false" in text and "norm_lr_scale: 0.1" in text


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"optim": {"norm_decay": False}}, "optim.weight_decay=0"),
        ({"optim": {"norm_lr_scale": 0.0}}, "norm_lr_scale must be"),
        ({"optim": {"norm_lr_scale": math.inf}}, "norm_lr_scale must be"),
        ({"model": {"name": "cnn", "init": "fixup"}, "norm": {"name": "none"}}, "model=resnet only"),
        ({"model": {"name": "resnet", "depth": 8, "init": "fixup"}, "norm": {"name": "bn"}}, "computes statistics"),
        ({"model": {"name": "resnet", "depth": 8, "init": "fixup"}, "norm": {"name": "layernorm"}}, "computes statistics"),
        ({"model": {"name": "resnet", "depth": 8, "init": "fixup", "zero_init_residual": True}, "norm": {"name": "none"}}, "zero_init_residual"),
        ({"model": {"name": "resnet", "depth": 8, "branch_gate": "scalar"}}, "zero_init_residual=true"),
        ({"model": {"name": "cnn", "branch_gate": "scalar", "zero_init_residual": True}}, "model=resnet"),
        ({"model": {"name": "resnet", "depth": 8, "branch_gate": "channel", "zero_init_residual": True}}, "branch_gate"),
    ],
)
def test_options_that_cannot_act_are_refused_in_one_line(over, fragment):
    with pytest.raises(ConfigError) as e:
        validate(small(**over))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_the_cli_refuses_fixup_elsewhere_with_exit_2_in_one_line(tmp_path):
    from .conftest import cli

    out = tmp_path / "out"
    r = cli(["data=synthetic", "model=mlp", "model.init=fixup", "norm=none", f"out_dir={out}"], cwd=tmp_path)
    assert r.returncode == 2 and "model.init=fixup" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- Fixup's rules on a built ResNet-20


def test_fixup_rules_hold_on_a_built_resnet20():
    net = resnet20_fixup()
    blocks = net.blocks()
    assert len(blocks) == 9
    factor = 9 ** (-1 / 2)  # L^(-1/(2m-2)) with L = 9 branches of m = 2 convs
    first = torch.cat([b.conv1.weight.flatten() for b in blocks])
    he = torch.cat([b.conv1.weight.flatten() / math.sqrt(2 / b.conv1.weight[0].numel()) for b in blocks])
    assert float(he.detach().std()) == pytest.approx(factor, rel=0.03) and abs(float(first.detach().mean())) < 1e-3
    for b in blocks:
        assert float(b.conv2.weight.abs().max()) == 0.0  # each branch's last conv starts at 0
        assert float(b.scale) == 1.0 and all(float(x.bias) == 0.0 for x in (b.bias1a, b.bias1b, b.bias2a, b.bias2b))
        assert b.conv1.bias is None and b.conv2.bias is None
    head = net.head[-1]
    assert float(head.weight.abs().max()) == 0.0 and float(head.bias.abs().max()) == 0.0
    stem = net.features[0]
    assert float(stem.weight.std()) == pytest.approx(math.sqrt(2 / stem.weight[0].numel()), rel=0.1)
    # the projection shortcuts: He, not rescaled
    for b in blocks:
        if not isinstance(b.shortcut, nn.Identity):
            w = b.shortcut[0].weight
            assert float(w.std()) == pytest.approx(math.sqrt(2 / w[0].numel()), rel=0.15)


def test_fixup_keeps_the_output_scale_at_init():
    net = resnet20_fixup().eval()
    torch.manual_seed(1)
    x = torch.randn(64, *RGB)
    with torch.no_grad():
        h = x
        for m in net.features:  # the same net without its residual branches
            h = m.act2(m.bias2b(m.shortcut(m.bias1a(h)))) if isinstance(m, FixupBlock) else m(h)
        assert torch.equal(net.features(x), h)
        assert 0.1 < float(h.std()) / float(x.std()) < 10
        # the same branches He-initialised throughout, without Fixup's rule, grow the signal with depth
        for b in net.blocks():
            for conv in (b.conv1, b.conv2):
                conv.weight.normal_(0, math.sqrt(2 / conv.weight[0].numel()))
        assert float(net.features(x).std()) > 5 * float(h.std())


def test_fixup_trains(tmp_path, tmp_data):
    cfg = small(
        model={"name": "resnet", "depth": 8, "width": 8, "activation": "relu", "init": "fixup"},
        norm={"name": "none"},
        optim={"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "norm_decay": False, "norm_lr_scale": 0.1},
    )
    run = tmp_path / "run"
    train_run(cfg, run)
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["factors"]["init"] == "fixup"


def test_branch_gate_scalar_keeps_gamma_at_one_and_starts_the_branch_at_zero():
    cfg = ModelConfig(name="resnet", depth=8, width=8, activation="relu", init="he", zero_init_residual=True, branch_gate="scalar")
    net = build_model(cfg, NormConfig(name="affine"), RGB, 10)
    blocks = [m for m in net.features if hasattr(m, "branch_gain")]
    assert blocks and all(b.branch_gain is not None and float(b.branch_gain) == 0.0 for b in blocks)
    assert all(float(b.norm2.weight.min()) == 1.0 for b in blocks)
    default = build_model(ModelConfig(**{**cfg.__dict__, "branch_gate": "norm"}), NormConfig(name="affine"), RGB, 10)
    assert all(b.branch_gain is None and float(b.norm2.weight.abs().max()) == 0.0 for b in default.features if hasattr(b, "branch_gain"))


@pytest.mark.parametrize("model, norm", [({"init": "fixup"}, "none"), ({"init": "he", "zero_init_residual": True}, "none"), ({"init": "he", "zero_init_residual": True, "branch_gate": "scalar"}, "affine")])
def test_the_probes_follow_each_scalar_gate(model, norm, tmp_path, tmp_data):
    import pandas as pd

    cfg = small(
        data={"name": "synthetic", "channels": 3, "size": 8, "train_size": 256, "test_size": 64},
        model={"name": "resnet", "depth": 8, "width": 8, "activation": "relu", **model},
        norm={"name": norm},
        optim={"lr": 0.05},
        probe={"every": 10, "batch_size": 32},
        train={"steps": 20, "batch_size": 32},
    )
    train_run(cfg, tmp_path / "run")
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    gains = m[m.metric.str.fullmatch(r"block\d+/gain")]
    assert sorted(gains.metric.unique()) == ["block1/gain", "block2/gain", "block3/gain"]  # ResNet-8: 3 branches
    start = 1.0 if model["init"] == "fixup" else 0.0
    first = gains[gains.step == gains.step.min()].value
    assert (first - start).abs().max() < 0.5 and gains.step.nunique() == 2
