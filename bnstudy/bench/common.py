"""What every bench case shares: the model cases, targets, timings, checks, options and config composition."""
from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bnstudy import data as data_lib
from bnstudy.config import RunConfig
from bnstudy.errors import DataError


@dataclass(frozen=True)
class Case:
    """A model's default dataset and bench sizes (steps per measured run)."""

    data: str
    batch_size: int
    steps: int
    quick_steps: int


# Conv nets on 2 shared CPU cores take 0.1-2 s a step, hence their small step counts.
CASES: dict[str, Case] = {
    "mlp": Case("mnist", 60, 1000, 150),
    "cnn": Case("cifar10_jpeg", 128, 20, 3),
    "vgg": Case("cifar10_jpeg", 128, 6, 2),
    "resnet": Case("cifar10_jpeg", 128, 3, 1),
}
QUICK_MODELS = ("mlp", "cnn")
SYNTHETIC_TRAIN_SIZE = 4096

# (check, threshold, direction) printed with PASS/MISS; ">=" means higher is better.
TARGETS = {
    "mlp a/b": (0.90, ">="),
    "mlp a/c": (4.0, ">="),
    "cnn a/b": (0.90, ">="),
    "vgg a/b": (0.90, ">="),
    "eval / train": (0.10, "<="),
    "mnist cached load s": (1.0, "<="),
    "cifar10_jpeg cached load s": (2.0, "<="),
    "cifar10_jpeg first decode s": (30.0, "<="),
    "sweep s/job outside training": (1.0, "<="),
    # busy machine (bnstudy.bench.busy): default policy under load vs threads=1 under load; quiet vs the old default
    "mlp busy default / threads=1": (0.8, ">="),
    "cnn busy default / threads=1": (0.8, ">="),
    "mlp quiet default / old default": (0.9, ">="),
    "cnn quiet default / old default": (0.9, ">="),
    # full width (bnstudy.bench.full)
    "resnet x8 concurrent / x1": (3.0, ">="),
}
# CPU precision (bnstudy.bench.precision): bnstudy against the bare loop in every row; bf16 + channels_last against fp32
TARGETS["precision a/b"] = (0.9, ">=")
TARGETS["bf16+channels_last / fp32"] = (1.8, ">=")
for _m in ("resnet", "vgg"):
    TARGETS[f"{_m} full a/b"] = (0.9, ">=")


@dataclass
class Timing:
    """One measured run of one contender."""

    images: int
    steps: int
    seconds: float

    @property
    def ips(self) -> float:
        """Images per second."""
        return self.images / self.seconds

    @property
    def ms_step(self) -> float:
        """Milliseconds per optimizer step."""
        return 1000 * self.seconds / self.steps


@dataclass
class Check:
    """A measured quantity against its target."""

    name: str
    value: float | None
    note: str = ""

    @property
    def status(self) -> str:
        """PASS, MISS, or n/a when not measured or without a target."""
        if self.name not in TARGETS or self.value is None or not math.isfinite(self.value):
            return "n/a"
        limit, how = TARGETS[self.name]
        ok = self.value >= limit if how == ">=" else self.value <= limit
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        """One printable line: name, value, target, status, note."""
        val = "-" if self.value is None else f"{self.value:.3g}"
        tgt = f"{TARGETS[self.name][1]} {TARGETS[self.name][0]:g}" if self.name in TARGETS else ""
        return f"  {self.name:<34} {val:>9}  {tgt:<8} {self.status:<5} {self.note}"


@dataclass
class Options:
    """Parsed command line."""

    quick: bool = False
    models: list[str] = field(default_factory=lambda: list(CASES))
    norms: list[str] = field(default_factory=lambda: ["bn", "affine", "none"])
    steps: int | None = None
    repeats: int = 3
    data: str = "auto"
    device: str = "cpu"
    out: Path = Path("results/bench")
    threads: int = 0  # 0: torch.get_num_threads()
    optim: str = "sgd"
    skip: set[str] = field(default_factory=set)
    cases: set[str] = field(default_factory=lambda: {"speed"})  # speed | busy | full | precision
    peak_tflops: float | None = None
    concurrent: list[int] = field(default_factory=lambda: [1, 4, 8])


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_avg() -> float:
    """The 1-minute load average, NaN where the system has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def log(msg: str) -> None:
    """A progress line on stderr (results go to stdout)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def compose(overrides: list[str]) -> RunConfig:
    """The real ``bnstudy-train`` config (conf/) with ``overrides``, as a typed RunConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from bnstudy.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)  # type: ignore[union-attr]
    return RunConfig.from_dict(plain)  # type: ignore[arg-type]


def unsupported(device: torch.device) -> str | None:
    """Why bf16 autocast is refused on ``device`` (None where it runs natively)."""
    from bnstudy.errors import ConfigError
    from bnstudy.train import precision

    try:
        precision.check(compose(["train.amp=true", f"device={device.type}"]), device)
    except ConfigError as e:
        return str(e)
    return None


def with_steps(cfg: RunConfig, steps: int) -> RunConfig:
    """A copy of ``cfg`` that trains ``steps`` steps without evaluating."""
    out = copy.deepcopy(cfg)
    out.train.steps, out.train.eval_every = steps, 0
    return out


def data_overrides(name: str, kind: str, train_size: int = SYNTHETIC_TRAIN_SIZE) -> list[str]:
    """Overrides selecting dataset ``name``, or a synthetic set of its shape and test size."""
    if kind == "real":
        return [f"data={name}", "data.download=false"]
    s = data_lib.SPECS[name]
    return [
        "data=synthetic",
        f"data.channels={s.shape[0]}",
        f"data.size={s.shape[1]}",
        f"data.train_size={train_size}",
        f"data.test_size={s.test_size}",
    ]


def data_kind(name: str, forced: str, device: torch.device) -> tuple[str, str]:
    """('real' | 'synthetic', note): real when :func:`bnstudy.data.load` succeeds here."""
    if forced == "synthetic":
        return "synthetic", "forced by --data synthetic"
    try:
        data_lib.load(compose(data_overrides(name, "real")).data, device)
    except DataError as e:
        return "synthetic", f"{name} unavailable ({str(e).split(';')[0]})"
    return "real", ""
