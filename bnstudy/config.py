"""Typed run configuration: what the Hydra entry point converts its config into once.

The library takes these dataclasses, never a DictConfig, so it works from a
notebook or a script without Hydra.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from bnstudy.errors import ConfigError
from bnstudy.fmt import fmt


@dataclass
class DataConfig:
    """Which dataset, and how it is split, normalised and augmented."""

    name: str = "mnist"
    val_size: int = 0  # examples held out of the training split for validation
    augment: bool = False  # 4-px pad random crop + horizontal flip (for 32x32 RGB)
    normalize: bool = True  # per-channel standardisation of the inputs
    download: bool = True  # allow torchvision's download when nothing local exists
    # only for `synthetic` (refused elsewhere), but train_size: on any other dataset a seeded subset of this
    # many training examples (after val_size), except 2048, the default, which keeps the whole split (bnstudy.data.WHOLE)
    channels: int = 1
    size: int = 28
    train_size: int = 2048
    test_size: int = 512
    num_classes: int = 10


@dataclass
class ModelConfig:
    """Architecture and its size."""

    name: str = "mlp"
    depth: int = 3
    width: int = 100
    activation: str = "sigmoid"
    init: str = "default"  # default | lecun | xavier | he | orthogonal | fixup (resnet), see bnstudy.models.init
    pool: str = "max"  # cnn, vgg: max | avg | stride (the conv before the pool takes stride 2)
    zero_init_residual: bool = False  # resnet: each residual branch starts at zero (SkipInit)
    # resnet with zero_init_residual: what starts each branch at zero. norm: the branch's last γ where the
    # variant has one (per channel), else a scalar gain; scalar: a scalar gain, every γ left at 1
    branch_gate: str = "norm"


@dataclass
class NormConfig:
    """Normalization variant and its parameters."""

    name: str = "bn"
    eps: float = 1e-5
    momentum: float = 0.1  # running-statistics momentum (torch convention)
    freeze_after: int = 1000  # bn_frozen: steps of ordinary BN before freezing
    noise_mean_max: float = 0.5  # noisy_bn: shift ~ U(-m, m) per channel ...
    noise_std_max: float = 0.5  # ... and scale ~ U(1 - s, 1 + s), see bnstudy.norm.variants
    groups: int = 8  # groupnorm: number of groups (reduced to a divisor of C)


@dataclass
class OptimConfig:
    """Optimizer and its hyperparameters."""

    name: str = "sgd"
    lr: float = 0.5
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    # the parameters other than conv and linear weights (every norm layer's γ and β, biases, scalar gains):
    # whether weight decay applies to them, and their learning rate relative to lr (bnstudy.train.build.param_groups)
    norm_decay: bool = True
    norm_lr_scale: float = 1.0


@dataclass
class SchedConfig:
    """Learning-rate schedule over the step budget."""

    name: str = "constant"  # constant | step | cosine
    warmup: int = 0  # linear warmup steps
    milestones: tuple[float, ...] = (0.5, 0.75)  # step: fractions of train.steps
    gamma: float = 0.1


@dataclass
class TrainConfig:
    """Budget, logging cadence and execution options of the training loop."""

    steps: int = 5000
    batch_size: int = 60
    eval_every: int | None = None  # None: default_eval_every(steps), 10 test points a run; 0: no evaluation
    log_every: int = 100
    eval_batch_size: int = 2000
    checkpoint_every: int = 1000
    diverge_loss: float = 1000.0
    progress: str = "auto"  # auto | on | off
    compile: bool = False
    amp: bool = False
    channels_last: bool = False
    threads: int = 0  # 0: torch's default, divided between parallel jobs
    precise_bn: int = 0  # batches to recompute BN statistics over before each evaluation (0: off)

    def __post_init__(self) -> None:
        if self.eval_every is None:
            self.eval_every = default_eval_every(self.steps)


def default_eval_every(steps: Any) -> int | None:
    """The evaluation interval when none is given: a tenth of the budget, so every curve has at least 10 test points.

    A 5,000-step run evaluates every 500 steps, as the fixed default did; the experiments set their own.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        return None  # not a budget: the run's checks say so
    return max(1, steps // 10)


@dataclass
class ProbeConfig:
    """Opt-in activation and landscape probes (0 = off)."""

    every: int = 0
    batch_size: int = 1000
    landscape: bool = False


@dataclass
class LoggerConfig:
    """Optional extra loggers."""

    tensorboard: bool = False
    mlflow: bool = False
    mlflow_uri: str = ""  # MLflow tracking URI or a folder; empty: mlruns/ in the working directory


@dataclass
class RunConfig:
    """Everything one training run depends on."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    plugins: list[str] = field(default_factory=list)  # modules or .py files to import: variants from outside bnstudy
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    force: bool = False
    study: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Build from a plain nested dict (e.g. a resolved Hydra config); unknown keys are errors."""
        return _build(cls, d, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, JSON/YAML friendly."""
        return _plain(dataclasses.asdict(self))


# Keys that change how a run executes or is reported, not what it computes:
# they are left out of the run's identity, so changing them never re-trains.
NON_IDENTITY = {
    "seed",
    "device",
    "out_dir",
    "force",
    "study",
    "train.progress",
    "train.checkpoint_every",
    "train.threads",
    "train.compile",
    "logger",
    "data.download",
    "plugins",  # where a variant's code comes from; the code itself is in the run's fingerprint (bnstudy.plugins)
}


def _build(cls, d: dict[str, Any], prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (d or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys: {', '.join(fields)}")
        f = fields[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{prefix}{key}.")
        elif isinstance(default, tuple) and value is not None:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Keys added after studies were committed, with the value that reproduces the
# code before them. At that value a key is left out of the identity, so the
# committed run folders keep their names (and are skipped, not retrained);
# any other value is part of the identity like every other key.
ADDED_KEYS: dict[str, Any] = {
    "model.init": "default",
    "model.pool": "max",
    "model.zero_init_residual": False,
    "model.branch_gate": "norm",
    "optim.norm_decay": True,
    "optim.norm_lr_scale": 1.0,
    "train.precise_bn": 0,
}


# Keys that act only under one option (key -> (option key, value)). Every config
# holds them since RunConfig became the schema of the Hydra config; under any
# other option they are left out, as they were when only that option's YAML set them.
ONLY_WITH: dict[str, tuple[str, Any]] = {
    "sched.milestones": ("sched.name", "step"),
    "sched.gamma": ("sched.name", "step"),
}


def _canonical(key: str, value: Any) -> Any:
    # The schema makes optim.lr a float; before it, an integral learning rate typed
    # on the command line (the committed lr1, lr3, lr10 runs) was hashed as an int.
    # Hashing integral rates as ints keeps those names, and optim.lr=1 and
    # optim.lr=1.0 name the same run.
    if key == "optim.lr" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flat subset of a config dict that determines a run's results (seed aside)."""
    flat = _flatten({k: v for k, v in cfg.items() if k != "hydra"})
    if "train.eval_every" in flat and flat["train.eval_every"] is None:
        # the default grid is named by the interval it resolves to, as config.yaml records it
        flat["train.eval_every"] = default_eval_every(flat.get("train.steps", TrainConfig.steps))
    return {
        k: _canonical(k, v)
        for k, v in sorted(flat.items())
        if k not in NON_IDENTITY
        and not (k in ONLY_WITH and flat.get(ONLY_WITH[k][0]) != ONLY_WITH[k][1])
        and k.split(".")[0] not in NON_IDENTITY
        and not (k in ADDED_KEYS and v == ADDED_KEYS[k])
        and not (k == "train.precise_bn" and not _has_running_stats(flat.get("norm.name"), flat.get("plugins")))
    }


def _has_running_stats(norm: Any, plugins: Any = None) -> bool:
    # precise BN changes nothing for a variant without running statistics, so it is not part of its identity
    from bnstudy.norm import NORMS  # local: bnstudy.norm imports this module

    if norm not in NORMS and plugins:  # a variant from a plugin: what it is, its registry entry says
        from bnstudy.plugins import load

        load(plugins)
    return norm not in NORMS or NORMS[norm].running_stats


def config_hash(cfg: dict[str, Any]) -> str:
    """Short stable hash of a config's identity."""
    blob = json.dumps(_plain(identity(cfg)), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def run_name(cfg: dict[str, Any]) -> str:
    """Deterministic run folder name, relative to out_dir: readable factors + hash, then the seed.

    Example: ``mnist-mlp-bn-sgd-lr0.01-bs60-5d1c2e4a/seed0``.

    The name becomes a path, so it is built only from checked values: option
    names of letters, digits and ``_``, a finite number for the learning rate
    and integers for the batch size and seed; anything else is a
    :class:`ConfigError` before any folder exists.
    """
    g = lambda *ks: _get(cfg, ks)  # noqa: E731
    names = [_safe_name(k, g(*k.split("."))) for k in ("data.name", "model.name", "norm.name", "optim.name")]
    lr = _number("optim.lr", g("optim", "lr"), (int, float))
    bs = _number("train.batch_size", g("train", "batch_size"), (int,))
    seed = _number("seed", g("seed"), (int,))
    if not 0 <= seed < 2**63:  # torch seeds its generators with a 64-bit integer
        raise ConfigError(f"seed must be an integer from 0 to 2**63-1 (got {seed})")
    readable = "-".join([*names, "lr" + fmt(lr), "bs" + fmt(bs)])
    return f"{readable}-{config_hash(cfg)}/seed{seed}"


_NAME = re.compile(r"[A-Za-z0-9_]+")


def _safe_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        group = key.split(".")[0]
        raise ConfigError(f"{key}={value!r} is not a {group} option name (letters, digits and _ only); pick one with {group}=NAME")
    return value


def _number(key: str, value: Any, types: tuple[type, ...]) -> int | float:
    if isinstance(value, bool) or not isinstance(value, types) or not math.isfinite(value):
        kind = "an integer" if types == (int,) else "a finite number"
        raise ConfigError(f"{key} must be {kind} (got {value!r})")
    return value


def _get(cfg: dict[str, Any], keys: tuple[str, ...]) -> Any:
    cur: Any = cfg
    for k in keys:
        cur = cur[k] if k in cur else None
        if cur is None:
            break
    return cur


def factors(cfg: RunConfig) -> dict[str, Any]:
    """Flat factor dict stored in summary.json and used for tables and plots."""
    return {
        "data": cfg.data.name,
        "model": cfg.model.name,
        "norm": cfg.norm.name,
        "optim": cfg.optim.name,
        "lr": cfg.optim.lr,
        "momentum": cfg.optim.momentum,
        "weight_decay": cfg.optim.weight_decay,
        "sched": cfg.sched.name,
        "batch_size": cfg.train.batch_size,
        "steps": cfg.train.steps,
        "seed": cfg.seed,
        "depth": cfg.model.depth,
        "width": cfg.model.width,
        "activation": cfg.model.activation,
        "init": cfg.model.init,
        "pool": cfg.model.pool,
        "augment": cfg.data.augment,
        "study": cfg.study,
        # only where it acts: other variants' runs must not split into groups by a key they ignore
        "freeze_after": cfg.norm.freeze_after if cfg.norm.name == "bn_frozen" else None,
        "zero_init_residual": cfg.model.zero_init_residual if cfg.model.name == "resnet" else None,
        "branch_gate": cfg.model.branch_gate if cfg.model.name == "resnet" and cfg.model.zero_init_residual else None,
        "norm_decay": cfg.optim.norm_decay,
        "norm_lr_scale": cfg.optim.norm_lr_scale,
    }
