"""Sweeps never lose work: skip, resume after SIGKILL, divergence, failure isolation, bad input, launchers."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import ROOT, cli, compose, have_real, start

FAST = ["data=synthetic", "train.progress=off", "train.steps=20", "train.eval_every=10", "train.log_every=10"]


def summaries(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.glob("**/summary.json"))}


def test_second_sweep_trains_nothing_and_force_retrains(tmp_path, tmp_data):
    args = ["-m", *FAST, "norm=bn,affine", "seed=0,1", f"out_dir={tmp_path}"]
    first = cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = summaries(tmp_path)
    assert len(before) == 4 and all(s["status"] == "completed" for s in before.values())
    again = cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped") == 4 and "already completed" in again.stdout
    assert summaries(tmp_path) == before  # nothing rewritten
    forced = cli([*args, "force=true", "seed=0", "norm=bn"], cwd=tmp_path)
    assert forced.returncode == 0 and "skipped" not in forced.stdout
    after = summaries(tmp_path)
    changed = [k for k in after if after[k]["updated"] != before[k]["updated"]]
    assert len(changed) == 1 and changed[0].endswith("seed0")


def _rows(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns="seconds")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tmp_data):
    args = [
        "data=synthetic",
        "norm=noisy_bn",  # consumes the global RNG every step: resume must restore it
        "data.augment=true",
        "train.progress=off",
        "train.steps=900",
        "train.log_every=50",
        "train.eval_every=100",
        "train.checkpoint_every=300",
        "train.threads=1",
    ]
    ref = cli([*args, f"out_dir={tmp_path / 'ref'}"], cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    proc = start([*args, f"out_dir={tmp_path / 'cut'}"], tmp_path)
    deadline = time.time() + 240
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "cut").glob("*/seed0/metrics.csv"))
        if found and (found[0].parent / "checkpoint.pt").exists():
            steps = pd.read_csv(found[0]).step
            if len(steps) and steps.max() >= 350:  # rows beyond the checkpoint at 300 exist
                metrics = found[0]
                break
        time.sleep(0.05)
    assert metrics is not None and proc.poll() is None, "the run ended before it could be killed; raise train.steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = metrics.parent
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    again = cli([*args, f"out_dir={tmp_path / 'cut'}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (ref_run,) = (tmp_path / "ref").glob("*/seed0")
    pd.testing.assert_frame_equal(_rows(run), _rows(ref_run))
    a, b = (json.loads((r / "summary.json").read_text()) for r in (run, ref_run))
    assert a["status"] == "completed" and a["final"] == b["final"] and a["best"] == b["best"]
    assert not (run / "checkpoint.pt").exists()


def test_divergence_is_a_result_and_the_sweep_goes_on(tmp_path, tmp_data):
    r = cli(["-m", *FAST, "norm=affine,bn", "optim.lr=50,0.1", "model.activation=relu", f"out_dir={tmp_path}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = summaries(tmp_path)
    assert len(s) == 4
    affine50 = [v for k, v in s.items() if k.startswith("synthetic-mlp-affine-sgd-lr50-")]
    assert affine50[0]["status"] == "diverged" and 1 <= affine50[0]["step"] <= 20
    assert affine50[0]["diverged_at"] == affine50[0]["step"]
    assert sum(v["status"] == "completed" for v in s.values()) >= 2  # the lr=0.1 runs at least
    rerun = cli(["-m", *FAST, "norm=affine", "optim.lr=50", "model.activation=relu", f"out_dir={tmp_path}"], cwd=tmp_path)
    assert "already diverged" in rerun.stdout  # a diverged run is finished: skipped like a completed one


@pytest.mark.slow
def test_affine_at_lr_50_diverges_on_mnist(tmp_path):
    if have_real("mnist"):
        pytest.skip(have_real("mnist"))
    r = cli(["norm=affine", "optim.lr=50", "train.steps=500", "train.progress=off", f"out_dir={tmp_path}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (s,) = summaries(tmp_path).values()
    assert s["status"] == "diverged"


def test_a_failing_job_is_isolated(tmp_path, tmp_data):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "inject"), os.environ.get("PYTHONPATH", "")])}
    r = cli(["-m", *FAST, "norm.name=bn,boom,boom_build,affine", f"out_dir={tmp_path}"], cwd=tmp_path, env=env)
    assert r.returncode == 1
    s = summaries(tmp_path)
    status = {k.split("-")[2]: v["status"] for k, v in s.items()}
    assert status == {"bn": "completed", "boom": "failed", "affine": "completed"}  # boom_build left no record ...
    (boom,) = [tmp_path / k for k in s if "-boom-" in k]
    assert "boom: injected failure" in (boom / "error.txt").read_text()
    assert "2 run(s) failed" in r.stderr and str(boom) in r.stderr  # ... and is counted all the same
    assert "boom_build: injected failure while building" in r.stderr.split("run(s) failed")[1]


BAD = [
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.lr=-0.1", "optim.lr must be > 0"),
    ("train.steps=0", "train.steps must be > 0"),
    ("train.batch_size=0", "train.batch_size must be > 0"),
    ("train.batch_size=4096", "larger than the 2048 training examples"),
    ("model.depth=0", "model.depth must be >= 1"),
    ("model.activation=gelu", "unknown model.activation 'gelu'"),
    ("device=tpu", "unknown device 'tpu'"),
    ("data.val_size=3000", "data.val_size=3000 must be >= 0 and below the 2048 training examples"),
    ("model.name=transformer", "unknown model 'transformer'"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_input_is_rejected_before_anything_is_written(override, message, tmp_path, tmp_data):
    from bnstudy.cli import run_job
    from bnstudy.errors import ConfigError

    cfg = compose([*FAST, override, f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run_job(cfg)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("override,message", [BAD[0], BAD[6]])
def test_bad_input_is_one_clear_line(override, message, tmp_path, tmp_data):
    r = cli([*FAST, override, f"out_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: ") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not list((tmp_path / "out").glob("**/summary.json"))
    assert not [p for p in (tmp_path / "out").glob("*/seed*")], "no run folder left behind"


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    r = cli(["norm=batchnorm", f"out_dir={tmp_path}"], cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown norm 'batchnorm'; choose one of: affine,")
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_data_is_one_clear_line(tmp_path, tmp_data, monkeypatch):
    r = cli(["data=mnist", "data.download=false", f"out_dir={tmp_path / 'out'}"], cwd=tmp_path, env={"BNSTUDY_DATA_MIRROR": str(tmp_path / "none")})
    assert r.returncode == 2 and "BNSTUDY_DATA_MIRROR" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("**/summary.json"))


def test_a_locked_run_is_not_trained_twice(tmp_path, tmp_data):
    from bnstudy.config import run_name
    from bnstudy.runs import RunLock
    from omegaconf import OmegaConf

    cfg = compose([*FAST, f"out_dir={tmp_path}"])
    run = tmp_path / run_name(OmegaConf.to_container(cfg, resolve=True))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bnstudy.runs import RunLock; l = RunLock(sys.argv[1]); assert l.acquire(); print('held', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli([*FAST, f"out_dir={tmp_path}"], cwd=tmp_path)
        assert r.returncode == 0 and "another process is training it" in r.stdout
        assert not (run / "summary.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert RunLock(run).acquire()  # released when its holder died


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_complete_a_2x2_sweep(launcher, tmp_path, tmp_data):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    r = cli(["-m", *FAST, "norm=bn,affine", "seed=0,1", f"hydra/launcher={launcher}", *extra, f"out_dir={tmp_path}"], cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = summaries(tmp_path)
    assert len(s) == 4 and all(v["status"] == "completed" for v in s.values())
    if launcher == "joblib":
        # 2 jobs share the cores instead of oversubscribing (the tiny MLP takes one thread anyway)
        prov = [v["provenance"] for v in s.values()]
        assert all(p["threads"] == 1 and "shared by 2 parallel jobs" in p["threads_why"] for p in prov), prov[0]


def test_slurm_launcher_config_composes():
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=cpu"])
    assert cfg is not None  # the launcher node itself is checked below with the hydra config
    from hydra import compose as hc, initialize_config_dir

    def launcher(name: str, *overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            full = hc(config_name="config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
        return full.hydra.launcher

    cpu = launcher("slurm", "hydra.launcher.partition=cpu")  # runs on a CPU-only partition as it is
    assert "SlurmLauncher" in cpu._target_ and cpu.partition == "cpu" and cpu.gpus_per_task is None
    assert cpu.cpus_per_task == 1 and cpu.mem_gb == 2 and cpu.max_num_timeout > 0 and cpu.array_parallelism == 32
    assert cpu.signal_delay_s == 120 and launcher("slurm", "hydra.launcher.timeout_min=2").signal_delay_s == 30
    gpu = launcher("slurm_gpu", "hydra.launcher.partition=gpu")
    assert gpu.partition == "gpu" and gpu.gpus_per_task == 1 and gpu.max_num_timeout == cpu.max_num_timeout


def test_runs_table(tmp_path, tmp_data):
    r = cli(["-m", *FAST, "norm=bn,affine", f"out_dir={tmp_path}"], cwd=tmp_path)
    assert r.returncode == 0
    from bnstudy.runs_cli import runs

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        runs([str(tmp_path), "--csv", "--status", "completed"])
    table = pd.read_csv(io.StringIO(buf.getvalue()))
    assert len(table) == 2 and set(table.norm) == {"bn", "affine"} and set(table.status) == {"completed"}
    assert {"step", "final_test_acc", "lr", "seed"} <= set(table.columns)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        runs([str(tmp_path), "--status", "failed"])
    assert "no runs" in buf.getvalue()
