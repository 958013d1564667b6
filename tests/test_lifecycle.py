"""A run's life: safe resume, one training per run, a full disk, folder names from checked values,
skips that touch nothing, and one-line messages for what goes wrong."""
import hashlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from bnstudy.config import RunConfig, run_name
from bnstudy.errors import ConfigError
from bnstudy.provenance import MACHINE_KEYS, first_machine, segments
from bnstudy.train import Hook, train_run
from bnstudy.train.stops import Interrupted

from .conftest import ROOT, cli, compose, resumes_from, start

FAST = ["data=synthetic", "train.progress=off", "train.steps=20", "train.eval_every=10", "train.log_every=10", "train.checkpoint_every=10"]


def run_dir_of(overrides: list[str]) -> Path:
    cfg = compose(overrides)
    return Path(cfg.out_dir) / run_name(OmegaConf.to_container(cfg, resolve=True))


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def small(**train) -> RunConfig:
    t = {"steps": 30, "eval_every": 10, "log_every": 10, "checkpoint_every": 10, "progress": "off", **train}
    return RunConfig.from_dict({"data": {"name": "synthetic"}, "train": t})


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


class _Evil:
    """Unpickling this runs a shell command: what a crafted checkpoint.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- resume


def test_a_crafted_checkpoint_runs_no_code(tmp_path, tmp_data):
    args = [*FAST, f"out_dir={tmp_path / 'out'}"]
    run = run_dir_of(args)
    run.mkdir(parents=True)  # an unfinished run folder: no summary.json needed
    marker = tmp_path / "marker"
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"step": _Evil(marker)}))
    r = cli(args, cwd=tmp_path)
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert str(run / "checkpoint.pt") in line and "delete it" in line and "force=true" in line
    assert not (run / "summary.json").exists()  # nothing was trained or recorded
    forced = cli([*args, "force=true"], cwd=tmp_path)
    assert forced.returncode == 0 and not marker.exists()
    assert summary(run)["status"] == "completed"


def test_resume_loads_weights_only_and_continues_exactly(tmp_path, tmp_data, caplog):
    ref = train_run(small(), tmp_path / "ref")

    def ctrl_c(state):
        if state.step == 25:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        train_run(small(), tmp_path / "cut", extra_hooks=[Hook("ctrl_c", 5, ctrl_c)])
    assert e.value.step == 25
    cut = tmp_path / "cut"
    assert summary(cut)["status"] == "interrupted"
    ckpt = torch.load(cut / "checkpoint.pt", weights_only=True)  # what resume loads: tensors and plain values only
    assert ckpt["step"] == 20
    with caplog.at_level(logging.INFO, logger="bnstudy"):
        again = train_run(small(), cut)
    assert any(f"resumed {cut} from step 20" in r.getMessage() for r in caplog.records)
    assert again["status"] == "completed" and again["final"] == ref["final"]
    a, b = (pd.read_csv(d / "metrics.csv").drop(columns="seconds") for d in (cut, tmp_path / "ref"))
    pd.testing.assert_frame_equal(a, b)



def test_a_resume_on_another_kind_of_machine_records_where_each_segment_trained(tmp_path, tmp_data, caplog):
    def ctrl_c(state):
        if state.step == 25:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train_run(small(), cut, extra_hooks=[Hook("ctrl_c", 5, ctrl_c)])
    here = summary(cut)["provenance"]
    assert here["segments"] == [{"from_step": 0, **{k: here[k] for k in MACHINE_KEYS}}]
    # the first 20 steps (the checkpoint) as if trained on an AVX2 machine by a bnstudy that kept no segments
    s = summary(cut)
    s["provenance"] = {**here, "cpu_capability": "AVX2-then"}
    del s["provenance"]["segments"]
    (cut / "summary.json").write_text(json.dumps(s))
    with caplog.at_level(logging.INFO, logger="bnstudy"):
        done = train_run(small(), cut)
    seg = done["provenance"]["segments"]
    assert [x["from_step"] for x in seg] == [0, 20]
    assert seg[0]["cpu_capability"] == "AVX2-then" and seg[1]["cpu_capability"] == here["cpu_capability"]
    assert first_machine(done)["cpu_capability"] == "AVX2-then"  # what --reproduce re-trains the first steps against
    warned = [r.getMessage() for r in caplog.records if "another kind of machine" in r.getMessage()]
    assert len(warned) == 1 and "cpu_capability AVX2-then then" in warned[0] and "from 20 on" in warned[0]


def test_segments_add_an_entry_only_where_the_machine_changed():
    a = {"device_name": "cpu A", "cpu_capability": "AVX2", "torch": "2.14.1", "threads": 1, "hostname": "x"}
    b = {**a, "cpu_capability": "AVX512", "hostname": "y"}
    kind_a = {"device_name": "cpu A", "cpu_capability": "AVX2", "torch": "2.14.1", "threads": 1}
    kind_b = {**kind_a, "cpu_capability": "AVX512"}
    first = segments(None, 0, a)
    assert first == [{"from_step": 0, **kind_a}]
    assert segments({"provenance": {**a, "segments": first}}, 300, {**a, "hostname": "z"}) == first  # same kind
    two = segments({"provenance": {**a, "segments": first}}, 300, b)
    assert two == [{"from_step": 0, **kind_a}, {"from_step": 300, **kind_b}]
    # resumed from a checkpoint older than the last change: the steps after it were trained again
    assert segments({"provenance": {**b, "segments": two}}, 200, a) == first
    # another thread count rounds differently too
    assert segments({"provenance": {**a, "segments": first}}, 300, {**a, "threads": 2})[-1] == {"from_step": 300, **kind_a, "threads": 2}
    # a summary from before segments were kept: its earlier steps count as its last writer's machine
    assert segments({"provenance": a}, 40, b) == [{"from_step": 0, **kind_a}, {"from_step": 40, **kind_b}]
    assert segments({"status": "running"}, 40, b)[0]["cpu_capability"] is None  # no provenance at all: unknown

def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path, tmp_data):
    args = [*FAST, "train.steps=100000", "train.eval_every=500", "train.log_every=100", "train.checkpoint_every=1000", "train.threads=1", f"out_dir={tmp_path}"]
    run = run_dir_of(args)
    proc = start(args, tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) > 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = one_line(err)
    assert line.startswith("interrupted at step ") and line.endswith("; run the same command to resume")
    step = int(line.split()[3].rstrip(";"))
    s = summary(run)
    assert s["status"] == "interrupted" and s["step"] == step
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == step  # stopped between two steps
    resumed = start(args, tmp_path)
    assert resumes_from(resumed, run, step, timeout=60)


# ---------------------------------------------------------------- one training per run


def test_a_run_finished_while_a_job_waits_for_its_lock_is_not_trained_again(tmp_path, tmp_data):
    args = [*FAST, f"out_dir={tmp_path / 'out'}"]
    run = run_dir_of(args)
    waiting = tmp_path / "waiting"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONPATH=str(ROOT / "tests" / "inject" / "lock_race"), BNSTUDY_INJECT_LOCK_WAIT=str(waiting))
    late = subprocess.Popen([sys.executable, "-m", "bnstudy.train", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not waiting.exists() and time.time() < deadline and late.poll() is None:
            time.sleep(0.05)
        assert waiting.exists(), late.communicate()  # the late job found no summary and now waits before the lock
        first = cli(args, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        trained = summary(run)
        out, err = late.communicate(timeout=120)
    finally:
        late.kill()
    assert late.returncode == 0, err
    assert "already completed" in out and "completed " + str(run) not in out
    assert summary(run) == trained  # trained once


# ---------------------------------------------------------------- a full disk


def enospc(rules: str) -> dict:
    return {"PYTHONPATH": str(ROOT / "tests" / "inject" / "enospc"), "BNSTUDY_INJECT_ENOSPC": rules}


def test_a_full_disk_is_one_line_and_a_failed_status(tmp_path, tmp_data):
    args = [*FAST, f"out_dir={tmp_path / 'out'}"]
    run = run_dir_of(args)
    r = cli(args, cwd=tmp_path, env=enospc(".checkpoint.pt.*.tmp:1;train.log:1"))  # full from the first checkpoint on
    assert r.returncode == 1
    assert "Logging error" not in r.stderr and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "no space left" in last and str(run) in last and len(r.stderr.strip().splitlines()) <= 2
    s = summary(run)
    assert s["status"] == "failed" and "no space left" in s["reason"] and s["step"] == 10
    assert "No space left on device" in (run / "error.txt").read_text()
    assert not list(run.glob(".*.tmp"))


def test_a_full_disk_at_the_last_step_keeps_the_finished_run(tmp_path, tmp_data):
    args = [*FAST, f"out_dir={tmp_path / 'out'}"]
    r = cli(args, cwd=tmp_path, env=enospc(".checkpoint.pt.*.tmp:2"))  # the checkpoint at step 10 fits, none after it
    assert r.returncode == 0, r.stderr
    run = run_dir_of(args)
    assert summary(run)["status"] == "completed" and summary(run)["step"] == 20
    assert not (run / "checkpoint.pt").exists()


def test_temp_files_of_a_failed_write_are_removed_on_the_next_start(tmp_path, tmp_data):
    run = tmp_path / "r"
    run.mkdir()
    stale = [run / ".checkpoint.pt.4242.tmp", run / ".summary.json.4242.tmp", run / ".metrics.csv.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    assert train_run(small(), run)["status"] == "completed"
    assert not [p for p in stale if p.exists()]


def test_the_run_log_on_a_full_disk_warns_once(tmp_path, capsys):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    from bnstudy.cli import RunLogFile

    logger = logging.getLogger("bnstudy.test_full")
    handler = RunLogFile("/dev/full")  # every write fails with ENOSPC
    logger.addHandler(handler)
    try:
        for i in range(5):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count("warning: cannot write /dev/full") == 1


# ---------------------------------------------------------------- folder names and bad values


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lr=x/../../../../tmp/escaped", "optim.lr must be a number"),
        ("train.batch_size=x/../../escaped", "train.batch_size must be an integer"),
        ("train.steps=abc", "train.steps must be an integer (got 'abc')"),
        ("seed=abc", "seed must be an integer (got 'abc')"),
        ("norm.name=../../escaped", "norm.name='../../escaped' is not a norm option name"),
    ],
)
def test_values_that_are_not_what_they_should_be_create_nothing(override, message, tmp_path, tmp_data):
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    r = cli([*FAST, override, f"out_dir={out}"], cwd=tmp_path)
    assert r.returncode == 2 and message in one_line(r.stderr)
    assert not [p for p in tmp_path.rglob("*") if "escaped" in p.name]
    assert not list(tmp_path.rglob("seed*")), "no run folder left behind"


def test_run_names_accept_only_checked_values():
    base = RunConfig().to_dict()
    for key, value in [("data", "../x"), ("model", "a/b"), ("norm", ".."), ("optim", "")]:
        bad = {**base, key: {**base[key], "name": value}}
        with pytest.raises(ConfigError, match=f"{key}.name="):
            run_name(bad)
    for path, value in [(("optim", "lr"), "0.1/.."), (("optim", "lr"), float("inf")), (("train", "batch_size"), 6.5), (("seed",), "1")]:
        bad = json.loads(json.dumps(base))
        (bad[path[0]] if len(path) == 2 else bad).__setitem__(path[-1], value)
        with pytest.raises(ConfigError, match="must be"):
            run_name(bad)
    one, one_f = (run_name({**base, "optim": {**base["optim"], "lr": v}}) for v in (1, 1.0))
    assert one == one_f and "-lr1-" in one  # the same run however the number was typed


# ---------------------------------------------------------------- skips touch nothing


def folder_state(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def test_skipping_a_finished_run_leaves_its_folder_untouched(tmp_path, tmp_data):
    args = ["-m", *FAST, "norm=bn,affine", f"out_dir={tmp_path}"]
    assert cli(args, cwd=tmp_path).returncode == 0
    runs = sorted(p.parent for p in tmp_path.glob("*/seed0/summary.json"))
    assert len(runs) == 2 and all((r / ".hydra" / "overrides.yaml").exists() and (r / "train.log").exists() for r in runs)
    before = {r: folder_state(r) for r in runs}
    again = cli([*args, "device=cpu", "train.progress=on"], cwd=tmp_path)  # other values that do not change what a run is
    assert again.returncode == 0 and again.stdout.count("skipped") == 2
    assert {r: folder_state(r) for r in runs} == before


def test_a_command_that_skips_or_rejects_its_input_never_loads_torch(tmp_path, tmp_data):
    """torch is imported by the first job that trains: a re-run of a finished sweep, or a bad value, starts in well
    under a second instead of the ~3 s torch and torch._dynamo take to import."""
    args = ["-m", *FAST, "norm=bn,affine", f"out_dir={tmp_path}"]
    assert cli(args, cwd=tmp_path).returncode == 0
    probe = "import sys\nfrom bnstudy.startup import main\ntry:\n    main()\nfinally:\n    print('torch loaded:', 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    for extra, code in (([], 0), (["train.steps=abc"], 2), (["seed=1", "train.steps=abc"], 2)):
        r = subprocess.run([sys.executable, "-c", probe, *args, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == code and r.stdout.count("skipped") == (2 if code == 0 else 0), r.stdout + r.stderr
        assert r.stdout.strip().endswith("torch loaded: False"), r.stdout + r.stderr
    trains = subprocess.run([sys.executable, "-c", probe, *args, "seed=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert trains.returncode == 0 and trains.stdout.strip().endswith("torch loaded: True"), trains.stdout + trains.stderr


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "override,expected",
    [
        ("norm=batchnorm", "error: unknown norm 'batchnorm'; choose one of: affine, affine_ddi, bn,"),
        ("train.step=10", "error: unknown config key 'train.step'; did you mean train.steps?"),
        ("experiment=nope", "error: unknown experiment 'nope'; choose one of:"),
    ],
)
def test_command_line_mistakes_are_one_line_with_the_choices(override, expected, tmp_path):
    r = cli([override, f"out_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert r.returncode == 2 and one_line(r.stderr).startswith(expected)
    assert not (tmp_path / "out").exists()


def test_the_first_progress_line_shows_no_unmeasured_loss(tmp_path, tmp_data, caplog):
    with caplog.at_level(logging.INFO, logger="bnstudy"):
        train_run(small(eval_every=5, log_every=10), tmp_path / "r")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines[0].startswith("step 5/30  test acc ") and "train loss" not in lines[0]
    assert "train loss" in lines[1] and not any("nan" in line for line in lines)
