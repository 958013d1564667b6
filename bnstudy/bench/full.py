"""Full-width cases: ResNet-20 (width 16) and VGG-11 (width 64) at batch 128 and 512, with
``train.amp``, ``train.channels_last`` and ``train.compile`` off and on.

Reports images/s of bnstudy's path (a) and a bare loop (b) over the same build,
the model FLOP utilisation (MFU: achieved FLOP/s over the device's bf16 peak,
FLOPs counted by :func:`bnstudy.flops.step_flops`), and the aggregate
throughput of 1, 4 and 8 concurrent runs on one device. On a CPU it runs with
short runs (``--quick``: one step, batch 128, no compile) so the code path stays tested;
the figures that matter come from a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bnstudy.bench.common import Check, Options, compose, data_kind, data_overrides, log, unsupported
from bnstudy.bench.contenders import median, run_bare, run_bnstudy
from bnstudy.flops import step_flops

FULL = {"resnet": ["model=resnet", "model.depth=20", "model.width=16"], "vgg": ["model=vgg", "model.width=64"]}
BATCHES = (128, 512)
# Dense bf16 peak in TFLOP/s by device name; measured where said. Others: --peak-tflops.
PEAK_TFLOPS = {"H200": 790.0}  # measured matmul peak of an H200 (the spec sheet's dense figure is ~989)
TOGGLES = {
    "plain": [],
    "amp": ["train.amp=true"],
    "channels_last": ["train.channels_last=true"],
    "amp+channels_last": ["train.amp=true", "train.channels_last=true"],
    "compile": ["train.compile=true"],
    "all": ["train.amp=true", "train.channels_last=true", "train.compile=true"],
}


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """bf16 peak of ``device``: ``--peak-tflops`` if given, else the table by device name, else None."""
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no bf16 peak for a CPU: pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf, f"{name} (table)"
    return None, f"{name} not in the table: pass --peak-tflops"


def _overrides(m: str, bs: int, kind: str, device: torch.device, steps: int, threads: int) -> list[str]:
    return [
        *FULL[m], *data_overrides("cifar10_jpeg", kind, train_size=max(2048, 2 * bs)), f"train.batch_size={bs}",
        f"train.steps={steps}", "train.eval_every=0", "train.progress=off", f"train.checkpoint_every={10**9}",
        f"train.threads={threads}", f"device={device.type}", "optim.lr=0.01", "optim.momentum=0.9",
    ]  # fmt: skip


def bench_full(opts: Options, tmp: Path, device: torch.device, threads: int) -> tuple[list[dict], list[Check]]:
    """Rows (model, batch, toggles, images/s of a and b, a/b, MFU) and the checks of the full-width case."""
    kind, _ = data_kind("cifar10_jpeg", opts.data, device)
    cpu = device.type == "cpu"
    steps = opts.steps or (1 if opts.quick else (3 if cpu else 50))
    batches = (128,) if opts.quick else BATCHES
    why = unsupported(device)
    toggles = {k: v for k, v in TOGGLES.items() if not (opts.quick and "train.compile=true" in v) and not (why and "train.amp=true" in v)}
    if why:
        log(f"full: amp rows left out: {why}")
    models = [m for m in opts.models if m in FULL] or list(FULL)
    peak, peak_note = peak_tflops(device, opts.peak_tflops)
    rows, checks = [], []
    for m in models:
        for bs in batches:
            base = _overrides(m, bs, kind, device, steps, threads)
            cfg0 = compose(base)
            flops = step_flops(cfg0.model, cfg0.norm, (3, 32, 32), 10, bs)
            for name, extra in toggles.items():
                cfg = compose(base + extra)
                warm = compose(base + extra + ["train.steps=1"])
                run_bnstudy(warm, tmp / "full-warm")  # compile, cuDNN autotune, allocator
                run_bare(warm)
                ta, tb = [], []
                for r in range(opts.repeats):
                    log(f"full {m} bs {bs} {name}: repeat {r + 1}/{opts.repeats}")
                    ta.append(run_bnstudy(cfg, tmp / f"full-{m}-{bs}-{name}-{r}"))
                    tb.append(run_bare(cfg))
                a, b = median(ta, "ips"), median(tb, "ips")
                mfu = a * flops / bs / (peak * 1e12) if peak else float("nan")
                rows.append({"model": m, "batch_size": bs, "toggles": name, "steps": steps, "ips_bnstudy": a, "ips_bare": b,
                             "ratio_a_b": a / b, "gflop_per_step": flops / 1e9, "mfu": mfu})  # fmt: skip
                log(f"full {m} bs {bs} {name}: {a:,.0f} img/s (bare {b:,.0f}, a/b {a / b:.2f}, MFU {mfu:.3f})")  # kept if cut off
    for m in models:
        best = max((r for r in rows if r["model"] == m), key=lambda r: r["ips_bnstudy"])
        checks.append(Check(f"{m} full a/b", best["ratio_a_b"], f"fastest setting: bs {best['batch_size']} {best['toggles']}, {best['ips_bnstudy']:,.0f} img/s"))
        if peak:
            checks.append(Check(f"{m} full MFU", best["mfu"], f"of {peak:g} TFLOP/s bf16 ({peak_note})"))
        else:
            checks.append(Check(f"{m} full MFU", None, peak_note))
    if "resnet" in models and not opts.quick:
        checks += bench_concurrent(opts, device, kind)
    return rows, checks


_WORKER = """
import json, sys, tempfile
from bnstudy.bench.common import compose
from bnstudy.train import train_run
cfg = compose(sys.argv[1:])
with tempfile.TemporaryDirectory() as d:
    s = train_run(cfg, d)
print(json.dumps({"seconds": s["seconds"], "images": s["step"] * cfg.train.batch_size}))
"""


def concurrent_runs(n: int, overrides: list[str]) -> tuple[float, float]:
    """(aggregate images/s, wall seconds) of ``n`` bnstudy runs started together on one device."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=3600) for p in procs]
    wall = time.perf_counter() - t0
    bad = [err for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    if bad:
        raise RuntimeError(f"a concurrent run failed: {(bad[0].strip().splitlines() or ['?'])[-1]}")
    res = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    # each run's training interval overlaps the others' (same work, started together): their rates add up
    return sum(r["images"] / r["seconds"] for r in res), wall


def bench_concurrent(opts: Options, device: torch.device, kind: str) -> list[Check]:
    """Aggregate throughput of 1, 4, 8 concurrent ResNet-20 runs (batch 128, amp + channels_last on CUDA)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    steps = opts.steps or (3 if device.type == "cpu" else 300)
    extra = ["train.amp=true", "train.channels_last=true"] if device.type == "cuda" else []
    agg = {}
    for n in opts.concurrent:
        log(f"full resnet: {n} concurrent run(s)")
        agg[n], wall = concurrent_runs(n, _overrides("resnet", 128, kind, device, steps, max(1, cores // n)) + extra)
        log(f"full resnet: {n} concurrent run(s): {agg[n]:,.0f} img/s in all ({wall:.0f} s wall)")
    checks = [Check(f"resnet x{n} concurrent img/s", v, f"{steps} steps each") for n, v in agg.items()]
    if 1 in agg and 8 in agg:
        checks.append(Check("resnet x8 concurrent / x1", agg[8] / agg[1], "aggregate throughput, 8 runs vs 1"))
    return checks


def print_full(rows: list[dict]) -> None:
    """Images/s, a/b and MFU per model x batch x toggles."""
    print("\nfull width: images/s (median; a = bnstudy.train_run, b = bare loop on the same build)")
    head = f"{'model':<7}{'bs':>5}  {'toggles':<18}{'steps':>6}{'a img/s':>11}{'b img/s':>11}{'a/b':>6}{'GFLOP/step':>11}{'MFU':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        mfu = "-" if r["mfu"] != r["mfu"] else f"{100 * r['mfu']:.1f}%"
        print(f"{r['model']:<7}{r['batch_size']:>5}  {r['toggles']:<18}{r['steps']:>6}{r['ips_bnstudy']:>11,.0f}{r['ips_bare']:>11,.0f}"
              f"{r['ratio_a_b']:>6.2f}{r['gflop_per_step']:>11.1f}{mfu:>7}")  # fmt: skip
