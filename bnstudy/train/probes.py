"""Opt-in probes: activation statistics and weight scale per norm site, and loss-landscape smoothness.

:func:`probe_hook` runs every ``probe.every`` steps (and at the last step) when
``probe.every > 0``; with ``probe.every == 0`` it is never registered and costs
nothing. It writes tidy rows with split ``probe`` to ``metrics.csv``.

Activation probe (Ioffe & Szegedy 2015, Fig. 1(b, c)). One forward pass of the
fixed probe batch, the first ``probe.batch_size`` test examples, in eval mode
(BN uses its running statistics) under ``torch.inference_mode``. Norm sites are
those of :func:`bnstudy.norm.norm_modules`, named ``layer1``, ``layer2``, ... in
forward order. Per site ``layer{i}``:

- ``layer{i}/pre/{mean,std,p15,p50,p85}``: mean, standard deviation and the
  15/50/85th percentiles over all elements of the norm's input (for conv
  layers: over batch, channels and spatial positions); ``std`` is the
  population std (no Bessel correction), as everywhere here.
- ``layer{i}/pre/ch_absmean``, ``layer{i}/pre/ch_std``: mean over channels of
  |per-channel mean| and of the per-channel std (per-channel: over batch and
  spatial positions), i.e. how far features are from being standardized
  channel by channel.
- ``layer{i}/post/...``: the same seven for the norm's output.
- ``layer{i}/sat_frac``: fraction of saturated units in the norm output, which
  is what enters the activation: ``|x| > 4`` for sigmoid, ``|x| > 2`` for tanh,
  ``x <= 0`` (zero after the ReLU) for relu.
- ``layer{i}/gamma/{mean,std}``, ``layer{i}/beta/{mean,std}``: statistics of the
  module's ``weight`` / ``bias`` parameters, when it has them.
- ``block{b}/gain``: the scalar that ends residual branch b, where the ResNet
  has one (SkipInit's ``branch_gain`` for a variant without γ or under
  ``model.branch_gate=scalar``, Fixup's multiplier), b = 1, 2, ... in forward
  order; beside ``layer{i}/gamma`` of the branch's last norm site, it shows how
  each branch opens during training.
- ``pool{j}/{mean,std,p15,p50,p85,ch_absmean,ch_std}``: the same statistics
  of the output of the j-th max-pooling layer (CNN, VGG), i.e. what the next
  conv and its norm receive after pooling shifted the features.
- ``layer{i}/grad_norm``: L2 norm of the weight gradient of the Linear/Conv
  layer feeding the norm (the last weighted module called before it), from the
  last optimizer step; absent when that layer has no gradient.
- ``layer{L}/unit{u}/{pre,post}/{p15,p50,p85}``, L the last norm site (the last
  hidden layer), u in :data:`UNITS` (0-3, those the layer has): the 15/50/85th
  percentiles of one unit's (feature's or channel's) input and output, over the
  probe batch (and spatial positions). Ioffe & Szegedy's Fig. 1(b, c) follows
  one unit this way; the pooled ``pre``/``post`` rows above average per-unit
  drift away. ``post`` is what enters the unit's activation.

Weight probe, on the same layers (the weight feeding ``layer{i}``'s norm; its
bias, if any, is left out). ‖·‖ is the Frobenius norm of the whole weight
tensor; k is the number of steps since the previous probe (``probe.every``, or
fewer at the last step):

- ``layer{i}/weight_norm``: ‖W_t‖.
- ``layer{i}/eff_step``: ‖W_t − W_{t−k}‖ / ‖W_{t−k}‖ / k, the relative change of
  the weights per step over the probe interval. W_{t−k} is kept in the run's
  checkpointed hook state (``state.extra``), so a resumed run logs the same
  values as an uninterrupted one. Absent at the first probe (no W_{t−k} yet).
- ``layer{i}/eff_lr``: lr / ‖W_t‖² (lr: the current learning rate), only where
  the norm makes the loss invariant to the scale of W (:func:`scale_invariant`):
  there W and cW compute the same function and the gradient at cW is 1/c times
  the gradient at W, so a step of lr at ‖W‖ moves the direction of W as a step
  of lr/‖W‖² at ‖W‖ = 1 would (van Laarhoven 2017; Arora, Li & Lyu 2019). The
  invariance holds per unit (each row of W), so this layer-wide value is the
  per-unit effective rate divided by the number of units, up to how unequal
  the row norms are; compare it across rates and steps, not across layers.

Landscape probe (Santurkar et al. 2018, §3), when ``probe.landscape`` is true.
On one fixed training batch (``train.batch_size`` examples drawn from a
generator seeded by ``seed``, no augmentation), in train mode (BN uses batch
statistics): the gradient g at the current parameters θ, then for step sizes
η ∈ {0.25, 0.5, 1, 2, 4} x lr (the current lr, or ``optim.lr`` if it is 0) the
loss L(θ') and gradient g' at θ' = θ − η g:

- ``landscape/loss_range``: max − min of L(θ') over the step sizes;
- ``landscape/grad_change``: max ‖g' − g‖ ("gradient predictiveness");
- ``landscape/beta_smooth``: max ‖g' − g‖ / ‖θ' − θ‖ ("effective β-smoothness").

No probe changes anything training depends on: parameters, gradients,
buffers (BN running statistics, counters), plain numeric module attributes,
module train/eval flags and the torch/CUDA/Python RNG states are snapshotted
and restored, so a run with probes logs the same train/test rows as one
without. The probe batch is forwarded whole, so its activations must fit in
memory; lower ``probe.batch_size`` for large models.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnstudy.norm import kind, norm_modules
from bnstudy.train import precision
from bnstudy.train.snapshot import preserved
from bnstudy.train.state import State

SPLIT = "probe"
QUANTILES = (0.15, 0.50, 0.85)
STAT_NAMES = ("mean", "std", "p15", "p50", "p85", "ch_absmean", "ch_std")
# |x| beyond which a sigmoid/tanh unit counts as saturated (sigmoid'(4) ≈ 0.018, tanh'(2) ≈ 0.07)
SATURATION = {"sigmoid": 4.0, "tanh": 2.0}
LANDSCAPE_ETAS = (0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of the learning rate
UNITS = (0, 1, 2, 3)  # units of the last norm site followed one by one (Ioffe & Szegedy Fig. 1(b, c))
PREV_WEIGHTS = "probe/weights"  # state.extra key: {"step": t, "weights": {"layer{i}": W_t}} of the last probe


def probe_hook(state: State) -> None:
    """Write the activation and weight probe (and, if configured, the landscape probe) rows for this step."""
    model = getattr(state.model, "_orig_mod", state.model)  # probe the eager module, never a compiled graph
    with precision.autocast(state.cfg, state.device):  # the forward passes in the precision training uses
        rows, feeders = _activation_pass(state, model)
        rows += weight_probe(state, feeders)
        if state.cfg.probe.landscape:
            rows += landscape_probe(state, model)
    state.log.write(state.step, rows, state.train_seconds)


# ---------------------------------------------------------------- statistics


def quantiles(flat: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Linear-interpolated quantiles of a 1-D tensor (as ``torch.quantile``, without its 2**24-element limit)."""
    s = flat.sort().values
    pos = torch.tensor(qs, device=s.device, dtype=torch.float64) * (s.numel() - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    frac = (pos - lo).to(s.dtype)
    return s[lo] + (s[hi] - s[lo]) * frac


def activation_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The :data:`STAT_NAMES` statistics of an activation (B, C) or (B, C, H, W), as 0-dim tensors."""
    x = x.detach().float()
    flat = x.reshape(-1)
    std, mean = torch.std_mean(flat, correction=0)
    q = quantiles(flat, QUANTILES)
    per_channel = [0, *range(2, x.dim())]  # reduce over batch and spatial axes, keep channels
    ch_std, ch_mean = torch.std_mean(x, dim=per_channel, correction=0)
    return {
        "mean": mean,
        "std": std,
        "p15": q[0],
        "p50": q[1],
        "p85": q[2],
        "ch_absmean": ch_mean.abs().mean(),
        "ch_std": ch_std.mean(),
    }


def saturated_fraction(x: torch.Tensor, activation: str) -> torch.Tensor | None:
    """Fraction of pre-activation units where ``activation`` saturates (relu: output zero); None if unknown."""
    x = x.detach().float()
    if activation in SATURATION:
        return (x.abs() > SATURATION[activation]).float().mean()
    if activation == "relu":
        return (x <= 0).float().mean()
    return None


# ---------------------------------------------------------------- activation probe


def _weighted_modules(model: nn.Module) -> list[nn.Module]:
    """Modules with their own ``weight`` parameter that are not norm layers nor inside one."""
    inside_norm: set[int] = set()
    for _, norm in norm_modules(model):
        inside_norm.update(id(m) for m in norm.modules())
    return [
        m
        for m in model.modules()
        if id(m) not in inside_norm and "weight" in dict(m.named_parameters(recurse=False))
    ]


def activation_probe(state: State, model: nn.Module) -> list[tuple[str, str, float]]:
    """Per-norm-site activation, parameter and gradient rows on the fixed probe batch."""
    return _activation_pass(state, model)[0]


def unit_stats(x: torch.Tensor, units: tuple[int, ...] = UNITS) -> dict[int, dict[str, torch.Tensor]]:
    """{u: {p15, p50, p85}}: percentiles of feature/channel u of (B, C) or (B, C, H, W) over batch and space."""
    x = x.detach().float()
    out: dict[int, dict[str, torch.Tensor]] = {}
    for u in (u for u in units if u < x.shape[1]):
        q = quantiles(x[:, u].reshape(-1), QUANTILES)
        out[u] = {f"p{round(100 * p)}": q[j] for j, p in enumerate(QUANTILES)}
    return out


def _activation_pass(
    state: State, model: nn.Module
) -> tuple[list[tuple[str, str, float]], dict[str, tuple[nn.Module, nn.Module]]]:
    """The activation rows, and per site ``layer{i}`` its (norm module, feeding weighted module)."""
    cfg = state.cfg
    x = state.data.test_x[: cfg.probe.batch_size]  # fixed across steps and runs: (B, C, H, W)
    act = cfg.model.activation
    sites = norm_modules(model)
    stats: dict[int, dict[str, torch.Tensor]] = {}
    feeder: dict[int, nn.Module] = {}
    last_weighted: list[nn.Module | None] = [None]

    def record_call(module: nn.Module, args: Any) -> None:
        last_weighted[0] = module

    def capture(i: int):
        def fn(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            # computed right away: an in-place activation (ReLU) overwrites ``out`` next
            s = {f"pre/{k}": v for k, v in activation_stats(args[0]).items()}
            s.update({f"post/{k}": v for k, v in activation_stats(out).items()})
            sat = saturated_fraction(out, act)
            if sat is not None:
                s["sat_frac"] = sat
            if i == len(sites) - 1:  # the last hidden layer: a few units one by one
                for side, t in (("pre", args[0]), ("post", out)):
                    for u, qs in unit_stats(t).items():
                        s.update({f"unit{u}/{side}/{q}": v for q, v in qs.items()})
            stats[i] = s
            if last_weighted[0] is not None:
                feeder[i] = last_weighted[0]

        return fn

    pools = [m for m in model.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    pooled: dict[int, dict[str, torch.Tensor]] = {}

    def capture_pool(j: int):
        def fn(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            pooled[j] = activation_stats(out)

        return fn

    handles = [m.register_forward_pre_hook(record_call) for m in _weighted_modules(model)]
    handles += [m.register_forward_hook(capture(i)) for i, (_, m) in enumerate(sites)]
    handles += [m.register_forward_hook(capture_pool(j)) for j, m in enumerate(pools)]
    try:
        with preserved(model, params=False), torch.inference_mode():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()

    tensors: list[tuple[str, torch.Tensor]] = []
    for j, s in sorted(pooled.items()):
        tensors += [(f"pool{j + 1}/{k}", v) for k, v in s.items()]
    for i, (_, m) in enumerate(sites):
        layer = f"layer{i + 1}"
        tensors += [(f"{layer}/{k}", v) for k, v in stats.get(i, {}).items()]
        with torch.no_grad():
            for pname, label in (("weight", "gamma"), ("bias", "beta")):
                p = dict(m.named_parameters(recurse=False)).get(pname)
                if p is not None:
                    std, mean = torch.std_mean(p.detach().float(), correction=0)
                    tensors += [(f"{layer}/{label}/mean", mean), (f"{layer}/{label}/std", std)]
            w = feeder[i].weight if i in feeder else None
            if w is not None and w.grad is not None:
                tensors.append((f"{layer}/grad_norm", w.grad.detach().float().norm()))
    gains = [g for m in model.modules() for g in (getattr(m, "branch_gain", None), getattr(m, "scale", None)) if isinstance(g, nn.Parameter) and g.numel() == 1]
    tensors += [(f"block{b + 1}/gain", g.detach()) for b, g in enumerate(gains)]
    values = torch.stack([v.reshape(()).float() for _, v in tensors]).cpu().tolist() if tensors else []  # one host sync
    feeders = {f"layer{i + 1}": (m, feeder[i]) for i, (_, m) in enumerate(sites) if i in feeder}
    return [(SPLIT, name, v) for (name, _), v in zip(tensors, values)], feeders


# ---------------------------------------------------------------- weight probe


def scale_invariant(norm: nn.Module, feeder: nn.Module) -> bool:
    """Whether ``norm``'s training output is unchanged when ``feeder.weight`` is scaled by any c > 0.

    True for the variants that divide by a standard deviation of their current
    input (registered with ``scales``, or ``standardizes``, ``"batch"`` or
    ``"example"``), up to their ε, provided a bias of the feeding layer is
    cancelled or absent: σ(cWx) = c σ(Wx), but σ(cWx + b) divides b by c too.
    Per-feature batch centering cancels b (the variant's ``cancels_bias``:
    (cWx + b − μ(cWx + b)) / σ(cWx) = (Wx − μ(Wx)) / σ(Wx)); per-example centering
    does not, nor does no centering, so layernorm, groupnorm and ``bn_scale``
    (y = γ x / σ_B + β) count only when the feeding layer has no bias, as they
    are built. Not for ``bn_center`` (y = γ (x − μ_B) + β: it cancels a bias but
    its output scales with W), nor for ``bn_frozen`` once frozen (fixed running
    statistics: the output scales with W), nor for ``affine``, ``affine_ddi`` and
    ``none``. ``bn_nograd`` counts: its forward is BN's, and its gradient, with
    μ, σ held constant, also scales as 1/c, so lr/‖W‖² is its effective rate as
    well; but that gradient is not orthogonal to W, so, unlike under ``bn``,
    plain SGD need not make ‖W‖ grow.
    """
    if getattr(norm, "frozen", False):
        return False
    what = kind(norm)
    return what.scales is not None and (what.cancels_bias or getattr(feeder, "bias", None) is None)


@torch.no_grad()
def weight_probe(state: State, feeders: dict[str, tuple[nn.Module, nn.Module]]) -> list[tuple[str, str, float]]:
    """``weight_norm``, ``eff_step`` and ``eff_lr`` rows per site; keeps W_t in ``state.extra`` for the next probe."""
    prev = state.extra.get(PREV_WEIGHTS) or {"step": None, "weights": {}}
    k = state.step - prev["step"] if prev["step"] is not None else 0
    lr = state.lr()
    tensors: list[tuple[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    for layer, (norm, feeder) in feeders.items():
        w = feeder.weight.detach()
        w_norm = w.float().norm()
        tensors.append((f"{layer}/weight_norm", w_norm))
        old = prev["weights"].get(layer)
        if k > 0 and old is not None and old.shape == w.shape:
            old = old.to(w.device).float()
            tensors.append((f"{layer}/eff_step", (w.float() - old).norm() / old.norm() / k))
        if scale_invariant(norm, feeder):
            tensors.append((f"{layer}/eff_lr", lr / w_norm.square()))
        current[layer] = w.clone()
    state.extra[PREV_WEIGHTS] = {"step": state.step, "weights": current}
    values = torch.stack([v.reshape(()) for _, v in tensors]).cpu().tolist() if tensors else []  # one host sync
    return [(SPLIT, name, v) for (name, _), v in zip(tensors, values)]


# ---------------------------------------------------------------- landscape probe


def landscape_probe(state: State, model: nn.Module) -> list[tuple[str, str, float]]:
    """Loss range, gradient change and effective β-smoothness along the gradient at the current parameters."""
    cfg = state.cfg
    n = state.data.train_x.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)  # the probe's own generator: the global RNG is untouched
    idx = torch.randperm(n, generator=gen)[: cfg.train.batch_size].to(state.device)
    x, y = state.data.train_x[idx], state.data.train_y[idx]
    params = [p for p in model.parameters() if p.requires_grad]
    lr = state.lr() if state.lr() > 0 else cfg.optim.lr

    with preserved(model) as restore:

        def loss_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
            restore()  # same buffers, counters, train flags and RNG draws (e.g. noise) at every point
            if not model.training:
                model.train()
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
            return loss.detach(), flat.float()

        theta = [p.detach().clone() for p in params]
        _, g = loss_and_grad()
        g_parts = torch.split(g, [p.numel() for p in params])
        losses, changes, betas = [], [], []
        for mult in LANDSCAPE_ETAS:
            eta = mult * lr
            with torch.no_grad():
                for p, t, gp in zip(params, theta, g_parts):
                    p.copy_(t - eta * gp.view_as(p).to(p.dtype))
            loss, g2 = loss_and_grad()
            change = (g2 - g).norm()
            losses.append(loss)
            changes.append(change)
            betas.append(change / (eta * g.norm()))  # ‖θ' − θ‖ = η‖g‖
    # ``preserved`` has put back the parameters, grads, buffers, flags and RNG states
    losses_t, changes_t, betas_t = torch.stack(losses), torch.stack(changes), torch.stack(betas)
    out = torch.stack([losses_t.max() - losses_t.min(), changes_t.max(), betas_t.max()]).cpu().tolist()
    return [
        (SPLIT, "landscape/loss_range", out[0]),
        (SPLIT, "landscape/grad_change", out[1]),
        (SPLIT, "landscape/beta_smooth", out[2]),
    ]
