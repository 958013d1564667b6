"""Fault injection: bad input, damage and interruptions, each with the exit code, the first line on stderr and
what must be left untouched. A later change that reopens one of these fails here.

Every case runs the real command (``python -m bnstudy.train``) on tiny synthetic runs.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bnstudy.config import RunConfig, run_name
from bnstudy.train import Hook, train_run
from bnstudy.train.loop import Interrupted

from .conftest import ROOT, _command_env, cli, compose, resumes_from, start
from .test_faults_sigint import ALLOWED, outcome

PYTHONS_OWN = ALLOWED[:2]  # the outcomes of a press before bnstudy's first line runs (docs/faults.md)

FAST = ["data=synthetic", "train.threads=1", "train.progress=off", "train.steps=4", "train.eval_every=2", "train.log_every=2", "train.checkpoint_every=2"]


def run_dir_of(overrides: list[str]) -> Path:
    cfg = compose(overrides)
    return Path(cfg.out_dir) / run_name(OmegaConf.to_container(cfg, resolve=True))


def first_line(stderr: str, most: int = 1) -> str:
    lines = stderr.strip().splitlines()
    assert 1 <= len(lines) <= most and "Traceback" not in stderr, stderr
    return lines[0]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (what "untouched" compares)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def record(run: Path) -> dict[str, str]:
    """A run folder's files but the record of the last attempt (.hydra/, train.log) and the lock file: what a refused
    resume must not change (summary.json, metrics.csv, config.yaml, the checkpoint)."""
    return {k: v for k, v in tree(run).items() if not (k.startswith(".hydra/") or k in (".lock", "train.log"))}


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """An out_dir holding one finished run: every bad command below is pointed at it and must leave it as it was."""
    out = tmp_path_factory.mktemp("results")
    r = cli([*FAST, f"out_dir={out}"], cwd=out)
    assert r.returncode == 0, r.stderr
    return out


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

BAD_INPUT = [
    # (case, overrides, first line of stderr: a regex)
    ("a sweep value without -m", ["seed=0,1"], r"^error: seed=0,1 is a sweep: add -m \(--multirun\)"),
    ("a deleted key", ["~train.steps"], r"^error: train\.steps cannot be removed"),
    ("a seed torch cannot take", ["seed=99999999999999999999"], r"^error: seed must be an integer from 0 to 2\*\*63-1"),
    ("bn with batches of one", ["train.batch_size=1"], r"^error: train\.batch_size=1 cannot train norm=bn with model=mlp"),
    ("adam with one beta", ["optim=adam", "optim.betas=[0.9]"], r"^error: optim\.betas must be two numbers in \[0, 1\)"),
    ("no classes", ["data.num_classes=0"], r"^error: data\.num_classes must be >= 2"),
    ("probe batches of zero", ["probe.every=2", "probe.batch_size=0"], r"^error: probe\.batch_size must be >= 1"),
    ("an empty training set blames its own key", ["data.train_size=0"], r"^error: data\.train_size must be >= 1"),
    ("an unknown progress mode", ["train.progress=maybe"], r"^error: train\.progress must be one of auto, on, off \(got 'maybe'\)"),
    ("a negative thread count", ["train.threads=-1"], r"^error: train\.threads must be 0 \(bnstudy picks the count\) or a positive count \(got -1\)"),
    ("a non-ASCII letter unquoted", ["study=naïve"], r"""^error: study=naïve: Hydra reads a value with a space or a non-ASCII letter only in quotes; quote it inside the shell's quotes: 'study="naïve"'$"""),
    ("a space unquoted", ["study=a b(c)"], r"""^error: study=a b\(c\): Hydra reads a value with a space .*'study="a b\(c\)"'$"""),
    ("an interpolation in the study's name", ["study=${oc.env:HOME}"], r"^error: study=\$\{oc\.env:HOME\} is an interpolation: a key that names or labels a run takes its value as typed"),
    ("an interpolation in the seed", ["seed=${oc.env:BNSTUDY_SEED,1}"], r"^error: seed=\$\{oc\.env:BNSTUDY_SEED,1\} is an interpolation"),
    ("an interpolation in a list", ["optim=adam", "optim.betas=[${oc.env:B,0.9},0.99]"], r"^error: optim\.betas\[0\]=\$\{oc\.env:B,0\.9\} is an interpolation"),
]


@pytest.mark.parametrize("case,overrides,expected", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, overrides, expected, results):
    before = tree(results)
    r = cli([*FAST, *overrides, f"out_dir={results}"], cwd=results)
    assert r.returncode == 2, r.stderr
    assert re.search(expected, first_line(r.stderr)), r.stderr
    assert tree(results) == before, "the results folder changed"


def test_an_out_dir_in_hydras_quotes_and_interpolated_is_used(tmp_path, tmp_data):
    """What the two refusals above leave open: a quoted value with a space and a non-ASCII letter, and an interpolation
    in out_dir (which neither names nor labels a run)."""
    out = '"${oc.env:BNSTUDY_TEST_OUT}/my runs é"'
    r = cli([*FAST, f"out_dir={out}"], cwd=tmp_path, env={"BNSTUDY_TEST_OUT": str(tmp_path / "scratch")})
    assert r.returncode == 0 and len(list((tmp_path / "scratch" / "my runs é").glob("*/seed0/summary.json"))) == 1, r.stderr


def test_an_out_dir_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me\n")
    r = cli([*FAST, f"out_dir={f}"], cwd=tmp_path)
    assert r.returncode == 2 and re.search(rf"^error: out_dir={re.escape(str(f))}: .* is a file, not a folder", first_line(r.stderr))
    assert f.read_text() == "keep me\n"


def test_an_empty_out_dir_is_one_line_and_writes_nothing_here(tmp_path):
    r = cli([*FAST, "out_dir=''"], cwd=tmp_path)
    assert r.returncode == 2 and first_line(r.stderr).startswith("error: out_dir is empty; give the folder for run folders")
    assert list(tmp_path.iterdir()) == []


def _unwritable() -> Path | None:
    # root writes into any chmod-ed folder: only a read-only file system is unwritable for everyone
    for p in (Path("/sys/fs"), Path("/proc/sys")):
        if p.is_dir() and not os.access(p, os.W_OK):
            return p
    return None


@pytest.mark.skipif(_unwritable() is None, reason="no unwritable folder on this machine")
def test_an_unwritable_out_dir_is_one_line(tmp_path):
    out = _unwritable() / "bnstudy-out"
    r = cli([*FAST, f"out_dir={out}"], cwd=tmp_path)
    assert r.returncode == 2 and re.search(r"^error: out_dir=.* is not writable; pick another out_dir", first_line(r.stderr)), r.stderr


def test_a_mirror_archive_holding_half_a_split_is_named(tmp_path):
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    header = (0x803).to_bytes(4, "big") + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mirror / f"{f}.gz", "wb") as g:
            g.write(header + bytes(30000 * 784))  # the header promises 60000 images, half are there
    env = {"BNSTUDY_DATA_MIRROR": str(tmp_path / "mirror"), "BNSTUDY_DATA_DIR": str(tmp_path / "data")}
    args = ["data=mnist", "data.download=false", "train.steps=2", "train.progress=off", f"out_dir={tmp_path / 'out'}"]
    for _ in range(2):  # the second start names the same file: nothing prepared from it is kept
        r = cli(args, cwd=tmp_path, env=env)
        line = first_line(r.stderr)
        assert r.returncode == 2 and line.startswith(f"error: {mirror / 'train-images-idx3-ubyte.gz'} is incomplete"), r.stderr
        assert "restore it" in line
    assert not list((tmp_path / "out").rglob("seed*"))


def test_unnamed_runs_go_to_the_ignored_runs_folder():
    run = run_dir_of([])
    assert run.parts[0] == "runs"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(run / "summary.json")], cwd=ROOT)
    assert ignored.returncode == 0, "runs/ is not git-ignored"
    # out_dir is not part of a run's identity: the committed folder names stay as they are
    assert run.name == run_dir_of(["out_dir=results/elsewhere"]).name


# ---------------------------------------------------------------- bnstudy-report


def _report(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from bnstudy.runs_cli import report; report(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_report_out_a_file_is_one_line(results, tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me\n")
    before = tree(results)
    r = _report([str(results), "--out", str(f)], cwd=tmp_path)
    assert r.returncode == 2 and first_line(r.stderr).startswith(f"error: cannot write the report into {f}"), r.stderr
    assert f.read_text() == "keep me\n" and tree(results) == before


@pytest.mark.skipif(_unwritable() is None, reason="no unwritable folder on this machine")
def test_report_into_an_unwritable_folder_is_one_line(results, tmp_path):
    out = _unwritable() / "bnstudy-report"
    r = _report([str(results), "--out", str(out)], cwd=tmp_path)
    assert r.returncode == 2 and first_line(r.stderr).startswith(f"error: cannot write the report into {out}"), r.stderr


# ---------------------------------------------------------------- divergence between evaluations

DIVERGE = ["data=synthetic", "train.threads=1", "train.progress=off", "norm=none", "optim.lr=3000", "sched.warmup=30",
           "train.steps=30", "train.log_every=10", "train.eval_every=25"]


def test_a_run_diverging_between_a_log_and_an_eval_step_settles(tmp_path):
    from bnstudy.analysis import load_runs
    from bnstudy.runs import check_run

    args = [*DIVERGE, f"out_dir={tmp_path}"]
    run = run_dir_of(args)
    r = cli(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = summary(run)
    assert s["status"] == "diverged" and 20 < s["diverged_at"] < 25, s  # after a log step, before the evaluation
    assert check_run(run) == []
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    steps = [int(row.split(",")[0]) for row in rows]
    assert steps == sorted(steps) and steps[-1] == s["diverged_at"]
    before = tree(run)
    again = cli(args, cwd=tmp_path)
    assert again.returncode == 0 and "skipped" in again.stdout + again.stderr and tree(run) == before
    runs = load_runs(tmp_path)
    assert list(runs["status"]) == ["diverged"]


# ---------------------------------------------------------------- checkpoints: only this run's, and short messages


def _interrupted_checkpoint(overrides: list[str], out: Path) -> Path:
    """Train the run of ``overrides`` until a Ctrl-C at step 3 (checkpoint at step 2); its checkpoint's path."""
    cfg = compose([*FAST, "train.steps=6", *overrides, f"out_dir={out}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    run = out / run_name(plain)

    def ctrl_c(state):
        if state.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        train_run(RunConfig.from_dict(plain), run, extra_hooks=[Hook("ctrl_c", 1, ctrl_c)])
    return run / "checkpoint.pt"


FOREIGN = [
    # (case, overrides of the run that wrote the checkpoint, overrides of the run it is put into)
    ("another learning rate and seed", ["optim.lr=0.5", "seed=0"], ["optim.lr=0.1", "seed=1"]),
    ("the same config, another seed", ["seed=0"], ["seed=1"]),
    ("another architecture", ["model.width=100"], ["model.width=50"]),
]


@pytest.mark.parametrize("case,source,target", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_a_checkpoint_of_another_run_is_refused(case, source, target, tmp_path, tmp_data):
    ckpt = _interrupted_checkpoint(source, tmp_path / "src")
    args = [*FAST, "train.steps=6", *target, f"out_dir={tmp_path / 'out'}"]
    run = run_dir_of(args)
    run.mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoint.pt")
    before = record(run)
    r = cli(args, cwd=tmp_path)
    line = first_line(r.stderr)
    assert r.returncode == 2 and line.startswith(f"error: cannot resume from {run / 'checkpoint.pt'}: it belongs to another run"), r.stderr
    assert line.endswith("; delete it (or run with force=true) to train this run from the start")
    assert record(run) == before, "the run folder changed"


def test_a_truncated_checkpoint_is_one_whole_line(tmp_path, tmp_data):
    ckpt = _interrupted_checkpoint([], tmp_path / "src")
    args = [*FAST, "train.steps=6", "model.width=30", f"out_dir={tmp_path / 'out'}"]
    run = run_dir_of(args)
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(ckpt.read_bytes()[:5000])
    before = record(run)
    r = cli(args, cwd=tmp_path)
    line = first_line(r.stderr)
    assert r.returncode == 2 and line.startswith(f"error: cannot resume from {run / 'checkpoint.pt'}: "), r.stderr
    assert line.endswith("; delete it (or run with force=true) to train this run from the start") and len(line) < 400
    assert record(run) == before


def test_a_checkpoint_without_identity_resumes_only_where_its_own_summary_vouches(tmp_path, tmp_data):
    ckpt = _interrupted_checkpoint([], tmp_path / "src")
    old = torch.load(ckpt, weights_only=True)
    old.pop("identity")
    torch.save(old, ckpt)  # as written before checkpoints recorded their run
    args = [*FAST, "train.steps=6", f"out_dir={tmp_path / 'src'}"]
    r = cli(args, cwd=tmp_path)
    assert r.returncode == 0 and "resumed" in (ckpt.parent / "train.log").read_text() + r.stdout + r.stderr, r.stderr
    # the same old checkpoint in a folder without that run's summary: refused
    stray = _interrupted_checkpoint([], tmp_path / "src2")
    old2 = torch.load(stray, weights_only=True)
    old2.pop("identity")
    (stray.parent / "summary.json").unlink()
    torch.save(old2, stray)
    r = cli([*FAST, "train.steps=6", f"out_dir={tmp_path / 'src2'}"], cwd=tmp_path)
    line = first_line(r.stderr)
    assert r.returncode == 2 and "written before checkpoints recorded their run" in line, r.stderr


# ---------------------------------------------------------------- Ctrl-C

LONG = ["data=synthetic", "train.threads=1", "train.progress=off", "train.steps=100000", "train.eval_every=500",
        "train.log_every=100", "train.checkpoint_every=1000"]


def _start(args: list[str], cwd: Path, fresh: bool = False):
    return start(args, cwd, fresh=fresh)


def _wait_training(proc, run: Path, rows: int = 4) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) > rows:
            return
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    pytest.fail("training did not start in 120 s")


@pytest.mark.parametrize("gap", [0.010, 0.015, 0.020])
def test_two_quick_ctrl_c_report_the_real_step(gap, tmp_path, tmp_data):
    args = [*LONG, f"out_dir={tmp_path}"]
    run = run_dir_of(args)
    proc = _start(args, tmp_path)
    _wait_training(proc, run)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    line = first_line(err)
    assert proc.returncode == 130 and re.match(r"^interrupted at step (\d+)", line), err
    s = summary(run)
    assert s["status"] == "interrupted" and s["step"] == int(re.match(r"^interrupted at step (\d+)", line).group(1)) > 0


@pytest.mark.parametrize("delay", [0.2, 1.5])
def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_folder(delay, tmp_path, tmp_data):
    proc = _start([*LONG, f"out_dir={tmp_path / 'out'}"], tmp_path, fresh=True)  # a new interpreter: the imports are the point
    time.sleep(delay)  # imports, composing the config, loading data: before the first step
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    written = list((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else []
    what = outcome(proc.returncode, err)
    if what in PYTHONS_OWN:
        # a loaded machine stretches Python's own start-up past the delay: the press landed before bnstudy's first line
        # (silently, before the interpreter's handler, or as its fatal start-up error through no bnstudy frame)
        assert not written
        pytest.skip(f"Ctrl-C arrived in Python's own start-up ({what}); nothing was written")
    line = first_line(err)
    if line.startswith("interrupted at step"):
        pytest.skip("this machine was fast enough to start training first")
    assert proc.returncode == 130 and line.startswith("interrupted before training began"), err
    assert not list((tmp_path / "out").rglob("seed*")) if (tmp_path / "out").exists() else True


def test_ctrl_c_on_a_forced_run_says_what_the_same_command_does(tmp_path, tmp_data):
    args = [*LONG, "force=true", f"out_dir={tmp_path}"]
    run = run_dir_of(args)
    proc = _start(args, tmp_path)
    _wait_training(proc, run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    line = first_line(err)
    m = re.match(r"^interrupted at step (\d+); force=true trains this run again from step 0: run the command without force=true to resume from step (\d+)$", line)
    assert proc.returncode == 130 and m and m.group(1) == m.group(2), err
    step = int(m.group(1))
    assert summary(run)["status"] == "interrupted"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == step
    resumed = _start([a for a in args if a != "force=true"], tmp_path)  # what the line says: resumes there
    assert resumes_from(resumed, run, step)


def test_sigterm_in_the_background_stops_between_steps_and_resumes(tmp_path, tmp_data):
    """``kill PID`` on a run started with ``nohup ... &`` (which ignores Ctrl-C): the run stops after its current step,
    checkpointed there and marked interrupted, with one line and exit 143; the same command resumes from that step."""
    args = [*LONG, f"out_dir={tmp_path}"]
    run = run_dir_of(args)
    proc = subprocess.Popen([sys.executable, "-m", "bnstudy.train", *args], cwd=tmp_path, env=_command_env(None),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _wait_training(proc, run)
    proc.send_signal(signal.SIGINT)  # ignored, as in the background
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    m = re.match(r"^interrupted at step (\d+); run the same command to resume$", first_line(err))
    assert proc.returncode == 143 and m, err
    step = int(m.group(1))
    s = summary(run)
    assert s["status"] == "interrupted" and s["reason"] == "SIGTERM" and s["step"] == step > 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == step  # not the last periodic checkpoint's
    assert resumes_from(_start(args, tmp_path), run, step)


# ---------------------------------------------------------------- transfer import: nothing lost, nothing outside DEST


def _device_run(root: Path, seed: int, status: str, step: int) -> Path:
    """A run folder as a device job leaves it: finished, or stopped at ``step`` with its checkpoint."""
    from .test_archive import fake_run

    run = fake_run(root, seed)
    if status != "completed":
        s = summary(run)
        (run / "summary.json").write_text(json.dumps({**s, "status": status, "step": step, "checksums": {}}))
        (run / "checkpoint.pt").write_bytes(b"state at step %d" % step)
    return run


@pytest.fixture(scope="module")
def device_out(tmp_path_factory) -> Path:
    """A device job's output: one run interrupted at step 100 (checkpoint kept), one completed."""
    from bnstudy import transfer

    base = tmp_path_factory.mktemp("device")
    _device_run(base / "gpu", 0, "interrupted", 100)
    _device_run(base / "gpu", 1, "completed", 20)
    transfer.pack(base / "gpu", base / "out", 0, {"out_dir": "results/study"})
    return base / "out"


def _manifest(out: Path, change) -> None:
    m = json.loads((out / "manifest.json").read_text())
    change(m)
    (out / "manifest.json").write_text(json.dumps(m))


def _first_run(out: Path) -> str:
    return json.loads((out / "manifest.json").read_text())["runs"][0]["run"]


def _local(dest: Path, out: Path, status: str, step: int, extra: str = "my_notes.txt") -> Path:
    """DEST's own copy of the interrupted run: ``status`` at ``step``, with a file of the user's inside."""
    rel = next(r["run"] for r in json.loads((out / "manifest.json").read_text())["runs"] if r["status"] == "interrupted")
    run = dest / rel
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": status, "step": step}))
    (run / extra).write_text("mine\n")
    return run


IMPORT_REFUSED = [
    # (case, what is done to OUT_DIR or DEST, DEST given?, first line of stderr: a regex)
    ("a local run running further along", lambda out, dest: _local(dest, out, "running", 250), True,
     r"^error: refused: .* is running at step 250, the imported copy at step 100: the local run is kept"),
    ("a run named like a study's folder", lambda out, dest: (
        (dest / "figures").mkdir(parents=True), (dest / "figures" / "plot.png").write_bytes(b"png"),
        _manifest(out, lambda m: m["runs"][0].update(run="figures"))), True,
     r"^error: refused: the manifest names a run 'figures' whose path is not a run folder's \(NAME-HASH/seedN"),
    ("a local folder in the way", lambda out, dest: (
        (dest / _first_run(out)).mkdir(parents=True), (dest / _first_run(out) / "plot.png").write_bytes(b"png")), True,
     r"^error: refused: .* exists and is not a run folder; move it away"),
    ("a run the archive does not hold", lambda out, dest: _manifest(out, lambda m: m["runs"][0].update(run="gone-0123abcd/seed0")), True,
     r"^error: refused: the archive holds .* which is not a plain file of a listed run"),
    ("an absolute out_dir", lambda out, dest: _manifest(out, lambda m: m.update(out_dir=str(out.parent / "elsewhere"))), False,
     r"^error: the manifest's out_dir '/.*/elsewhere' is outside this project"),
    ("an out_dir leading up", lambda out, dest: _manifest(out, lambda m: m.update(out_dir="../elsewhere")), False,
     r"^error: the manifest's out_dir '\.\./elsewhere' is outside this project"),
    ("a part outside OUT_DIR", lambda out, dest: _manifest(out, lambda m: m["parts"][0].update(name="../runs.tar.xz")), True,
     r"^error: refused: .* names a part '\.\./runs\.tar\.xz' outside"),
    ("runs that are not objects", lambda out, dest: _manifest(out, lambda m: m.update(runs=["seed0"])), True,
     r"^error: refused: .* lists a run that is not an object"),
    ("parts as a string", lambda out, dest: _manifest(out, lambda m: m.update(parts="runs.tar.xz")), True,
     r"^error: refused: .* needs 'parts' and 'runs' lists"),
    ("a part without its size", lambda out, dest: _manifest(out, lambda m: m["parts"][0].pop("bytes")), True,
     r"^error: refused: .* lists a part that is not an object with a name, bytes and sha256"),
]


def _import(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnstudy.transfer", "import", *argv], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case,damage,named,expected", IMPORT_REFUSED, ids=[c[0] for c in IMPORT_REFUSED])
def test_a_refused_import_is_one_line_and_changes_nothing(case, damage, named, expected, device_out, tmp_path):
    out, project = tmp_path / "out", tmp_path / "project"
    shutil.copytree(device_out, out)
    project.mkdir()
    dest = project / "results" / "study"
    damage(out, dest)
    before, folders = tree(tmp_path), sorted(p for p in tmp_path.rglob("*") if p.is_dir())
    r = _import([str(out), str(dest)] if named else [str(out)], cwd=project)
    assert r.returncode == 2 and re.search(expected, first_line(r.stderr)), r.stderr
    assert tree(tmp_path) == before, "a file changed"
    assert sorted(p for p in tmp_path.rglob("*") if p.is_dir()) == folders, "a folder was made or removed (an empty DEST?)"


@pytest.mark.parametrize("rel", ["figures", "tables/seed0", "mnist-mlp-bn-0123abcd"])
def test_an_import_refuses_a_run_whose_path_is_no_run_folders(rel, tmp_path):
    """A finished run packed under a path bnstudy never gives a run (a study's figures/): --check would call it intact
    and the report would write into it."""
    from bnstudy import transfer

    run = _device_run(tmp_path / "gpu", 1, "completed", 20)
    (tmp_path / "gpu" / rel).parent.mkdir(parents=True, exist_ok=True)
    run.rename(tmp_path / "gpu" / rel)
    transfer.pack(tmp_path / "gpu", tmp_path / "out", 0, {"out_dir": "results/study"})
    dest = tmp_path / "project" / "results" / "study"
    r = _import([str(tmp_path / "out"), str(dest)], cwd=tmp_path)
    line = first_line(r.stderr)
    assert r.returncode == 2 and line.startswith(f"error: refused: the manifest names a run '{rel}' whose path is not a run folder's"), r.stderr
    assert not (tmp_path / "project").exists()


def test_an_import_updates_an_earlier_local_run_in_place_and_keeps_the_users_files(device_out, tmp_path):
    from bnstudy.runs import RunLock

    dest = tmp_path / "results" / "study"
    local = _local(dest, device_out, "interrupted", 50)
    (local / "checkpoint.pt").write_bytes(b"state at step 50")
    held = RunLock(local)
    assert held.acquire()  # a sweep training it: refused, nothing moved
    r = _import([str(device_out), str(dest)], cwd=tmp_path)
    assert r.returncode == 2 and "being trained by another process" in first_line(r.stderr)
    assert (local / "checkpoint.pt").read_bytes() == b"state at step 50" and summary(local)["step"] == 50
    held.release()
    r = _import([str(device_out), str(dest)], cwd=tmp_path)
    assert r.returncode == 0 and "imported 1 finished run(s) and 1 interrupted one(s)" in r.stdout, r.stderr
    assert summary(local)["step"] == 100 and (local / "checkpoint.pt").read_bytes() == b"state at step 100"
    assert (local / "my_notes.txt").read_text() == "mine\n"  # not the run's own file: kept
    assert not list(dest.glob(".import-*"))


def test_no_dest_imports_into_the_out_dir_inside_the_project(device_out, tmp_path):
    r = _import([str(device_out)], cwd=tmp_path)
    assert r.returncode == 0 and len(list((tmp_path / "results" / "study").glob("*/seed*/summary.json"))) == 2, r.stderr


# ---------------------------------------------------------------- threads and the console


def test_an_omp_num_threads_that_is_not_used_is_said(monkeypatch):
    from bnstudy import threads

    from .test_threads import _cfg

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    d = threads.decide(_cfg())
    assert d.threads == 1 and d.why.endswith("; OMP_NUM_THREADS=3 is not used: train.threads=N sets the count"), d
    d = threads.decide(_cfg(threads_=2))
    assert d.threads == 2 and d.why.startswith("train.threads=2 (over OMP_NUM_THREADS=3)"), d


def test_more_threads_than_cores_warn_once(monkeypatch, caplog):
    from bnstudy import threads

    from .test_threads import _cfg

    monkeypatch.setattr(threads, "available_cores", lambda: (2, "test"))
    monkeypatch.setattr(threads, "_warned", set())
    n = torch.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="bnstudy"):
            threads.apply(_cfg(threads_=5))
            threads.apply(_cfg(threads_=5))
    finally:
        torch.set_num_threads(n)
    said = [r.getMessage() for r in caplog.records if "more than the 2 usable cores" in r.getMessage()]
    assert len(said) == 1, caplog.text


def test_help_into_a_closed_pipe_is_quiet(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "bnstudy.train", "--help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone (``| head`` after its lines)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and "BrokenPipe" not in err and "Traceback" not in err, err


# ---------------------------------------------------------------- damaged runs: named by every reader, never used


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory) -> Path:
    """An out_dir holding three finished runs (seeds 0, 1, 2) of the FAST config."""
    from .conftest import private_data

    out = tmp_path_factory.mktemp("three_seeds")
    with private_data(tmp_path_factory):
        r = cli(["-m", *FAST, "seed=0,1,2", f"out_dir={out}"], cwd=out)
    assert r.returncode == 0, r.stderr
    return out


DAMAGED_SUMMARY = {
    # seed: (edit of its summary.json, what --check says)
    0: (lambda s: s.update(provenance="x"), "summary.json 'provenance' is not an object"),
    1: (lambda s: s.update(status="diverged"), "do not match its checksum"),
}


def _damaged_copy(three_seeds: Path, tmp_path: Path) -> tuple[Path, dict[int, Path]]:
    """A copy of ``three_seeds`` with seeds 0 and 1 damaged as :data:`DAMAGED_SUMMARY` says; seed 2 intact."""
    out = tmp_path / "study"
    shutil.copytree(three_seeds, out)
    runs = {seed: next(out.glob(f"*/seed{seed}")) for seed in range(3)}
    for seed, (change, _) in DAMAGED_SUMMARY.items():
        s = summary(runs[seed])
        change(s)
        (runs[seed] / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    return out, runs


def test_reproduce_names_damaged_runs_and_retrains_only_the_intact_one(three_seeds, tmp_path, tmp_data):
    from bnstudy.runs_cli import runs as runs_cli

    from .test_provenance import call

    out, runs = _damaged_copy(three_seeds, tmp_path)
    before = tree(out)
    code, stdout, err = call(runs_cli, [str(out), "--reproduce", "3", "--steps", "2"])
    assert code == 1 and "Traceback" not in err, err
    lines = {line.split("  (")[0].split()[-1]: line for line in stdout.splitlines()}  # run -> its line
    for seed, (_, says) in DAMAGED_SUMMARY.items():
        line = lines[f"{runs[seed].parent.name}/{runs[seed].name}"]
        assert line.startswith("damaged ") and "not re-trained" in line and says in line, stdout
    assert lines[f"{runs[2].parent.name}/{runs[2].name}"].startswith("bit-identical"), stdout
    assert "2 damaged" in err and tree(out) == before


def test_the_listing_marks_damaged_run_folders(three_seeds, tmp_path):
    from bnstudy.runs_cli import runs as runs_cli

    from .test_provenance import call

    out, runs = _damaged_copy(three_seeds, tmp_path)
    code, stdout, err = call(runs_cli, [str(out), "--csv"])
    assert code == 0 and "Traceback" not in err, err
    rows = {line.split(",")[0]: line for line in stdout.strip().splitlines()[1:]}
    for seed, (_, says) in DAMAGED_SUMMARY.items():
        assert ",damaged," in rows[f"{runs[seed].parent.name}/{runs[seed].name}"], stdout
        assert f"damaged {runs[seed]}" in err and says in err, err
    assert ",completed," in rows[f"{runs[2].parent.name}/{runs[2].name}"]
    code, stdout, _ = call(runs_cli, [str(out), "--status", "completed,diverged", "--csv"])  # not listed as what they claim
    assert code == 0 and len(stdout.strip().splitlines()) == 2 and "seed2" in stdout


@pytest.mark.parametrize("damage", ["runs.jsonl cut short", "runs.jsonl deleted"])
def test_a_damaged_pack_says_restore_from_git_once(damage, tmp_path):
    from bnstudy.archive_write import pack
    from bnstudy.runs_cli import runs

    from .test_archive import fake_run
    from .test_provenance import call

    study = tmp_path / "study"
    fake_run(study, 0)
    fake_run(study, 1)
    pack(study)
    if damage == "runs.jsonl deleted":
        (study / "runs.jsonl").unlink()
    else:
        (study / "runs.jsonl").write_text((study / "runs.jsonl").read_text()[:-40])
    for argv in ([str(study)], [str(study), "--pack"], [str(study), "--unpack"], [str(study), "--stale"]):
        code, _, err = call(runs, argv)
        line = first_line(err)
        assert code == 2 and line.startswith("error: ") and line.count("from git") == 1, (argv, err)


# ---------------------------------------------------------------- a full disk, then a resume


def test_a_run_resumed_after_a_full_disk_keeps_no_error_txt(tmp_path, tmp_data):
    from .test_lifecycle import enospc

    args = [*FAST, "train.steps=6", f"out_dir={tmp_path / 'out'}"]
    run = run_dir_of(args)
    r = cli(args, cwd=tmp_path, env=enospc(".checkpoint.pt.*.tmp:2"))  # the checkpoint at step 2 fits, the one at 4 not
    assert r.returncode == 1 and summary(run)["status"] == "failed" and (run / "error.txt").exists(), r.stderr
    r = cli(args, cwd=tmp_path)  # space again: the same command resumes from step 2 and completes
    assert r.returncode == 0 and "resumed" in (run / "train.log").read_text(), r.stderr
    assert summary(run)["status"] == "completed" and not (run / "error.txt").exists()


# ---------------------------------------------------------------- a command that trains nothing leaves nothing

REJECTED = [
    # (case, overrides, environment, first line of stderr: a regex)
    ("a learning rate below zero", ["optim.lr=-1"], {}, r"^error: optim\.lr must be > 0"),
    ("a negative thread count", ["train.threads=-1"], {}, r"^error: train\.threads must be 0"),
    ("a key the schema lacks", ["+foo=1"], {}, r"^error: unknown config key 'foo'"),
    ("a dataset that is not there", ["data=mnist", "data.download=false"], "nodata", r"^error: no mnist data"),
    ("channels_last refused", ["data.channels=3", "data.size=8", "model=resnet", "model.width=4", "train.channels_last=true"], {},
     r"^error: train\.channels_last=true with a ResNet of model\.width=4 crashes"),
    ("amp refused", ["train.amp=true"], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, r"^error: train\.amp=true asks for bf16 autocast, but "),
    ("a sweep of bad values", ["-m", "seed=0,1", "optim.lr=-1"], {}, r"^error: optim\.lr must be > 0"),
]


@pytest.mark.parametrize("case,overrides,env,expected", REJECTED, ids=[c[0] for c in REJECTED])
def test_a_rejected_command_creates_no_folder(case, overrides, env, expected, tmp_path, tmp_data):
    if env == "nodata":
        env = {"BNSTUDY_DATA_MIRROR": str(tmp_path / "no-mirror")}
    flags = [o for o in overrides if o.startswith("-")]  # -m goes first
    args = [*flags, *FAST, *(o for o in overrides if o not in flags), f"out_dir={tmp_path / 'x' / 'deep' / 'er'}"]
    r = cli(args, cwd=tmp_path, env=env)
    assert r.returncode == 2 and re.search(expected, r.stderr.strip().splitlines()[-1]), r.stderr
    assert not (tmp_path / "x").exists(), sorted(map(str, (tmp_path / "x").rglob("*")))


def test_a_sweep_stopped_by_a_run_damaged_in_its_pack_writes_nothing(tmp_path):
    """The sweep's jobs: seed 0 packed and intact (skipped), seed 1 packed with an edited value (stops the sweep)."""
    import pandas as pd

    from bnstudy.archive_write import pack

    from .test_archive import fake_run

    study = tmp_path / "study"
    for seed in (0, 1):
        fake_run(study, seed)
    pack(study)
    (study / "multirun.yaml").write_text("hydra: {the: sweep that made the study}\n")
    t = pd.read_parquet(study / "metrics.parquet")
    t.loc[t.index[-1], "value"] = 0.5  # the last row, seed 1's
    t.to_parquet(study / "metrics.parquet")
    before = tree(study)
    r = cli(["-m", "data=synthetic", "norm=bn", "seed=0,1", "train.steps=20", f"out_dir={study}"], cwd=tmp_path)
    line = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and re.match(r"^error: .*seed1 is damaged in its pack", line), r.stderr
    assert tree(study) == before, "a file was written or changed (multirun.yaml?)"
    assert not [p for p in study.rglob("*") if p.is_dir()], "a folder was left (an empty seed0/?)"
