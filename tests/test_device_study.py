"""scripts/device_study.sh end to end on CPU (tiny synthetic study), the import, refused transfers, and the time budget."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnstudy import devices, transfer
from bnstudy.cli import run_job
from bnstudy.runs import check_run, read_summary

from .conftest import ROOT, compose

TINY = ["data=synthetic", "train.steps=30", "train.eval_every=10", "train.log_every=10", "train.checkpoint_every=10"]


def transfer_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnstudy.transfer", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def runs_in(d: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(d)): read_summary(p.parent) for p in sorted(d.glob("**/summary.json"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The script run once: the quickstart sweep (3 runs) on synthetic data, 2 jobs at a time, into a temp folder."""
    tmp = tmp_path_factory.mktemp("device")
    out, runs = tmp / "out", tmp / "gpu-runs"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DEVICE_JOBS": "2",
        "DEVICE_KIT": str(tmp / "no-kit"),  # hydra is importable here, so nothing is installed
        "BNSTUDY_DATA_DIR": str(tmp / "data"),
    }
    cmd = ["bash", str(ROOT / "scripts" / "device_study.sh"), str(out), "quickstart", *TINY, f"out_dir={runs}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    return tmp, out, runs, r


def test_device_study_packs_and_imports(study):
    tmp, out, runs, r = study
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[device_study" in r.stdout and "3 run(s) packed (0 interrupted, 0 failed)" in r.stdout
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in files} == {"manifest.json", "sweep.log", "runs.tar.xz"}
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["study"] == "quickstart" and manifest["jobs"] == 2 and len(manifest["runs"]) == 3

    dest = tmp / "results" / "quickstart"
    imp = transfer_cli("import", str(out), str(dest))
    assert imp.returncode == 0, imp.stderr
    assert "imported 3 finished run(s)" in imp.stdout
    trained, imported = runs_in(runs), runs_in(dest)
    assert trained.keys() == imported.keys() and all(s["status"] == "completed" for s in imported.values())
    assert "Joblib.Parallel(n_jobs=2" in (out / "sweep.log").read_text()  # 2 jobs at a time ...
    assert len({s["device"] for s in imported.values()}) == 1  # ... on one shared device, none losing work
    for rel in imported:
        assert check_run(dest / rel) == []
        assert (dest / rel / "metrics.csv").read_bytes() == (runs / rel / "metrics.csv").read_bytes()
        assert not (dest / rel / "checkpoint.pt").exists()  # a finished run needs none
    assert not list(dest.glob(".import-*"))
    again = transfer_cli("import", str(out), str(dest))
    assert again.returncode == 0 and "kept 3 finished run(s)" in again.stdout
    # what a second job of the same study would pack: nothing it did not train itself
    assert transfer.trained_since(runs, time.time() + 1) == [] and len(transfer.trained_since(runs, 0)) == 3


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing part", "no manifest", "extra member"])
def test_damaged_or_partial_transfers_are_refused(study, damage, tmp_path):
    _, out, _, r = study
    assert r.returncode == 0
    bad, dest = tmp_path / "bad", tmp_path / "dest"
    shutil.copytree(out, bad)
    tar = bad / "runs.tar.xz"
    if damage == "truncated":
        tar.write_bytes(tar.read_bytes()[:-100])
    elif damage == "flipped":
        b = bytearray(tar.read_bytes())
        b[len(b) // 2] ^= 1
        tar.write_bytes(bytes(b))
    elif damage == "missing part":
        tar.unlink()
    elif damage == "no manifest":
        (bad / "manifest.json").unlink()
    else:  # a manifest that lists fewer runs than the archive holds
        m = json.loads((bad / "manifest.json").read_text())
        m["runs"] = m["runs"][:1]
        (bad / "manifest.json").write_text(json.dumps(m))
    r = transfer_cli("import", str(bad), str(dest))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "refused" in r.stderr, r.stderr
    assert not runs_in(dest) if dest.exists() else True


def test_deadline_stops_a_running_job():
    from bnstudy.train import StopRequest

    stop = StopRequest()
    os.environ[devices.DEADLINE_ENV] = str(time.time() + 0.3)
    try:
        with devices.deadline_stops(stop):
            assert stop.reason is None
            time.sleep(1.0)
            assert stop.reason and "time budget" in stop.reason
    finally:
        del os.environ[devices.DEADLINE_ENV]


def test_budget_interrupts_then_the_import_resumes(tmp_path, tmp_data, monkeypatch):
    """Past BNSTUDY_DEADLINE a job not yet started leaves nothing, one that started checkpoints as interrupted;
    packed with its checkpoint and imported, the run resumes to completion."""
    gpu, dest = tmp_path / "gpu", tmp_path / "results"
    short = ["data=synthetic", "train.steps=200", "train.eval_every=100", "train.log_every=50", "train.progress=off", "train.threads=1"]
    monkeypatch.setenv(devices.DEADLINE_ENV, str(time.time() - 1))
    since = time.time() - 1
    assert run_job(compose([*short, "seed=1", f"out_dir={gpu}"])) == "not started"
    assert not gpu.exists() or not any(gpu.rglob("*.json"))  # the job that did not start left no run
    monkeypatch.setattr(devices, "out_of_time", lambda: False)  # as if the budget ended just after this job began
    assert run_job(compose([*short, f"out_dir={gpu}"])) == "interrupted"
    (run,) = runs_in(gpu)
    s = read_summary(gpu / run)
    assert s["status"] == "interrupted" and "time budget" in s["reason"] and (gpu / run / "checkpoint.pt").exists()
    m = transfer.pack(gpu, tmp_path / "out", since, {"out_dir": "results"})  # as the script records it: inside the project
    assert m["runs"] == [{"run": run, "status": "interrupted", "step": s["step"], "checkpoint": True}]
    monkeypatch.chdir(tmp_path)
    assert transfer.main(["import", str(tmp_path / "out")]) == 0  # into the out_dir the manifest records
    monkeypatch.delenv(devices.DEADLINE_ENV)
    assert run_job(compose([*short, f"out_dir={dest}"])) == "completed"
    assert check_run(dest / run) == [] and read_summary(dest / run)["step"] == 200
