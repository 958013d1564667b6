"""What marks a run stale: only files that can change a logged number, compared file by file."""
from __future__ import annotations

import shutil

from bnstudy import provenance
from bnstudy.provenance import NOT_TRAINING, code_version, current_code, is_training, stale_files

from .conftest import ROOT


def _summary(files: dict[str, str]) -> dict:
    return {"provenance": {"code": {"fingerprint": provenance.fingerprint(files), "files": dict(files)}}}


def test_bookkeeping_edits_leave_runs_current(tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(ROOT / "bnstudy", copy, ignore=shutil.ignore_patterns("__pycache__"))
    run = _summary(current_code(copy)["files"])
    for rel in ("cli/app.py", "cli/skip.py", "runs.py", "runs_cli.py", "errors.py", "reproduce.py", "provenance.py", "analysis/plots.py"):
        (copy / rel).write_text((copy / rel).read_text() + "\n# a message reworded\n")
    (copy / "archive.py").write_text("# packs finished runs\n")
    assert stale_files(run, current_code(copy)) == []
    (copy / "norm" / "variants.py").write_text((copy / "norm" / "variants.py").read_text() + "\nX = 1\n")
    (copy / "train" / "checkpoint_x.py").write_text("# a new training module counts until it is listed\n")
    assert stale_files(run, current_code(copy)) == ["bnstudy/norm/variants.py", "bnstudy/train/checkpoint_x.py"]


def test_a_record_made_by_the_broader_rule_is_compared_on_the_shared_files():
    now = current_code()["files"]
    # as every committed summary: the old rule also hashed the CLI, errors, runs.py, provenance.py
    old = {**now, "bnstudy/cli.py": "0" * 12, "bnstudy/errors.py": "1" * 12, "bnstudy/runs.py": "2" * 12}
    assert stale_files(_summary(old)) == []
    assert code_version(_summary(old)) == code_version(_summary(now)) == current_code()["fingerprint"]
    assert stale_files({"provenance": {"commit": "unknown"}}) is None and code_version({}) is None


def test_a_moved_file_is_stale_until_an_audited_equivalence_names_it(monkeypatch):
    now = current_code()["files"]
    loop = "bnstudy/train/loop.py"
    # a run trained before loop.py was split: its loop.py differs, and it never saw the new file
    moved = {k: v for k, v in now.items() if k != "bnstudy/train/state.py"} | {loop: "a" * 12}
    if "bnstudy/train/state.py" not in now:
        now = {**now, "bnstudy/train/state.py": "b" * 12}
    current = {"fingerprint": provenance.fingerprint(now), "files": now}
    assert loop in stale_files(_summary(moved), current)
    after = {f: now[f] for f in (loop, "bnstudy/train/state.py")}
    monkeypatch.setattr(provenance, "EQUIVALENT", [({loop: "a" * 12}, after, "test")])
    assert stale_files(_summary(moved), current) == []
    edited = {**now, loop: "c" * 12}  # an edit after the audited move is stale again
    assert stale_files(_summary(moved), {"fingerprint": "x", "files": edited}) == [loop]


def test_the_rule_names_files_that_exist_or_are_expected():
    # every entry is a file or folder of the package, or one the parallel work adds (archive, threads)
    expected = {"archive.py", "threads.py"}
    for name in NOT_TRAINING:
        assert name in expected or list((ROOT / "bnstudy").glob(name.rstrip("/") + "*")), name
    assert is_training("train/loop.py") and is_training("bnstudy/norm/variants.py") and not is_training("bnstudy/cli/sweep.py")


def test_an_equivalence_entry_made_from_a_record_makes_it_current(monkeypatch):
    now = current_code()["files"]
    old = {k: v for k, v in now.items() if k != "bnstudy/train/state.py"} | {"bnstudy/probes.py": "d" * 12, "bnstudy/cli.py": "e" * 12}
    before, after = provenance.equivalence(_summary(old))
    assert before == {"bnstudy/probes.py": "d" * 12} and set(after) == ({"bnstudy/train/state.py"} & set(now))
    assert "bnstudy/probes.py" in stale_files(_summary(old))
    monkeypatch.setattr(provenance, "EQUIVALENT", [(before, after, "test")])
    assert stale_files(_summary(old)) == []
