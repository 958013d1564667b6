"""Fault injection on a full disk: ``--pack`` and ``--unpack`` with every amount of space left that makes them fail
part way. Each attempt either succeeds whole or fails with one line (exit 1), leaving the study exactly as it was and
usable by the next command.

The disk is a small tmpfs where the tests can mount one (root); elsewhere the writes are made to fail at the call.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnstudy.archive import PACK_METRICS, PACK_RUNS

from .test_archive import fake_run, files
from .test_provenance import call

PAGE = 4096


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "1m") -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted at ``where`` while the block runs; None where this process cannot mount one."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def leave_free(disk: Path, pages: int) -> None:
    """Fill ``disk`` up, then free ``pages`` pages of it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * PAGE)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - pages * PAGE))


def study_of_two(root: Path) -> Path:
    """A study folder holding two finished run folders."""
    fake_run(root, 0)
    fake_run(root, 1)
    return root


def _full_at_write(monkeypatch, which: str) -> None:
    """Without a tmpfs: the pack's metrics table or its runs.jsonl meets a full disk as it is written."""
    import builtins

    import pyarrow.parquet as pq

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if which == PACK_METRICS:
        def write_table(table, where, **kw):
            Path(where).write_bytes(b"PAR1")  # a first part of the file, then no space
            raise full
        monkeypatch.setattr(pq, "write_table", write_table)
        return
    real = builtins.open

    def opened(file, mode="r", *a, **kw):
        f = real(file, mode, *a, **kw)
        if "w" in mode and Path(str(file)).name == which:
            f.close()
            raise full
        return f
    monkeypatch.setattr(builtins, "open", opened)


def _assert_pack_failed_cleanly(code: int, err: str, study: Path, before: dict) -> None:
    from bnstudy.runs_cli import runs

    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: no space left on the device holding {study}: nothing was packed"), err
    assert files(study) == before, "a file was left or changed"
    assert not list(study.glob(".pack-*")), "a temp folder was left"
    # and the study is not blocked: it lists, checks and packs once there is space
    code, out, err = call(runs, [str(study)])
    assert code == 0 and "Traceback" not in err, err


def test_pack_on_a_full_disk_fails_whole_and_leaves_the_folders_usable(tmp_path):
    from bnstudy.runs_cli import runs

    with tmpfs(tmp_path / "disk", "1m") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here: the simulated case below covers it")
        study = study_of_two(disk / "study")
        before = files(study)
        failed = packed = 0
        for pages in range(0, 64):  # every point where the space runs out: the table, runs.jsonl, neither
            (disk / "filler").unlink(missing_ok=True)
            leave_free(disk, pages)
            code, out, err = call(runs, [str(study), "--pack"])
            if code == 0:
                packed += 1
                break
            failed += 1
            _assert_pack_failed_cleanly(code, err, study, before)
        assert failed and packed, (failed, packed)
        assert (study / PACK_RUNS).exists() and (study / PACK_METRICS).exists() and not list(study.glob("*/seed*"))
        (disk / "filler").unlink()
        assert call(runs, [str(study), "--check"])[0] == 0


@pytest.mark.parametrize("which", [PACK_METRICS, PACK_RUNS])
def test_pack_with_a_write_that_finds_no_space_fails_whole(which, tmp_path, monkeypatch):
    from bnstudy.runs_cli import runs

    study = study_of_two(tmp_path / "study")
    before = files(study)
    with monkeypatch.context() as m:
        _full_at_write(m, which)
        code, out, err = call(runs, [str(study), "--pack"])
    _assert_pack_failed_cleanly(code, err, study, before)
    assert call(runs, [str(study), "--pack"])[0] == 0 and not list(study.glob("*/seed*"))


def test_unpack_on_a_full_disk_is_one_line_and_keeps_the_pack(tmp_path):
    from bnstudy.runs_cli import runs

    with tmpfs(tmp_path / "disk", "1m") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here")
        study = study_of_two(disk / "study")
        assert call(runs, [str(study), "--pack"])[0] == 0
        packed = files(study)
        failed = 0
        for pages in range(0, 64):
            (disk / "filler").unlink(missing_ok=True)
            leave_free(disk, pages)
            code, out, err = call(runs, [str(study), "--unpack"])
            if code == 0:
                break
            failed += 1
            lines = err.strip().splitlines()
            assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
            assert lines[0].startswith(f"error: no space left on the device holding {study}: nothing was unpacked"), err
            assert files(study) == packed and sorted(p.name for p in study.iterdir()) == [PACK_METRICS, PACK_RUNS]
        assert failed and code == 0, err
        assert len(list(study.glob("*/seed*/summary.json"))) == 2 and not (study / PACK_RUNS).exists()


def test_a_metrics_table_left_by_an_older_failed_pack_is_named_as_such(tmp_path):
    """What a --pack that failed part way left before packing became atomic: metrics.parquet beside the very run folders
    it holds. Every command names it and says to delete it (not to restore a runs.jsonl that never existed)."""
    from bnstudy.archive_write import pack
    from bnstudy.runs_cli import runs

    study = study_of_two(tmp_path / "study")
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    pack(copy)
    shutil.copy(copy / PACK_METRICS, study / PACK_METRICS)
    for argv in ([str(study)], [str(study), "--pack"], [str(study), "--check"]):
        code, out, err = call(runs, argv)
        said = (out + err).strip().splitlines()
        assert code in (1, 2) and "Traceback" not in err, (argv, err)
        assert any("left by a --pack that failed part way; delete" in line and "from git" not in line for line in said), (argv, out, err)
    (study / PACK_METRICS).unlink()  # what the line says: then every command goes on
    assert call(runs, [str(study), "--pack"])[0] == 0 and call(runs, [str(study), "--check"])[0] == 0
    (copy / PACK_RUNS).unlink()  # a pack that lost its runs.jsonl, its runs gone from folders: restore it
    code, _, err = call(runs, [str(copy)])
    assert code == 2 and "left by a --pack" not in err and err.count("from git") == 1, err
