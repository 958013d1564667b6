"""Probes: the documented metrics exist and are sane, and probing never changes training."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bnstudy import data as data_lib
from bnstudy.config import NormConfig, RunConfig
from bnstudy.models import build_model
from bnstudy.norm import NORMS, make_norm, needs_bias, norm_modules
from bnstudy.runs import MetricsLog
from bnstudy.train import config_hooks, probes, train_run
from bnstudy.train.build import OPTIMIZERS, Batches
from bnstudy.train.state import Hook, State

STATS = [f"{side}/{s}" for side in ("pre", "post") for s in probes.STAT_NAMES]
LANDSCAPE = ["landscape/loss_range", "landscape/grad_change", "landscape/beta_smooth"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Nothing written into the project; one thread (tiny tensors, shared CPUs: more threads only contend)."""
    monkeypatch.setenv("BNSTUDY_DATA_DIR", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cfg(
    model: str = "mlp", norm: str = "bn", probe_every: int = 20, landscape: bool = False, **norm_kw
) -> RunConfig:
    """A run of 40 steps on a tiny synthetic RGB set; augmentation on, so any use of the global RNG shows."""
    return RunConfig.from_dict(
        {
            "data": {"name": "synthetic", "channels": 3, "size": 8, "train_size": 256, "test_size": 96, "augment": True},
            "model": {"name": model, "depth": 2, "width": 8},
            "norm": {"name": norm, **norm_kw},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {
                "steps": 40,
                "batch_size": 32,
                "log_every": 20,
                "eval_every": 20,
                "checkpoint_every": 20,
                "eval_batch_size": 96,
                "progress": "off",
                "threads": 1,
            },
            "probe": {"every": probe_every, "batch_size": 64, "landscape": landscape},
            "device": "cpu",
        }
    )


def run(cfg: RunConfig, run_dir: Path) -> pd.DataFrame:
    """Train ``cfg`` as a notebook would (the config alone switches the probes on); return its metrics.csv."""
    train_run(cfg, run_dir)
    return pd.read_csv(run_dir / "metrics.csv")


def test_no_hook_when_off():
    assert "probe" not in [h.name for h in config_hooks(small_cfg(probe_every=0))]
    assert [h.name for h in config_hooks(small_cfg(probe_every=20))].count("probe") == 1


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", ["bn", "affine", "none"])
def test_probe_metrics(tmp_path, model, norm):
    cfg = small_cfg(model, norm, landscape=True)
    df = run(cfg, tmp_path / "run")
    probe = df[df.split == "probe"]
    assert sorted(probe.step.unique()) == [20, 40]
    assert probe.value.map(math.isfinite).all()
    n_layers = cfg.model.depth
    for step in (20, 40):
        at = probe[probe.step == step].set_index("metric").value
        expected = [f"layer{i}/{m}" for i in range(1, n_layers + 1) for m in [*STATS, "sat_frac", "grad_norm"]]
        expected += LANDSCAPE
        if model == "cnn":  # one 2x2 max-pool between its two stages
            expected += [f"pool1/{s}" for s in probes.STAT_NAMES]
            assert at["pool1/p15"] >= 0  # max over post-activation (sigmoid) values
        if norm != "none":
            expected += [f"layer{i}/{p}/{s}" for i in range(1, n_layers + 1) for p in ("gamma", "beta") for s in ("mean", "std")]
        weights = ["weight_norm"] + (["eff_step"] if step > 20 else []) + (["eff_lr"] if norm == "bn" else [])
        expected += [f"layer{i}/{m}" for i in range(1, n_layers + 1) for m in weights]
        expected += [f"layer{n_layers}/unit{u}/{side}/p{q}" for u in probes.UNITS for side in ("pre", "post") for q in (15, 50, 85)]
        assert sorted(at.index) == sorted(expected)
        for u in probes.UNITS:
            for side in ("pre", "post"):
                p15, p50, p85 = (at[f"layer{n_layers}/unit{u}/{side}/p{q}"] for q in (15, 50, 85))
                assert p15 <= p50 <= p85
        if norm == "none":  # y = x
            assert at[f"layer{n_layers}/unit0/pre/p50"] == at[f"layer{n_layers}/unit0/post/p50"]
        assert not any(m.startswith(f"layer{n_layers + 1}/") for m in at.index)
        for i in range(1, n_layers + 1):
            for side in ("pre", "post"):
                p15, p50, p85 = (at[f"layer{i}/{side}/p{q}"] for q in (15, 50, 85))
                assert p15 <= p50 <= p85
                assert at[f"layer{i}/{side}/std"] > 0
            assert 0 <= at[f"layer{i}/sat_frac"] <= 1
            assert at[f"layer{i}/grad_norm"] > 0
            if norm == "none":  # y = x: the two sides are the same tensor
                for s in probes.STAT_NAMES:
                    assert at[f"layer{i}/pre/{s}"] == at[f"layer{i}/post/{s}"]
        assert at["landscape/loss_range"] >= 0
        assert at["landscape/beta_smooth"] > 0


@pytest.mark.parametrize("landscape", [False, True])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_probes_do_not_change_training(tmp_path, model, landscape):
    off = run(small_cfg(model, probe_every=0), tmp_path / "off")
    on = run(small_cfg(model, probe_every=20, landscape=landscape), tmp_path / "on")
    assert (off.split == "probe").sum() == 0 and (on.split == "probe").sum() > 0
    probed = set(on.metric[on.split == "probe"])
    assert {"layer1/weight_norm", "layer1/eff_step", "layer1/eff_lr", "layer2/unit0/post/p50"} <= probed  # every probe ran
    cols = ["step", "split", "metric", "value"]
    a = off[cols].reset_index(drop=True)
    b = on[on.split != "probe"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.variants
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_probes_do_not_change_training_any_norm(tmp_path, norm):
    # freeze_after=15: bn_frozen's step counter decides mid-run, so a probe advancing it would show
    off = run(small_cfg("mlp", norm, probe_every=0, freeze_after=15), tmp_path / "off")
    on = run(small_cfg("mlp", norm, probe_every=10, landscape=True, freeze_after=15), tmp_path / "on")
    probe = on[on.split == "probe"]
    assert set(probe.step[probe.metric == "layer1/eff_step"]) == {20, 30, 40}
    # the effective rate exists while the norm makes the loss invariant to the scale of W: it scales, and the layer
    # feeding it has no bias (the variant shifts itself) or a bias its batch centring cancels; a variant whose
    # statistics can freeze (a ``frozen`` attribute: bn_frozen, here after step 15) only until then
    what = NORMS[norm]
    invariant = what.scales is not None and (what.shift or what.cancels_bias)
    freezes = hasattr(make_norm(NormConfig(name=norm), 8, 1), "frozen")
    expected = {s for s in (10, 20, 30, 40) if not (freezes and s > 15)} if invariant else set()
    assert set(probe.step[probe.metric == "layer2/eff_lr"]) == expected
    cols = ["step", "split", "metric", "value"]
    pd.testing.assert_frame_equal(
        off[cols].reset_index(drop=True), on[on.split != "probe"][cols].reset_index(drop=True), check_exact=True
    )


def one_step_state(tmp_path: Path, cfg: RunConfig) -> State:
    """A State after one real SGD step, so gradients exist as they do at hook time."""
    torch.manual_seed(cfg.seed)
    data = data_lib.load(cfg.data)
    model = build_model(cfg.model, cfg.norm, data.shape, data.num_classes)
    opt = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    batches = Batches(data.train_x.shape[0], cfg.train.batch_size, cfg.seed, torch.device("cpu"))
    idx = batches.next()
    model.train()
    loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    log = MetricsLog(tmp_path / "metrics.csv")
    return State(cfg, tmp_path, torch.device("cpu"), data, model, opt, None, batches, log, step=1)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_probe_leaves_state_untouched(tmp_path, model):
    state = one_step_state(tmp_path, small_cfg(model, "bn", landscape=True))
    m = state.model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    grads = [p.grad.clone() for p in m.parameters()]
    rng = torch.get_rng_state()
    probes.probe_hook(state)
    state.log.close()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(mod.training for mod in m.modules())
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. running stats, num_batches_tracked
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, m.parameters()))
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert set(rows.split) == {"probe"} and (rows.step == 1).all()


def test_probe_batch_is_fixed(tmp_path):
    cfg = small_cfg("mlp", "bn")
    state = one_step_state(tmp_path, cfg)
    first = probes.activation_probe(state, state.model)
    assert first == probes.activation_probe(state, state.model)
    assert len(norm_modules(state.model)) == cfg.model.depth
    state.log.close()


@pytest.mark.parametrize(
    "act, x, frac",
    [
        ("sigmoid", [-5.0, -3.0, 0.0, 4.5], 0.5),
        ("tanh", [-2.5, -1.0, 1.0, 3.0], 0.5),
        ("relu", [-1.0, 0.0, 0.5, 2.0], 0.5),
    ],
)
def test_saturated_fraction(act, x, frac):
    assert float(probes.saturated_fraction(torch.tensor(x), act)) == frac


def test_activation_stats_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 5, 5, generator=g) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 1.5
    s = probes.activation_stats(x)
    ref = torch.quantile(x.reshape(-1), torch.tensor([0.15, 0.5, 0.85]))
    torch.testing.assert_close(torch.stack([s["p15"], s["p50"], s["p85"]]), ref)
    torch.testing.assert_close(s["mean"], x.mean())
    torch.testing.assert_close(s["std"], x.std(correction=0))
    ch = x.transpose(0, 1).reshape(3, -1)  # (C, B*H*W)
    torch.testing.assert_close(s["ch_absmean"], ch.mean(1).abs().mean())
    torch.testing.assert_close(s["ch_std"], ch.std(1, correction=0).mean())


def test_weight_probe_known_update(tmp_path):
    state = one_step_state(tmp_path, small_cfg("mlp", "bn"))
    _, feeders = probes._activation_pass(state, state.model)
    assert list(feeders) == ["layer1", "layer2"]
    norm, linear = feeders["layer2"]
    assert linear.weight.shape == (8, 8) and norm.norm_kind == "bn"
    with torch.no_grad():
        linear.weight.fill_(0.5)  # ‖W‖ = 0.5 · 8 = 4
    state.step = 10
    rows = {m: v for _, m, v in probes.weight_probe(state, feeders)}
    assert rows["layer2/weight_norm"] == pytest.approx(4.0)
    assert rows["layer2/eff_lr"] == pytest.approx(0.05 / 16)  # lr / ‖W‖²
    assert "layer2/eff_step" not in rows  # no earlier weights yet
    with torch.no_grad():
        linear.weight[0, 0] += 2.0  # ‖ΔW‖ = 2 over k = 5 steps
    state.step = 15
    rows = {m: v for _, m, v in probes.weight_probe(state, feeders)}
    assert rows["layer2/eff_step"] == pytest.approx(2.0 / 4.0 / 5)
    assert rows["layer2/weight_norm"] == pytest.approx(math.sqrt(63 * 0.25 + 2.5**2))
    state.step = 20  # unchanged weights: a zero step
    rows = {m: v for _, m, v in probes.weight_probe(state, feeders)}
    assert rows["layer2/eff_step"] == 0.0
    assert state.extra[probes.PREV_WEIGHTS]["step"] == 20
    state.log.close()


@pytest.mark.variants
@pytest.mark.parametrize("bias", [False, True], ids=["bias-as-built", "bias"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_scale_invariant_matches_the_norm(norm, bias):
    """``scale_invariant`` says yes exactly when scaling the feeding weight leaves the training output unchanged."""
    cfg = NormConfig(name=norm, freeze_after=2, eps=1e-10, groups=2)  # invariance is exact up to ε
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    linear = torch.nn.Linear(6, 8, bias=bias or needs_bias(cfg))
    torch.nn.init.normal_(linear.bias, std=1.0) if linear.bias is not None else None
    layer = make_norm(cfg, 8, dim=1).train()

    def output(scale: float, module: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(1)  # noisy_bn: the same noise for both
        with torch.no_grad():
            return module(torch.nn.functional.linear(x, scale * linear.weight, linear.bias))

    output(1.0, layer)  # as in training, the probe comes after a forward (affine_ddi has initialised from it)
    for _ in range(2):  # bn_frozen: batch statistics at the second forward, frozen from the third
        invariant = torch.allclose(output(1.0, copy.deepcopy(layer)), output(3.0, copy.deepcopy(layer)), atol=1e-4)
        assert probes.scale_invariant(layer, linear) == invariant
        output(1.0, layer)  # a training forward: counters, running statistics, affine_ddi's first-batch init
    what = NORMS[norm]  # what the variant declares it is
    uncancelled_bias = what.centers != "batch" and linear.bias is not None
    expected = what.scales is not None and not getattr(layer, "frozen", False)  # bn_frozen is frozen by now
    assert probes.scale_invariant(layer, linear) == (expected and not uncancelled_bias)


def test_resumed_run_logs_the_same_weight_probe(tmp_path):
    """eff_step needs the weights of the previous probe: a resume between two probes must still have them."""
    cfg = small_cfg("mlp", "bn", probe_every=15)  # probes at 15, 30, 40; checkpoints at 20, 40
    ref = run(cfg, tmp_path / "ref")
    stopped = []

    def stop(state: State) -> None:
        if not stopped:
            stopped.append(state.step)
            raise KeyboardInterrupt

    with pytest.raises(BaseException):  # a Ctrl-C, however the loop reports it; the last checkpoint stays
        train_run(cfg, tmp_path / "cut", extra_hooks=[Hook("stop", 25, stop)])
    assert stopped == [25] and (tmp_path / "cut" / "checkpoint.pt").exists()
    again = run(cfg, tmp_path / "cut")  # resumes from step 20, whose checkpoint holds W_15
    assert set(again.step[again.metric == "layer1/eff_step"]) == {30, 40}
    cols = ["step", "split", "metric", "value"]
    pd.testing.assert_frame_equal(again[cols], ref[cols], check_exact=True)
