"""The busy-machine case: does the default thread policy survive a CPU-bound neighbour?

Each contender trains in a fresh process (OpenMP reads its wait policy when
torch loads, so only a new process shows a policy's real behaviour):

- ``default``: ``bnstudy-train`` as users run it, no ``train.threads``;
- ``threads=1``: the same with ``train.threads=1``;
- ``old default``: torch imported before bnstudy (OpenMP's own busy-waiting)
  and torch's default thread count, which is what the default was before
  :mod:`bnstudy.threads`.

Each runs alone (quiet) and beside a neighbour, ``python -c "while True: pass"``
pinned to one core, which the bench starts and kills by pid. Rounds are
interleaved so the machine's own noise hits all contenders alike.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bnstudy.bench.common import CASES, Check, Options, data_kind, data_overrides, log

BUSY_MODELS = ("mlp", "cnn")
BUSY_STEPS = {"mlp": (1000, 100), "cnn": (10, 2)}  # (full, quick) steps per run
CONTENDERS = ("default", "threads=1", "old default")

_WORKER = """
import json, sys, tempfile
{pre}from bnstudy.bench.common import compose
from bnstudy.train import train_run
cfg = compose(sys.argv[1:])
with tempfile.TemporaryDirectory() as d:
    s = train_run(cfg, d)
print(json.dumps({{"seconds": s["seconds"], "step": s["step"], "threads": s["provenance"]["threads"], "why": s["provenance"]["threads_why"]}}))
"""


@contextmanager
def neighbour(core: int | None = 0) -> Iterator[int]:
    """A CPU-bound process on ``core`` (where affinity can be set), killed by pid on exit."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        if core is not None and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(p.pid, {sorted(os.sched_getaffinity(0))[core]})
            except (OSError, IndexError):
                pass  # an unpinned neighbour still competes for the cores
        yield p.pid
    finally:
        p.kill()
        p.wait()


def train_once(contender: str, overrides: list[str]) -> dict:
    """One training run of ``contender`` in a fresh process: its training seconds, steps and thread count."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the policy decides, not the caller
    # old default: libgomp loads before bnstudy can set its wait policy, and torch's own thread count
    pre = "import torch\nsys.argv.append(f'train.threads={torch.get_num_threads()}')\n" if contender == "old default" else ""
    extra = ["train.threads=1"] if contender == "threads=1" else []
    p = subprocess.run([sys.executable, "-c", _WORKER.format(pre=pre), *overrides, *extra], env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"{contender} run failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_busy(opts: Options) -> tuple[list[dict], list[Check]]:
    """Rows (model, load, contender, median seconds, threads) and the PASS/MISS ratios of the busy case."""
    rows, checks = [], []
    for m in [m for m in BUSY_MODELS if m in opts.models] or list(BUSY_MODELS):
        case = CASES[m]
        kind, _ = data_kind(case.data, opts.data, __import__("torch").device("cpu"))
        steps = opts.steps or BUSY_STEPS[m][1 if opts.quick else 0]
        overrides = [
            f"model={m}", *data_overrides(case.data, kind), f"train.batch_size={case.batch_size}", f"train.steps={steps}",
            "train.eval_every=0", "train.progress=off", f"train.checkpoint_every={10**9}", "device=cpu", "optim.lr=0.01",
        ]  # fmt: skip
        secs: dict[tuple[str, str], list[float]] = {}
        info: dict[str, dict] = {}
        for r in range(opts.repeats):
            order = CONTENDERS[r % 3 :] + CONTENDERS[: r % 3]
            for load in ("quiet", "busy"):
                log(f"busy case {m}: repeat {r + 1}/{opts.repeats}, {load}")
                for c in order:
                    if load == "busy":
                        with neighbour():
                            out = train_once(c, overrides)
                    else:
                        out = train_once(c, overrides)
                    secs.setdefault((load, c), []).append(out["seconds"])
                    info[c] = out
        med = {k: statistics.median(v) for k, v in secs.items()}
        for (load, c), s in med.items():
            rows.append({"model": m, "load": load, "contender": c, "seconds": s, "steps": steps, "threads": info[c]["threads"], "why": info[c]["why"]})
        checks.append(Check(f"{m} busy default / threads=1", med["busy", "threads=1"] / med["busy", "default"], f"speed ratio under 1 neighbour, {steps} steps"))
        checks.append(Check(f"{m} quiet default / old default", med["quiet", "old default"] / med["quiet", "default"], "speed ratio, no neighbour"))
        checks.append(Check(f"{m} busy old default / threads=1", med["busy", "threads=1"] / med["busy", "old default"], "the problem the policy solves"))
    return rows, checks


def print_busy(rows: list[dict]) -> None:
    """Seconds per contender, quiet and beside a neighbour, one line per model."""
    print("\nbusy machine: training seconds (median), fresh process per run; busy = one CPU-bound neighbour on core 0")
    head = f"{'model':<6}{'steps':>6}  " + "".join(f"{load + ' ' + c:>22}" for load in ("quiet", "busy") for c in CONTENDERS)
    print(head)
    print("-" * len(head))
    for m in dict.fromkeys(r["model"] for r in rows):
        mine = {(r["load"], r["contender"]): r for r in rows if r["model"] == m}
        cells = "".join(f"{mine[load, c]['seconds']:>22.2f}" for load in ("quiet", "busy") for c in CONTENDERS)
        print(f"{m:<6}{next(iter(mine.values()))['steps']:>6}  {cells}")
    for r in rows:
        if r["load"] == "quiet" and r["contender"] == "default":
            print(f"  {r['model']} default: torch threads {r['threads']} ({r['why']})")


def write_busy(rows: list[dict], out: Path) -> None:
    """busy.csv: one row per model x load x contender."""
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "busy.csv", index=False)
