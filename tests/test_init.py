"""The fair-baseline options: weight init, pooling, zero-init residuals, precise BN statistics, and run names."""
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from bnstudy.config import ModelConfig, NormConfig, RunConfig, run_name
from bnstudy.errors import ConfigError
from bnstudy.models import build_model
from bnstudy.models.init import INITS, fans, weight_std
from bnstudy.train import train_run
from bnstudy.train.precise_bn import recompute_running_stats, running_stat_layers

from .conftest import ROOT
from .test_train import small

GREY, RGB = (1, 28, 28), (3, 32, 32)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("init", ["lecun", "xavier", "he", "orthogonal"])
@pytest.mark.parametrize("model,act", [("mlp", "sigmoid"), ("mlp", "relu"), ("cnn", "relu"), ("vgg", "tanh"), ("resnet", "relu")])
def test_weight_variance_matches_the_definition(init, model, act):
    torch.manual_seed(0)
    net = build_model(ModelConfig(name=model, depth=8 if model == "resnet" else 3, width=16, activation=act, init=init), NormConfig(name="none"), RGB, 10)
    for w in weights(net):
        n = w.numel()
        want = weight_std(init, w, act) ** 2
        got = float(w.detach().var(correction=0))
        # the sample variance of n normal draws has relative std sqrt(2/n); 5 of those is a safe band
        assert abs(got / want - 1) < 5 * math.sqrt(2 / n) + 1e-6, (init, tuple(w.shape), got, want)
        assert abs(float(w.detach().mean())) < 5 * math.sqrt(want / n) + 1e-6
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            assert float(m.bias.detach().abs().max()) == 0.0


def test_init_definitions():
    w = torch.empty(30, 20, 3, 3)
    assert fans(w) == (180, 270)
    assert weight_std("he", w) == pytest.approx(math.sqrt(2 / 180))
    assert weight_std("lecun", w) == pytest.approx(math.sqrt(1 / 180))
    assert weight_std("xavier", w) == pytest.approx(math.sqrt(2 / 450))
    assert weight_std("orthogonal", torch.empty(10, 40), "relu") == pytest.approx(math.sqrt(2) / math.sqrt(40))
    q = torch.empty(40, 10)
    torch.nn.init.orthogonal_(q)
    assert torch.allclose(q.T @ q, torch.eye(10), atol=1e-5)


@pytest.mark.parametrize("model", ["mlp", "cnn", "vgg", "resnet"])
def test_default_leaves_torch_init_untouched(model):
    cfg = ModelConfig(name=model, depth=8 if model == "resnet" else 3, width=8, activation="relu")
    torch.manual_seed(1)
    a = build_model(cfg, NormConfig(name="bn"), GREY, 10)
    torch.manual_seed(1)
    b = build_model(ModelConfig(**{**cfg.__dict__, "init": "default"}), NormConfig(name="bn"), GREY, 10)
    torch.manual_seed(1)
    c = build_model(ModelConfig(**{**cfg.__dict__, "init": "he"}), NormConfig(name="bn"), GREY, 10)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # torch's own default: kaiming_uniform(a=√5), Var = 1/(3 fan_in)
    w = weights(a)[0]
    assert float(w.detach().var()) == pytest.approx(1 / (3 * fans(w)[0]), rel=0.3)


def test_unknown_init_and_pool_are_one_line_errors():
    with pytest.raises(ConfigError, match="model.init 'glorot'.*he"):
        build_model(ModelConfig(init="glorot"), NormConfig(), GREY, 10)
    with pytest.raises(ConfigError, match="model.pool 'min'.*stride"):
        build_model(ModelConfig(name="cnn", pool="min"), NormConfig(), GREY, 10)


@pytest.mark.parametrize("model", ["cnn", "vgg"])
@pytest.mark.parametrize("pool", ["max", "avg", "stride"])
def test_pool_options(model, pool):
    torch.manual_seed(0)
    cfg = ModelConfig(name=model, depth=3, width=8, activation="relu", pool=pool)
    net = build_model(cfg, NormConfig(name="bn"), RGB, 10)
    base = build_model(ModelConfig(**{**cfg.__dict__, "pool": "max"}), NormConfig(name="bn"), RGB, 10)
    kinds = {type(m) for m in net.modules()}
    assert (nn.MaxPool2d in kinds) == (pool == "max") and (nn.AvgPool2d in kinds) == (pool == "avg")
    strides = [m.stride for m in net.modules() if isinstance(m, nn.Conv2d)]
    halvings = sum(isinstance(m, nn.MaxPool2d) for m in base.modules())
    assert strides.count((2, 2)) == (halvings if pool == "stride" else 0)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in base.parameters())
    # same feature-map size before the head in every mode
    feats = lambda m: m.features(torch.randn(2, *RGB)).shape  # noqa: E731
    assert feats(net) == feats(base)


@pytest.mark.parametrize("norm", ["bn", "affine", "none", "bn_noaffine"])
def test_zero_init_residual_starts_each_block_at_its_shortcut(norm):
    from bnstudy.models import BasicBlock

    torch.manual_seed(0)
    net = build_model(ModelConfig(name="resnet", depth=8, width=8, activation="relu", zero_init_residual=True), NormConfig(name=norm), RGB, 10)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    x = torch.randn(4, 8, 8, 8)
    first = blocks[0]  # identity shortcut: the block is act(x) at start
    first.train()
    assert torch.allclose(first(x), torch.relu(x))
    out = net(torch.randn(4, *RGB))
    out.sum().backward()
    gains = [b.branch_gain for b in blocks if b.branch_gain is not None]
    assert (len(gains) > 0) == (norm in ("none", "bn_noaffine"))
    assert all(g.grad is not None for g in gains)


def test_precise_bn_leaves_training_unchanged(tmp_path, tmp_data):
    # on the CPU: two CUDA runs of a CNN already differ (cuDNN picks its kernels by timing them)
    over = dict(device="cpu", norm={"name": "bn"}, seed=2, optim={"lr": 0.5, "momentum": 0.9}, model={"name": "cnn", "width": 4, "depth": 2, "activation": "relu"})
    a = train_run(small(**over), tmp_path / "a")
    b = train_run(small(**over, train={"steps": 30, "eval_every": 10, "log_every": 10, "progress": "off", "precise_bn": 5}), tmp_path / "b")
    ma, mb = (pd.read_csv(tmp_path / n / "metrics.csv") for n in ("a", "b"))
    key = ["step", "split", "metric", "value"]
    plain = mb[~mb.metric.str.startswith("precise")][key].reset_index(drop=True)
    assert plain.equals(ma[key].reset_index(drop=True))  # train and test rows bit-identical
    precise = mb[mb.metric == "precise_acc"]
    assert sorted(precise.step) == [10, 20, 30]
    assert b["final"]["test/precise_acc"] == pytest.approx(float(precise[precise.step == 30].value.iloc[0]))
    assert a["final"]["test/acc"] == b["final"]["test/acc"]


@pytest.mark.parametrize("norm", ["bn", "bn_center", "bn_scale"])
def test_precise_bn_is_the_mean_of_batch_statistics(norm):
    # bn_center keeps only a running mean, bn_scale only a running variance: each is recomputed alone
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="mlp", depth=1, width=5, activation="relu"), NormConfig(name=norm), (1, 2, 2), 3)
    x = torch.randn(40, 1, 2, 2) * 3 + 1
    (layer,) = running_stat_layers(net)
    assert recompute_running_stats(net, x, batches=4, batch_size=10, seed=7) == 4
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(7))
    h = net.net[1](net.net[0](x[idx]))  # (40, 5): the inputs of the norm
    means = torch.stack([h[i : i + 10].mean(0) for i in range(0, 40, 10)])
    vars_ = torch.stack([h[i : i + 10].var(0) for i in range(0, 40, 10)])
    buffers = set(dict(layer.named_buffers())) - {"num_batches_tracked"}
    assert buffers == {"bn": {"running_mean", "running_var"}, "bn_center": {"running_mean"}, "bn_scale": {"running_var"}}[norm]
    if "running_mean" in buffers:
        assert torch.allclose(layer.running_mean, means.mean(0), atol=1e-5)
    if "running_var" in buffers:
        assert torch.allclose(layer.running_var, vars_.mean(0), atol=1e-5)


@pytest.mark.variants
def test_precise_bn_names_only_variants_with_running_statistics():
    from bnstudy.norm import NORMS

    with_stats = {n for n, v in NORMS.items() if v.running_stats}  # which ones, test_norm_registry.py pins
    for norm in NORMS:
        base = RunConfig.from_dict({"norm": {"name": norm}}).to_dict()
        precise = RunConfig.from_dict({"norm": {"name": norm}, "train": {"precise_bn": 20}}).to_dict()
        assert (run_name(base) != run_name(precise)) == (norm in with_stats), norm
        net = build_model(ModelConfig(), NormConfig(name=norm), GREY, 10)
        assert bool(running_stat_layers(net)) == (norm in with_stats), norm


def test_precise_bn_skips_models_without_running_statistics(tmp_path, tmp_data):
    r = train_run(small(norm={"name": "affine"}, train={"steps": 20, "eval_every": 10, "log_every": 10, "progress": "off", "precise_bn": 3}), tmp_path / "r")
    assert "test/precise_acc" not in r["final"]
    assert "precise_acc" not in set(pd.read_csv(tmp_path / "r" / "metrics.csv").metric)


def committed_runs() -> list:
    """A sample of the committed runs that recorded their command line: the first and the last of each study part."""
    from bnstudy.archive import iter_runs

    by_part: dict[str, list] = {}
    for rec in iter_runs(ROOT / "results"):
        if rec.overrides:
            by_part.setdefault(str(rec.pack.root if rec.packed else rec.dir.parent.parent), []).append(rec)
    return [r for recs in by_part.values() for r in dict.fromkeys([recs[0], recs[-1]])]


@pytest.mark.skipif(not committed_runs(), reason="no committed results in this checkout")
def test_committed_runs_keep_their_folder_names():
    # re-composing a committed run's own command line, with today's config (which has
    # model.init, model.pool, model.zero_init_residual and train.precise_bn), names the same
    # folder, so re-running a committed study skips every run instead of retraining it;
    # checked on two runs per study part (every run's config.yaml names its folder: --check)
    from omegaconf import OmegaConf

    from .conftest import compose

    runs = committed_runs()
    assert len(runs) >= 20
    for rec in runs:
        overrides = rec.overrides
        cfg = compose(overrides)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        assert run_name(plain) == "/".join(rec.rel.split("/")[-2:]), rec.rel
    run = rec.dir
    other = "xavier" if plain["model"]["init"] == "he" else "he"  # a changed key does name another folder
    cfg = OmegaConf.to_container(compose([*overrides, f"model.init={other}"]), resolve=False)
    cfg.pop("hydra", None)
    assert run_name(cfg) != f"{run.parent.name}/{run.name}"
