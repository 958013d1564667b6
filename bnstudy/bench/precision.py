"""The precision case: full-width ResNet-20 at batch 128 in fp32, fp32 + channels_last, bf16 autocast, and bf16 + channels_last, on this device.

ResNet-20 with He init and zero-initialised residual branches, the setting every
variant trains in. Per norm variant and setting it reports images/s of bnstudy's path (a) and of
the bare loop over the same build (b), their ratio, and the speed-up of each
setting over fp32 (a over a). Then the aggregate of two runs side by side with
one thread each (the way long CPU studies run), in fp32, fp32 + channels_last
and bf16 + channels_last. Targets: a/b >= 0.9 in every row, bf16 + channels_last >= 1.8x
fp32. On a CPU without native bf16 the bf16 rows are left out (``train.amp``
is refused there) and the case says why.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bnstudy.bench.common import Check, Options, compose, data_kind, data_overrides, log, unsupported
from bnstudy.bench.contenders import median, run_bare, run_bnstudy
from bnstudy.bench.full import FULL, concurrent_runs

SETTINGS = {
    "fp32": [],
    "channels_last": ["train.channels_last=true"],  # the fastest setting left where bf16 is refused
    "bf16": ["train.amp=true"],
    "bf16+channels_last": ["train.amp=true", "train.channels_last=true"],
}
BATCH = 128


def _overrides(kind: str, norm: str, steps: int, threads: int, device: torch.device) -> list[str]:
    return [
        # zero-initialised branches: without them affine and none diverge at the first steps (§15 of results/README.md),
        # and a diverged run's few steps time its start-up, not its steps
        *FULL["resnet"], "model.init=he", "model.zero_init_residual=true", f"norm={norm}", *data_overrides("cifar10_jpeg", kind, train_size=4 * BATCH),
        f"train.batch_size={BATCH}", f"train.steps={steps}", "train.eval_every=0", "train.progress=off",
        f"train.checkpoint_every={10**9}", f"train.threads={threads}", f"device={device.type}", "optim.lr=0.01",
        "optim.momentum=0.9",
    ]  # fmt: skip


def bench_precision(opts: Options, tmp: Path, device: torch.device, threads: int) -> tuple[list[dict], list[Check]]:
    """Rows (norm, setting, images/s of a and b, a/b, speed-up over fp32) and the checks of the precision case."""
    kind, _ = data_kind("cifar10_jpeg", opts.data, device)
    steps = opts.steps or (2 if opts.quick else 20)
    why = unsupported(device)
    settings = {k: v for k, v in SETTINGS.items() if not (why and "train.amp=true" in v)}
    if why:
        log(f"precision: bf16 rows left out: {why}")
    rows: list[dict] = []
    for norm in opts.norms:
        base = _overrides(kind, norm, steps, threads, device)
        for name, extra in settings.items():
            cfg = compose(base + extra)
            warm = compose(base + extra + ["train.steps=2"])
            run_bnstudy(warm, tmp / "precision-warm")  # oneDNN picks and caches its kernels on the first steps
            run_bare(warm)
            ta, tb = [], []
            for r in range(opts.repeats):
                log(f"precision {norm} {name}: repeat {r + 1}/{opts.repeats}")
                ta.append(run_bnstudy(cfg, tmp / f"precision-{norm}-{name}-{r}"))
                tb.append(run_bare(cfg))
            a, b = median(ta, "ips"), median(tb, "ips")
            rows.append({"kind": "one run", "norm": norm, "setting": name, "threads": threads, "steps": steps,
                         "ips_bnstudy": a, "ips_bare": b, "ratio_a_b": a / b})  # fmt: skip
        fp32 = next(r["ips_bnstudy"] for r in rows if r["norm"] == norm and r["setting"] == "fp32")
        for r in rows:
            if r["norm"] == norm:
                r["speedup"] = r["ips_bnstudy"] / fp32
    checks = [Check("precision a/b", min(r["ratio_a_b"] for r in rows), "lowest row: every setting and norm")]
    for r in rows:
        if r["setting"] != "fp32":
            checks.append(Check(f"{r['setting']} / fp32", r["speedup"], f"{r['norm']}, {r['ips_bnstudy']:,.0f} img/s"))
    if not opts.quick:
        rows += _side_by_side(opts, kind, device, settings)
    return rows, checks


def _side_by_side(opts: Options, kind: str, device: torch.device, settings: dict[str, list[str]]) -> list[dict]:
    # two bnstudy runs with one thread each, started together: the aggregate a 2-core machine gets from two jobs
    norm, steps = opts.norms[0], opts.steps or 20
    out, fp32 = [], None
    for name in [n for n in ("fp32", "channels_last", "bf16+channels_last") if n in settings]:
        log(f"precision {norm} {name}: 2 runs x 1 thread side by side")
        agg, _ = concurrent_runs(2, _overrides(kind, norm, steps, 1, device) + settings[name])
        fp32 = agg if name == "fp32" else fp32
        out.append({"kind": "2 runs x 1 thread", "norm": norm, "setting": name, "threads": 1, "steps": steps,
                    "ips_bnstudy": agg, "ips_bare": float("nan"), "ratio_a_b": float("nan"),
                    "speedup": agg / fp32 if fp32 else float("nan")})  # fmt: skip
    return out


def print_precision(rows: list[dict]) -> None:
    """images/s, a/b and the speed-up over fp32, per norm and setting."""
    print("\nprecision: full-width ResNet-20, batch 128, images/s (median; a = bnstudy.train_run, b = bare loop, same build)")
    head = f"{'runs':<19}{'norm':<8}{'setting':<20}{'threads':>8}{'a img/s':>10}{'b img/s':>10}{'a/b':>6}{'vs fp32':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        b = "-" if r["ips_bare"] != r["ips_bare"] else f"{r['ips_bare']:,.0f}"
        ab = "-" if r["ratio_a_b"] != r["ratio_a_b"] else f"{r['ratio_a_b']:.2f}"
        print(f"{r['kind']:<19}{r['norm']:<8}{r['setting']:<20}{r['threads']:>8}{r['ips_bnstudy']:>10,.0f}{b:>10}{ab:>6}"
              f"{r['speedup']:>8.2f}x")  # fmt: skip
