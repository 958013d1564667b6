"""The guard on committed evidence: a change to training code that makes a committed run stale fails the suite
until it is audited (``bnstudy-runs <study> --reproduce N``, then an ``EQUIVALENT`` entry) or the runs re-trained.

``pytest -k stale`` selects it. It reads only the committed summaries (about 1,500, a few seconds), never the data.
"""
from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from bnstudy.archive import iter_runs
from bnstudy.provenance import current_code, stale_files

from .conftest import ROOT

RESULTS = ROOT / "results"


def _last_change(rel: str, package_dir: Path) -> str:
    """The commit that last changed ``rel`` (``bnstudy/<path>``), or what else explains the change."""
    path = package_dir / rel.removeprefix("bnstudy/")
    if package_dir.resolve() != (ROOT / "bnstudy").resolve():
        return f"edited in {package_dir} (not committed)"
    if not path.exists():
        return "removed or moved in the working tree"

    def git(*args: str) -> str:
        try:
            p = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return p.stdout.strip() if p.returncode == 0 else ""

    if git("status", "--porcelain", "--", rel):
        return "changed in the working tree (not committed)"
    return git("log", "-1", "--format=commit %h (%s)", "--", rel)[:120] or "unknown commit (no git history here)"


def stale_report(package_dir: Path = ROOT / "bnstudy", results: Path = RESULTS) -> str:
    """'' when no committed run is stale against ``package_dir``'s training code, else one paragraph per file."""
    current = current_code(package_dir)
    by_file: dict[str, list[str]] = defaultdict(list)
    for rec in iter_runs(results):
        s = rec.summary
        for f in (stale_files(s, current) or []) if isinstance(s, dict) else []:
            by_file[f].append(rec.rel)
    lines = []
    for f, runs in sorted(by_file.items()):
        studies = sorted({r.split("/")[0] for r in runs})
        lines.append(
            f"{f}, {_last_change(f, package_dir)}: makes {len(runs)} committed run(s) stale ({', '.join(studies)}; "
            f"e.g. {runs[0]}). Audit it: `bnstudy-runs results/<study> --reproduce N` on samples of every study kind, "
            "then an EQUIVALENT entry in bnstudy/provenance.py citing that check; or re-train the runs (force=true)"
        )
    return "\n".join(lines)


@pytest.mark.skipif(not RESULTS.is_dir() or not any(RESULTS.iterdir()), reason="no committed results in this checkout")
def test_no_committed_run_is_stale():
    report = stale_report()
    assert not report, "committed runs are stale:\n" + report


def test_the_stale_guard_fails_on_an_unaudited_change(tmp_path):
    copy = tmp_path / "bnstudy"
    shutil.copytree(ROOT / "bnstudy", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert stale_report(copy) == stale_report()  # an exact copy is as current as the checkout
    loop = copy / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\n# an edit that nobody audited\n")
    report = stale_report(copy)
    assert "bnstudy/train/loop.py, edited in" in report and "--reproduce" in report and "EQUIVALENT" in report
    n = int(report.split("makes ")[1].split(" ")[0])
    assert n >= 1000  # every run that recorded its code trained through the loop
    # a bookkeeping file is not training code: editing it makes nothing stale
    shutil.copy(ROOT / "bnstudy" / "train" / "loop.py", loop)
    (copy / "runs_cli.py").write_text((copy / "runs_cli.py").read_text() + "\n# a message reworded\n")
    assert stale_report(copy) == stale_report()
