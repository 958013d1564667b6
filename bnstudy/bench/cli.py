"""The ``bnstudy-bench`` command line: parse, run the chosen cases, print and write their results."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bnstudy.bench.common import CASES, QUICK_MODELS, Check, Options, load_avg, log

CASE_NAMES = ("speed", "busy", "full", "precision")
DESCRIPTION = "how fast is bnstudy's training path, and where does the time outside it go? (cases: speed, busy, full, precision)"


def parse(argv: list[str] | None = None) -> Options:
    """Command line -> :class:`Options` (``--quick`` shrinks everything to under a minute)."""
    p = argparse.ArgumentParser(prog="bnstudy-bench", description=DESCRIPTION)
    p.add_argument("--case", default="speed", help=f"comma-separated, of: {','.join(CASE_NAMES)} (default speed)")
    p.add_argument("--quick", action="store_true", help="mlp + cnn, few steps, light (e)/(f); full width: 1 step, batch 128, no compile")
    p.add_argument("--models", help=f"comma-separated, of: {','.join(CASES)} (default: all; --quick: {','.join(QUICK_MODELS)})")
    p.add_argument("--norms", default="bn,affine,none", help="comma-separated norm variants (default: bn,affine,none)")
    p.add_argument("--optim", default="sgd", choices=["sgd", "adam", "adamw"], help="optimizer of every contender (default sgd)")
    p.add_argument("--steps", type=int, help="optimizer steps per measured run, for every model (default: per model)")
    p.add_argument("--repeats", type=int, help="round-robin repeats; medians are reported (default 3)")
    p.add_argument("--data", choices=["auto", "synthetic"], default="auto", help="auto: real data where it loads, else synthetic")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for every contender (default: torch.get_num_threads())")
    p.add_argument("--skip", default="", help="comma-separated parts of the speed case to leave out: c, d, e, f")
    p.add_argument("--peak-tflops", type=float, help="the device's bf16 peak for MFU (default: a table of known GPUs)")
    p.add_argument("--concurrent", default="1,4,8", help="full case: numbers of concurrent runs on one device (default 1,4,8)")
    p.add_argument("--out", default="results/bench", help="folder for the csv files and bench.png")
    a = p.parse_args(argv)
    cases = {c.strip() for c in a.case.split(",") if c.strip()}
    if not cases or cases - set(CASE_NAMES):
        p.error(f"--case takes {', '.join(CASE_NAMES)} (comma-separated)")
    models = a.models.split(",") if a.models else list(QUICK_MODELS if a.quick else CASES)
    bad = [m for m in models if m not in CASES]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(CASES)}")
    if a.steps is not None and a.steps < 1:
        p.error("--steps must be >= 1")
    if a.peak_tflops is not None and a.peak_tflops <= 0:
        p.error("--peak-tflops must be > 0")
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if skip - set("cdef"):
        p.error("--skip takes c, d, e and/or f")
    try:
        concurrent = [int(n) for n in a.concurrent.split(",") if n.strip()]
    except ValueError:
        concurrent = []
    if not concurrent or min(concurrent) < 1:
        p.error("--concurrent takes positive integers, e.g. 1,4,8")
    return Options(
        quick=a.quick, models=models, norms=[n for n in a.norms.split(",") if n], steps=a.steps, repeats=a.repeats or 3,
        data=a.data, device=a.device, out=Path(a.out), threads=a.threads, optim=a.optim, skip=skip, cases=cases,
        peak_tflops=a.peak_tflops, concurrent=concurrent,
    )  # fmt: skip


def run(opts: Options) -> tuple[list[dict[str, Any]], list[Check]]:
    """Measure every case ``opts`` asks for; write its files; print the results. Returns the speed rows and all checks."""
    from bnstudy.bench import busy, extras, full, output, precision
    from bnstudy.bench.contenders import bench_contenders
    from bnstudy.train import resolve_device

    device = resolve_device(opts.device)
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    load_before = load_avg()
    opts.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    checks: list[Check] = []
    rows: list[dict[str, Any]] = []
    busy_rows: list[dict] = []
    full_rows: list[dict] = []
    precision_rows: list[dict] = []
    notes: list[str] = []
    written = []
    with tempfile.TemporaryDirectory(prefix="bnstudy-bench-") as td:
        tmp = Path(td)
        if "speed" in opts.cases:
            if "e" not in opts.skip and opts.data == "auto":
                log("(e) data load times")
                checks += extras.bench_loads(opts)  # first: a missing CIFAR cache is decoded (and timed) here, once
            if "d" not in opts.skip:
                log("(d) evaluation cost")
                checks += extras.bench_eval(opts, tmp, device, threads)
            rows, notes = bench_contenders(opts, tmp, device, threads)
            if "f" not in opts.skip:
                log("(f) sweep overhead")
                checks += extras.bench_sweep(opts, tmp)
            checks = output.contender_checks(rows) + checks
            output.plot(rows, opts.out / "bench.png")
            written += ["bench.csv", "bench.png"]
        if "busy" in opts.cases:
            busy_rows, busy_checks = busy.bench_busy(opts)
            checks += busy_checks
            busy.write_busy(busy_rows, opts.out)
            written.append("busy.csv")
        if "full" in opts.cases:
            full_rows, full_checks = full.bench_full(opts, tmp, device, threads)
            checks += full_checks
            import pandas as pd

            pd.DataFrame(full_rows).to_csv(opts.out / "full.csv", index=False)
            written.append("full.csv")
        if "precision" in opts.cases:
            precision_rows, precision_checks = precision.bench_precision(opts, tmp, device, threads)
            checks += precision_checks
            import pandas as pd

            pd.DataFrame(precision_rows).to_csv(opts.out / "precision.csv", index=False)
            written.append("precision.csv")
    output.write_csv(rows, checks, opts.out)
    written.append("checks.csv")

    load_after, cores = load_avg(), os.cpu_count() or 1
    print(
        f"bnstudy-bench: device {device}, {threads} torch threads, {cores} cores, repeats {opts.repeats}, optim {opts.optim}"
        f"{', quick' if opts.quick else ''}; load average {load_before:.1f} before, {load_after:.1f} after"
    )
    if max(load_before, load_after) > cores and threads > 1:
        print(f"  warning: the load exceeds the {cores} cores: multi-threaded timings are erratic here; --threads 1 is steadier")
    if rows:
        output.print_table(rows)
    for n in notes:
        print(f"  note: {n}")
    if busy_rows:
        busy.print_busy(busy_rows)
    if full_rows:
        full.print_full(full_rows)
    if precision_rows:
        precision.print_precision(precision_rows)
    print("\ntargets (printed, not asserted)")
    for c in checks:
        print(c.line())
    print(f"\nwrote {', '.join(str(opts.out / w) for w in written)} in {time.perf_counter() - t_start:.0f} s")
    return rows, checks


def main(argv: list[str] | None = None) -> None:
    """``bnstudy-bench``: see :mod:`bnstudy.bench`."""
    run(parse(argv))
