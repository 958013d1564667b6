"""``bnstudy-runs DIR --reproduce N``: re-train a sample of committed runs for their first steps and compare every logged value.

Code fingerprints (``--stale``) say whether the code that *could* change a
number differs; this says whether the numbers themselves still come out the
same. Each sampled run is re-trained from its own config.yaml in a temporary
folder, on the CPU, with the thread count its summary recorded. The config is
trained as it is (``train.steps`` untouched, so the schedule and the
evaluation points are the committed ones) and stopped after step S by a hook
that raises the trainer's stop request; every metrics.csv row with step <= S
is then compared with the committed row of the same (step, split, metric).
"""
from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bnstudy.provenance import first_machine, recorded_segments

DEFAULT_STEPS = 300
FINISHED = ("completed", "diverged")  # runs whose metrics.csv is final; others may still be written
# Within float tolerance: every value but an accuracy within REL_TOL relative (plus ABS_TOL, for
# values near zero); an accuracy within one example of its split (the loss of one more or one fewer
# correct answer). The tolerance only says the difference is rounding-sized, e.g. another
# summation order; a bit-identical run is reported as such.
REL_TOL = 1e-5
ABS_TOL = 1e-9
ACC_TOL_UNKNOWN = 1e-4  # one example in 10 000, when the split's size is not known


@dataclass
class Outcome:
    """What one sampled run gave: verdict ("bit-identical", "within tolerance", "different", "not checked", "damaged") and why."""

    rel: str
    verdict: str
    detail: str
    seconds: float = 0.0


# ---------------------------------------------------------------- reading committed runs


def read_metrics(path: Path) -> pd.DataFrame:
    """A metrics.csv as a DataFrame; values parse back to the exact float64 that ``repr`` wrote."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in ("step", "value"):
        df[c] = pd.to_numeric(df[c], errors="coerce")  # exact for repr's digits; 'nan' and 'inf' stay floats
    return df


def committed_runs(root: Path) -> Iterator[Any]:
    """Every run under ``root``, packed or in folders."""
    from bnstudy.archive import iter_runs

    return iter_runs(Path(root))


def _summary(record: Any) -> dict[str, Any]:
    s = record.summary  # None in an archive record whose summary.json is unreadable
    return s if isinstance(s, dict) else {}


def sample(runs: list[Any], n: int, seed: int) -> list[Any]:
    """``n`` finished runs drawn without replacement by ``random.Random(seed)`` from the runs sorted by path."""
    finished = sorted((r for r in runs if _summary(r).get("status") in FINISHED), key=lambda r: r.rel)
    return random.Random(seed).sample(finished, min(n, len(finished)))


# ---------------------------------------------------------------- re-training


def rebuild(record: Any) -> Any:
    """The run's RunConfig set up for a CPU re-run, or a string saying why its config cannot be rebuilt."""
    from bnstudy.config import RunConfig, run_name
    from bnstudy.errors import ConfigError

    from bnstudy.plugins import load, recorded

    conf = {k: v for k, v in (record.config or {}).items() if k != "hydra"}
    if not conf:
        return "no config.yaml"
    try:
        cfg = RunConfig.from_dict(conf)
        load(cfg.plugins, recorded(_summary(record)))  # its variant's plugin: here, else where the run found it
        name = run_name(cfg.to_dict())
    except (ConfigError, TypeError, ValueError) as e:
        return f"config.yaml does not build a run config ({e})"
    # A key the config lacks is filled with today's default; the run name's hash shows whether
    # that default is what trained the run. (A run without a recorded name is taken as it is.)
    recorded = _summary(record).get("run")
    if isinstance(recorded, str) and recorded != name:
        return f"config.yaml rebuilds as {name}, not the recorded {recorded} (missing or changed keys)"
    # the count the run used (provenance), else the one its config asked for, else 1
    threads = (_summary(record).get("provenance") or {}).get("threads")
    if not (isinstance(threads, int) and threads > 0):
        threads = cfg.train.threads if cfg.train.threads > 0 else 1
    cfg.train.threads = threads
    cfg.device = "cpu"
    cfg.train.progress = "off"
    cfg.train.compile = False  # eager on the CPU: compiling costs more than a few hundred steps
    cfg.logger.tensorboard = cfg.logger.mlflow = False  # a check writes to no tracker
    cfg.logger.mlflow_uri = ""
    cfg.force = False  # a fresh folder: nothing to resume from
    return cfg


def _stop_hook(steps: int, stop: Any, sizes: dict[str, int]) -> Any:
    """A hook that asks the loop to stop once ``steps`` steps are done (it also notes the eval splits' sizes)."""
    from bnstudy.train import Hook

    def fn(state: Any) -> None:
        d = state.data
        sizes["test"] = int(d.test_x.shape[0])
        if d.val_x is not None:
            sizes["val"] = int(d.val_x.shape[0])
        if state.step >= steps:
            stop.set(f"reproduce: first {steps} steps done")

    # every=steps: the loop's hook points come at multiples of each hook's period, so this
    # one fires at step S exactly, after the config's own hooks of that step have logged.
    return Hook("reproduce-stop", steps, fn)


def retrain(cfg: Any, steps: int, run_dir: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Train ``cfg`` in ``run_dir`` until step ``steps`` (all steps if fewer); its metrics and eval split sizes."""
    from bnstudy import train as train_lib

    from bnstudy.train import Interrupted, StopRequest

    stop = StopRequest()
    sizes: dict[str, int] = {}
    try:  # extra hooks run after the config's own (log, eval, probes), so step S is logged in full
        train_lib.train_run(cfg, run_dir, extra_hooks=[_stop_hook(steps, stop, sizes)], stop=stop)
    except Interrupted:
        pass  # the stop this module asked for, after step S
    return read_metrics(run_dir / "metrics.csv"), sizes


# ---------------------------------------------------------------- comparing


def _rows(df: pd.DataFrame, steps: int) -> dict[tuple[int, str, str], float]:
    df = df[pd.to_numeric(df["step"], errors="coerce") <= steps]
    return {(int(s), str(sp), str(m)): float(v) for s, sp, m, v in zip(df["step"], df["split"], df["metric"], df["value"])}


def _tolerance(key: tuple[int, str, str], a: float, b: float, sizes: dict[str, int]) -> float:
    if key[2].endswith("acc"):
        n = sizes.get(key[1])
        return (1.0 / n if n else ACC_TOL_UNKNOWN) + 1e-12
    return REL_TOL * max(abs(a), abs(b)) + ABS_TOL


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def compare(committed: pd.DataFrame, fresh: pd.DataFrame, steps: int, sizes: dict[str, int]) -> tuple[str, str]:
    """(verdict, detail) for the rows with step <= ``steps`` of a committed and a re-trained metrics table.

    Every committed row must be logged again; rows only the re-run logs (a probe
    metric added since) are counted in the detail but judge nothing.
    """
    old, new = _rows(committed, steps), _rows(fresh, steps)
    worst: tuple[float, tuple[int, str, str]] | None = None
    for key in sorted(old, key=lambda k: k[0]):  # metrics.csv order within a step
        where = f"step {key[0]} {key[1]}/{key[2]}"
        if key not in new:
            return "different", f"first differing row: {where} = {old[key]!r} was logged, the re-run logged no such row"
        a, b = old[key], new[key]
        if _same(a, b):
            continue
        if not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > _tolerance(key, a, b, sizes):
            return "different", f"first differing row: {where} committed {a!r}, now {b!r}"
        rel = abs(a - b) / max(abs(a), abs(b))
        if worst is None or rel > worst[0]:
            worst = (rel, key)
    if not old:
        return "different", f"no rows with step <= {steps} to compare"
    extra = len(set(new) - set(old))
    more = f" (and {extra} row{'s' if extra != 1 else ''} the committed run did not log)" if extra else ""
    if worst is None:
        return "bit-identical", f"{len(old)} values{more}"
    rel, key = worst
    return "within tolerance", f"{len(old)} values{more}; largest relative difference {rel:.1e} at step {key[0]} {key[1]}/{key[2]}"


def _what_differs(summary: dict[str, Any]) -> str:
    """What the run recorded about its machine that differs from this one (the usual causes of rounding)."""
    import torch

    first = first_machine(summary)  # the machine of the steps re-trained, when a resume changed machines
    if not first:
        return ", trained before provenance was recorded (torch version and CPU kernels unknown)"
    now = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    diff = [f"{k} {first[k]} then, {v} now" for k, v in now.items() if isinstance(first.get(k), str) and first[k] != v]
    return "".join(f", {d}" for d in diff)


def damaged(record: Any) -> list[str]:
    """What ``bnstudy-runs --check`` finds damaged in one sampled run (a folder's or a pack's); empty: intact."""
    from bnstudy.archive import PackError
    from bnstudy.runs import check_record

    try:
        return check_record(record)
    except PackError as e:
        return [str(e)]


def reproduce_one(record: Any, steps: int, tmp: Path) -> Outcome:
    """Re-train one committed run for its first ``steps`` steps in a folder under ``tmp`` and compare it."""
    cfg = rebuild(record)
    if isinstance(cfg, str):
        return Outcome(record.rel, "not checked", cfg)
    t0 = time.perf_counter()
    try:
        committed = record.metrics()
    except Exception as e:  # noqa: BLE001 - unreadable metrics (a damaged file or pack) leave this run unchecked
        return Outcome(record.rel, "not checked", f"its metrics cannot be read ({type(e).__name__}: {e})")
    logged = pd.to_numeric(committed["step"], errors="coerce").dropna()
    if logged.empty:
        return Outcome(record.rel, "not checked", "its metrics.csv holds no rows")
    # S steps in which the run logs nothing would compare nothing: go on to its first logged step
    first = int(logged.min())
    s = min(max(steps, first), cfg.train.steps)
    longer = " (its first logged step)" if s > steps else ""
    try:
        fresh, sizes = retrain(cfg, s, tmp / record.rel)
    except Exception as e:  # noqa: BLE001 - one run that cannot train (no data here, ...) must not hide the others
        line = (str(e).strip().splitlines() or [""])[0]
        return Outcome(record.rel, "not checked", f"re-training failed: {type(e).__name__}: {line}", time.perf_counter() - t0)
    verdict, detail = compare(committed, fresh, s, sizes)
    threads = cfg.train.threads
    setting = f"{s} steps{longer}, {threads} thread{'s' if threads != 1 else ''}"
    if verdict != "bit-identical" and _may_be_avx2(_summary(record)):
        # Reductions and convolutions sum in another order under AVX-512 than under AVX2, and runs
        # trained before provenance recorded the kernels (those checked) came from AVX2 machines: try theirs.
        try:
            fresh, sizes = _retrain_in_child(cfg, s, tmp / "avx2" / record.rel, AVX2_ENV)
            again = compare(committed, fresh, s, sizes)
        except (OSError, RuntimeError, ValueError) as e:
            again = ("not checked", str(e))
        if again[0] == "bit-identical":
            verdict, detail = again[0], f"{again[1]}, with AVX2 kernels (not with this CPU's AVX-512 ones: {verdict})"
        else:
            detail += f"; with AVX2 kernels: {again[0]}" + (f", {again[1]}" if again[1] != detail else ", the same")
    if verdict != "bit-identical":
        setting += _what_differs(_summary(record))
    return Outcome(record.rel, verdict, f"{setting}: {detail}", time.perf_counter() - t0)


# the kernels of a CPU without AVX-512, for torch's own (ATen) and for oneDNN's (convolutions)
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _may_be_avx2(summary: dict[str, Any]) -> bool:
    """Whether this CPU runs AVX-512 kernels and the run was (or may have been) trained with AVX2 ones: it
    recorded AVX2 or nothing for its first steps, or it recorded no segments (a summary from before they
    were kept names only the machine that finished the run, which may have resumed it)."""
    import torch

    recorded = first_machine(summary).get("cpu_capability")  # of its first steps, the ones re-trained
    unknown = recorded_segments(summary) is None
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and (recorded in (None, "AVX2") or unknown)


def _retrain_in_child(cfg: Any, steps: int, run_dir: Path, env: dict[str, str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`retrain` in a fresh Python process under ``env`` (kernel choices are fixed when torch loads)."""
    import json
    import os
    import subprocess

    from bnstudy.plugins import load

    where = load(cfg.plugins)  # loaded by rebuild(): where each plugin was found, for the child to find it too
    arg = json.dumps({"config": cfg.to_dict(), "steps": steps, "run_dir": str(run_dir), "plugins": where})
    p = subprocess.run(
        [sys.executable, "-m", "bnstudy.reproduce", arg], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if p.returncode != 0:
        raise RuntimeError(f"re-training with {env} failed: {(p.stderr.strip().splitlines() or [''])[-1]}")
    return read_metrics(run_dir / "metrics.csv"), json.loads(p.stdout.strip().splitlines()[-1])


def main(root: Path, n: int, steps: int | None = None, seed: int = 0) -> int:
    """Print one line per sampled run and a final count; 1 if any run differs, is damaged (named, not re-trained) or
    could not be checked, 2 on bad input."""
    steps = DEFAULT_STEPS if steps is None else steps
    if n < 1 or steps < 1:
        print(f"error: --reproduce and --steps need a positive number (got {n} and {steps})", file=sys.stderr)
        return 2
    from bnstudy.archive_write import refuse_damaged

    refuse_damaged(root)  # a damaged pack is one line (exit 2), before anything is trained or written
    runs = list(committed_runs(Path(root)))
    picked = sample(runs, n, seed)
    if not picked:
        print(f"error: no finished runs under {root}; give a study folder holding completed runs", file=sys.stderr)
        return 2
    finished = sum(_summary(r).get("status") in FINISHED for r in runs)
    print(
        f"re-training {len(picked)} of {finished} finished runs under {root} (sample seed {seed}) "
        f"for their first {steps} steps on the CPU; tolerance: {REL_TOL:g} relative, accuracies within one example",
        file=sys.stderr,
    )
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bnstudy-reproduce-") as tmp:
        for record in picked:
            damage = damaged(record)
            if damage:  # its numbers or record cannot be trusted: nothing to compare a re-run with
                o = Outcome(record.rel, "damaged", f"not re-trained: {'; '.join(damage)}")
            else:
                o = reproduce_one(record, steps, Path(tmp))
            outcomes.append(o)
            print(f"{o.verdict:<16} {o.rel}  ({o.detail}; {o.seconds:.1f} s)", flush=True)
    counts = {v: sum(o.verdict == v for o in outcomes) for v in ("bit-identical", "within tolerance", "different", "not checked", "damaged")}
    bad = counts["different"] + counts["not checked"] + counts["damaged"]
    print(
        f"{len(outcomes)} run(s) re-trained: " + ", ".join(f"{c} {v}" for v, c in counts.items())
        + ("" if bad else " - the committed numbers reproduce"),
        file=sys.stderr,
    )
    if counts["within tolerance"] or counts["different"]:
        print(
            "bit-identity needs the run's code, torch version, thread count and CPU vector kernels "
            "(provenance.cpu_capability; AVX2 ones were tried where the run may have used them)",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":  # the child of _retrain_in_child: one JSON argument, the split sizes printed back
    import json

    from bnstudy.config import RunConfig

    from bnstudy.plugins import load

    _a = json.loads(sys.argv[1])
    load(_a["config"].get("plugins") or [], _a.get("plugins"))
    print(json.dumps(retrain(RunConfig.from_dict(_a["config"]), _a["steps"], Path(_a["run_dir"]))[1]))
