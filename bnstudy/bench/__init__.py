"""``bnstudy-bench``: how fast is bnstudy's training path, and where does the time outside it go?

For each model x norm on the model's default dataset, three contenders train
the same network (same init, optimizer, batch size and torch threads):

(a) ``bnstudy``: :func:`bnstudy.train.train_run`, the path ``bnstudy-train`` runs;
(b) ``bare``: a minimal loop over the same preloaded tensors (the compute bound);
(c) ``conventional``: a torchvision dataset + ``DataLoader(shuffle=True)`` loop.

Contenders run round-robin (rotating order) for several repeats and report
medians, so machine noise hits all alike. Then (d) evaluation cost at the
default interval, (e) data load times and (f) per-job overhead of a sweep.
Targets are printed with PASS/MISS, never asserted.

Two more cases: ``--case busy`` (:mod:`~bnstudy.bench.busy`: the default thread
policy beside a CPU-bound neighbour) and ``--case full`` (:mod:`~bnstudy.bench.full`:
full-width ResNet-20 and VGG-11, MFU, concurrent runs on one GPU).

Example: ``bnstudy-bench --quick`` (under a minute) or ``bnstudy-bench --models vgg --norms bn,none``.
"""
from __future__ import annotations

from bnstudy.bench.cli import main, parse, run
from bnstudy.bench.common import CASES, QUICK_MODELS, TARGETS, Check, Options
from bnstudy.bench.extras import bench_eval, bench_loads, bench_sweep
from bnstudy.bench.output import CSV_COLUMNS

__all__ = [
    "CASES", "CSV_COLUMNS", "QUICK_MODELS", "TARGETS", "Check", "Options",
    "bench_eval", "bench_loads", "bench_sweep", "main", "parse", "run",
]  # fmt: skip
