"""(a) bnstudy's training path, (b) a bare loop, (c) a DataLoader loop: the same network, init and optimizer.

(b) and (c) take their model, optimizer and data from the trainer's own build
step (:func:`bnstudy.train.build.build`), so ``optim=adam`` or a changed
initialisation is compared like with like.
"""
from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bnstudy import data as data_lib
from bnstudy.bench.common import CASES, Options, Timing, compose, data_kind, data_overrides, log, sync, with_steps
from bnstudy.config import RunConfig

CONTENDERS = ("bnstudy", "bare", "conventional")


def run_bnstudy(cfg: RunConfig, run_dir: Path) -> Timing:
    """(a) train_run; time = its training seconds plus its log hooks (final eval and checkpoint left out)."""
    from bnstudy.train import train_run

    # evaluation is (d)'s business: the config given here has train.eval_every=0
    s = train_run(cfg, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    if s["status"] != "completed":
        log(f"warning: bnstudy run ended {s['status']} at step {s['step']}")
    seconds = s["seconds"] + s["hook_times"].get("log", 0.0)
    return Timing(s["step"] * cfg.train.batch_size, s["step"], seconds)


def built(cfg: RunConfig):
    """The trainer's build step for ``cfg``: (model in train mode, optimizer, data, device)."""
    from bnstudy.train.build import build

    b = build(cfg)
    return b.model.train(), b.optimizer, b.data, b.device


def bare_loop(cfg: RunConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, x_all: torch.Tensor, y_all: torch.Tensor, device: torch.device) -> Timing:
    """randperm indexing, forward, loss, backward, step: nothing else (bf16 autocast and channels_last as configured)."""
    n, bs, steps = x_all.shape[0], cfg.train.batch_size, cfg.train.steps
    channels_last = cfg.train.channels_last and x_all.dim() == 4 and cfg.model.name != "mlp"
    amp = cfg.train.amp  # bf16 autocast on any device, as train_run does
    sync(device)
    t0 = time.perf_counter()
    perm, pos = torch.randperm(n, device=device), 0
    for _ in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, device=device), 0
        idx = perm[pos : pos + bs]
        pos += bs
        x = x_all[idx]  # (B, C, H, W)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return Timing(steps * bs, steps, time.perf_counter() - t0)


def run_bare(cfg: RunConfig) -> Timing:
    """(b) the bare loop over the preloaded tensors of the trainer's build."""
    model, opt, data, device = built(cfg)
    if cfg.train.compile:
        model = torch.compile(model)
    return bare_loop(cfg, model, opt, data.train_x, data.train_y, device)


def run_conventional(cfg: RunConfig, dataset: torch.utils.data.Dataset) -> Timing:
    """(c) the usual loop: ``DataLoader(dataset, batch_size, shuffle=True)`` with per-item transforms."""
    model, opt, _, device = built(cfg)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True)
    steps, images = cfg.train.steps, 0
    sync(device)
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images += x.shape[0]
    sync(device)
    return Timing(images, steps, time.perf_counter() - t0)


class UInt8Images(torch.utils.data.Dataset):
    """uint8 image tensors (N, C, H, W) served one item at a time through a transform, like a torchvision set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.x[i]), int(self.y[i])


def conventional_dataset(cfg: RunConfig, kind: str, data: data_lib.Data) -> tuple[torch.utils.data.Dataset | None, str]:
    """The dataset (c) iterates, normalised with the training mean/std; None (and why) when there is none."""
    import torchvision
    from torchvision import transforms as T

    norm = T.Normalize(data.mean.tolist(), data.std.tolist())
    name, root = cfg.data.name, data_lib.data_dir()
    if kind == "synthetic":
        # back to the uint8 pixels load_raw made (exact: they were k/255, then standardised)
        c = (1, -1, 1, 1)
        tx = (data.train_x.cpu() * data.std.view(c) + data.mean.view(c)).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        return UInt8Images(tx, data.train_y.cpu(), T.Compose([T.ConvertImageDtype(torch.float32), norm])), "uint8 tensors, per-item transform"
    pil = T.Compose([T.ToTensor(), norm])
    if name in ("mnist", "fashion_mnist"):
        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        return cls(str(root), train=True, download=False, transform=pil), f"torchvision.datasets.{cls.__name__}"
    if name == "cifar10":
        return torchvision.datasets.CIFAR10(str(root), train=True, download=False, transform=pil), "torchvision.datasets.CIFAR10"
    if name == "cifar10_jpeg":
        mirror = data_lib.mirror_dir()
        for base in [root / "cifar10-jpeg"] + ([mirror / "cifar10-jpeg"] if mirror else []):
            if (base / "train").is_dir():
                return torchvision.datasets.ImageFolder(str(base / "train"), transform=pil), f"ImageFolder({base / 'train'})"
        return None, "no extracted cifar10-jpeg/train folder (only the tar): (c) skipped"
    return None, f"no conventional loader for {name}"


def median(ts: list[Timing], attr: str) -> float:
    """Median of ``attr`` over timings (NaN for none)."""
    return statistics.median(getattr(t, attr) for t in ts) if ts else float("nan")


def _row(m: str, norm: str, label: str, steps: int, times: dict[str, list[Timing]]) -> dict[str, Any]:
    ips = {k: median(times.get(k, []), "ips") for k in CONTENDERS}
    return {
        "model": m,
        "norm": norm,
        "data": label,
        "batch_size": CASES[m].batch_size,
        "steps": steps,
        "ips_bnstudy": ips["bnstudy"],
        "ips_bare": ips["bare"],
        "ips_conventional": ips["conventional"],
        "ratio_a_b": ips["bnstudy"] / ips["bare"],
        "ratio_a_c": ips["bnstudy"] / ips["conventional"] if times.get("conventional") else float("nan"),
        "ms_step_bnstudy": median(times.get("bnstudy", []), "ms_step"),
        "ms_step_bare": median(times.get("bare", []), "ms_step"),
        "ms_step_conventional": median(times.get("conventional", []), "ms_step"),
    }


def bench_contenders(opts: Options, tmp: Path, device: torch.device, threads: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of bench.csv: per model x norm, median images/s and ms/step of (a), (b), (c)."""
    rows, notes = [], []
    groups: dict[str, list[str]] = {}  # dataset -> models: one dataset in memory at a time
    for m in opts.models:
        groups.setdefault(CASES[m].data, []).append(m)
    for dname, models in groups.items():
        kind, why = data_kind(dname, opts.data, device)
        label = dname if kind == "real" else f"synthetic({dname} shape)"
        if why:
            notes.append(f"{dname}: {why}")
        for m in models:
            steps = opts.steps or (CASES[m].quick_steps if opts.quick else CASES[m].steps)
            common = [
                f"model={m}", *data_overrides(dname, kind), f"train.batch_size={CASES[m].batch_size}", "train.progress=off",
                f"train.checkpoint_every={10**9}", f"train.threads={threads}", f"device={device.type}", f"optim={opts.optim}",
                # speed does not depend on lr; a small one keeps every variant finite, since
                # a diverged run would stop (a) early at its divergence check
                "optim.lr=0.01",
            ]  # fmt: skip
            cfgs = {}
            for norm in opts.norms:
                cfgs[norm, "run"] = compose(common + [f"norm={norm}", f"train.steps={steps}", "train.eval_every=0"])
                cfgs[norm, "warm"] = with_steps(cfgs[norm, "run"], max(1, min(50, steps // 10)))
            data = data_lib.load(cfgs[opts.norms[0], "run"].data, device)
            conv_ds, conv_note = (None, "") if "c" in opts.skip else conventional_dataset(cfgs[opts.norms[0], "run"], kind, data)
            if conv_ds is None and conv_note:
                notes.append(f"{m}: {conv_note}")
            fns: dict[str, Callable[[RunConfig, str], Timing]] = {
                "bnstudy": lambda c, tag: run_bnstudy(c, tmp / f"a-{m}-{tag}"),
                "bare": lambda c, tag: run_bare(c),
            }
            if conv_ds is not None:
                fns["conventional"] = lambda c, tag: run_conventional(c, conv_ds)
            names = list(fns)
            times: dict[str, dict[str, list[Timing]]] = {n: {c: [] for c in names} for n in opts.norms}
            for norm in opts.norms:  # warm-up: data, allocator, kernel caches
                for c in names:
                    fns[c](cfgs[norm, "warm"], "warm")
            for r in range(opts.repeats):
                log(f"{m} on {label}: repeat {r + 1}/{opts.repeats}")
                order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
                for norm in opts.norms:
                    for c in order:
                        times[norm][c].append(fns[c](cfgs[norm, "run"], f"{norm}-{r}"))
            rows += [_row(m, norm, label, steps, times[norm]) for norm in opts.norms]
    return rows, notes
