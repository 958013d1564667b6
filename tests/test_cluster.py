"""Sweeps on a real SLURM scheduler through ``hydra/launcher=slurm`` (``make test-cluster``).

``make test-cluster`` starts a single-node cluster on loopback (scripts/slurm_local.sh), runs
these tests and stops it; anywhere no SLURM answers they are skipped. The partition is
``$BNSTUDY_SLURM_PARTITION`` or the cluster's default one. Only the launcher's partition is
overridden: the defaults of conf/hydra/launcher/slurm.yaml must run on a plain CPU node.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

FAST = ["data=synthetic", "train.progress=off", "train.steps=20", "train.eval_every=10", "train.log_every=10"]
# a tiny MLP, ~5,000 steps/s on one core; 300,000 steps keep a job busy for a minute
TINY = [
    "data=synthetic", "train.progress=off", "model.depth=1", "model.width=16", "train.batch_size=16",
    "train.log_every=1000", "train.eval_every=50000", "train.checkpoint_every=100000",
]
LONG = [*TINY, "train.steps=300000"]


def _no_cluster() -> str | None:
    """None when a SLURM controller answers here, else why the tests are skipped."""
    if shutil.which("sinfo") is None:
        return "no SLURM client here (sinfo not found); `make test-cluster` starts a local cluster as root"
    if shutil.which("scontrol") is not None:  # answers at once where sinfo retries for seconds before it gives up
        try:
            ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        except subprocess.TimeoutExpired:
            return "scontrol ping did not answer within 15 s"
        if " is UP" not in ping.stdout:
            return f"no SLURM controller answers (scontrol ping: {(ping.stdout or ping.stderr).strip().splitlines()[0][:200]})"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if r.returncode != 0 or not r.stdout.strip():
        return f"no SLURM controller answers ({(r.stderr or r.stdout).strip()[:200]})"
    return None


pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def _cluster():
    """Skip unless a cluster answers (asked only when a test here is selected: sinfo may take seconds to fail)."""
    reason = _no_cluster()
    if reason is not None:
        pytest.skip(reason)


def partition() -> str:
    """The partition the tests submit to: $BNSTUDY_SLURM_PARTITION or the default one (marked * by sinfo)."""
    if os.environ.get("BNSTUDY_SLURM_PARTITION"):
        return os.environ["BNSTUDY_SLURM_PARTITION"]
    names = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0])


def slurm(out: Path, *extra: str) -> list[str]:
    """bnstudy-train arguments that send a sweep to the cluster."""
    return ["-m", f"out_dir={out}", "hydra/launcher=slurm", f"hydra.launcher.partition={partition()}", *extra]


STARTED: list[tuple[subprocess.Popen, Path]] = []  # (sweep command, its out_dir), cleaned up after each test


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A failed test leaves no command running and no job queued."""
    yield
    while STARTED:
        p, out = STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.communicate()
        jobs = sorted(array_jobs(out))
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m bnstudy.train ARGS`` in the background, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["BNSTUDY_DATA_DIR"] = str(cwd / "data")  # a private data folder; sbatch exports it to the jobs
    p = subprocess.Popen(
        [sys.executable, "-m", "bnstudy.train", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("out_dir=")), cwd)
    STARTED.append((p, out))
    return p


def finish(p: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for a :func:`start`-ed command; on timeout cancel its jobs and fail."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"no result after {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m bnstudy.train ARGS`` to the end."""
    return finish(start(args, cwd), timeout)


def metric_values(out: Path) -> dict[str, pd.DataFrame]:
    """Run folder -> its metrics.csv without the wall-clock column, keyed by the path under ``out``."""
    return {
        str(p.parent.relative_to(out)): pd.read_csv(p).drop(columns="seconds")
        for p in sorted(out.glob("*/seed*/metrics.csv"))
    }


def summaries(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.glob("*/seed*/summary.json"))}


def array_jobs(out: Path) -> set[str]:
    """SLURM job ids of the job arrays submitted for the sweep in ``out`` (submitit's folders)."""
    folders = (out / ".submitit").iterdir() if (out / ".submitit").is_dir() else []
    return {d.name.split("_")[0] for d in folders if d.name[:1].isdigit()}  # not submitit's temp folders


def steps_for(seconds: float, tmp: Path) -> int:
    """Steps of TINY that take ``seconds`` of training on one core of this machine (measured now)."""
    import torch
    from omegaconf import OmegaConf

    from bnstudy.config import RunConfig
    from bnstudy.train import train_run

    from .conftest import compose

    cfg = compose([*TINY, "train.steps=10000", "train.threads=1", f"out_dir={tmp}"])
    threads = torch.get_num_threads()
    took = []
    try:
        # the faster of two: a machine whose other work pauses for one of them is measured at its unloaded speed,
        # so a job that trains while that work pauses still needs ``seconds`` (one slow measurement under load gave
        # too few steps, and the job finished before the time limit's signal)
        for i in range(2):
            r = train_run(RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True)), tmp / f"calibration{i}")
            took.append(r["seconds"])
    finally:
        torch.set_num_threads(threads)
    return max(50_000, int(10_000 / min(took) * seconds) // 10_000 * 10_000)


def assert_same_metrics(a: Path, b: Path) -> None:
    ma, mb = metric_values(a), metric_values(b)
    assert ma.keys() == mb.keys() and ma
    for k in ma:
        pd.testing.assert_frame_equal(ma[k], mb[k], check_exact=True, obj=k)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A finished 2x2 sweep on the cluster (shared by the equality and the resubmission test)."""
    root = tmp_path_factory.mktemp("cluster")
    r = run(slurm(root / "slurm", *FAST, "norm=bn,none", "seed=0,1"), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def test_a_2x2_sweep_on_slurm_equals_the_basic_launcher(swept):
    # one torch thread, as each SLURM job has (cpus_per_task=1): float sums depend on the thread count
    r = run(["-m", f"out_dir={swept / 'basic'}", *FAST, "norm=bn,none", "seed=0,1", "train.threads=1"], cwd=swept)
    assert r.returncode == 0, r.stderr[-3000:]
    s = summaries(swept / "slurm")
    assert len(s) == 4 and {v["status"] for v in s.values()} == {"completed"}
    assert_same_metrics(swept / "slurm", swept / "basic")


def test_a_finished_sweep_resubmitted_runs_jobs_that_exit_at_once(swept):
    """Measured: the launcher submits every job again (one job array) and each job skips its run.

    Skipping happens inside the job, after SLURM starts it: a finished run costs one Python
    start-up, not a training, and nothing in its folder changes. On a 2-core node the second
    submission of the 2x2 sweep took ~23 s in all (4 jobs of 5-8 s, two at a time).
    """
    out = swept / "slurm"
    before, arrays = summaries(out), array_jobs(out)
    metrics = {p: p.read_bytes() for p in out.glob("*/seed*/metrics.csv")}
    t0 = time.monotonic()
    r = run(slurm(out, *FAST, "norm=bn,none", "seed=0,1"), cwd=swept)
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    new = array_jobs(out) - arrays
    assert len(new) == 1, f"one job array submitted, got {new}"
    logs = sorted((out / ".submitit").glob(f"{new.pop()}_*/*_log.out"))
    assert len(logs) == 4 and all("skipped" in p.read_text() for p in logs)
    assert summaries(out) == before and all(p.read_bytes() == b for p, b in metrics.items())
    assert seconds < 120, f"resubmitting a finished 2x2 sweep took {seconds:.0f} s"
    print(f"resubmitted finished sweep: 4 jobs submitted, each skipped its run; {seconds:.1f} s in all")


def test_a_time_limit_requeues_and_the_run_ends_as_if_uninterrupted(tmp_path):
    """timeout_min=1: SLURM sends USR2 30 to 60 s after the start (signal_delay_s is shortened to 1 s);
    the job stops between two steps, checkpoints, records itself interrupted and submitit requeues
    it; the next start resumes. The run needs 120 s of training by the calibration (the faster of two), so it is cut at least once
    even when the job trains twice as fast as the calibration measured (a machine whose load changes)."""
    steps = steps_for(120, tmp_path)
    args = [*TINY, f"train.steps={steps}"]
    sweep = start(slurm(tmp_path / "slurm", *args, "hydra.launcher.timeout_min=1"), cwd=tmp_path)
    # the same run with the basic launcher, meanwhile, on the other core
    ref = run(["-m", f"out_dir={tmp_path / 'basic'}", *args, "train.threads=1"], cwd=tmp_path, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    r = finish(sweep, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (key, s), = summaries(tmp_path / "slurm").items()
    assert s["status"] == "completed" and s["step"] == steps
    log = (tmp_path / "slurm" / key / "train.log").read_text()
    assert "interrupted" in log and "USR2" in log, f"{steps} steps finished before the time limit's signal"
    assert not (tmp_path / "slurm" / key / "checkpoint.pt").exists()
    assert_same_metrics(tmp_path / "slurm", tmp_path / "basic")


def test_scancel_leaves_an_interrupted_run_and_says_how_to_resume(tmp_path):
    """scancel sends SIGTERM: the job stops between two steps, checkpoints and writes its result, so
    the sweep ends at once (no waiting on sacct) with exit code 3, the run and the command to resume."""
    out = tmp_path / "slurm"
    sweep = start(slurm(out, *LONG), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/seed0/summary.json")):  # training has started
        assert time.monotonic() < deadline and sweep.poll() is None, "the job did not start"
        time.sleep(0.5)
    job = array_jobs(out).pop()
    subprocess.run(["scancel", job], check=True)
    r = finish(sweep, timeout=180)
    assert r.returncode == 3, r.stderr[-3000:]
    (key, s), = summaries(out).items()
    assert s["status"] == "interrupted" and "SIGTERM" in s["reason"]
    assert (out / key / "checkpoint.pt").exists()
    assert "1 run(s) interrupted" in r.stderr and str(out / key) in r.stderr
    assert f"bnstudy-train -m out_dir={out}" in r.stderr  # the command that resumes it
