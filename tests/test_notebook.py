"""notebooks/convergence.ipynb executes top to bottom against a small results folder, so it cannot rot;
a folder without runs stops it with one line, and the documented headless command then exits non-zero."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bnstudy.analysis as A
from tests.test_analysis import make_results

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "convergence.ipynb"
KERNEL = "bnstudy-test-python"


def pin_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Kernel specs of our own pinned to this interpreter: whatever they mean on this machine (a user-level
    spec, another env), the kernel sees this venv's bnstudy."""
    for name in names:
        spec = tmp_path / "jupyter" / "kernels" / name
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


def test_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = make_results(tmp_path / "results")
    # relative, as typed at the project root; the kernel runs in notebooks/, one folder below
    monkeypatch.setenv("BNSTUDY_RESULTS", os.path.relpath(results, ROOT))
    pin_kernels(tmp_path, monkeypatch, KERNEL)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # accuracy and loss, against steps and seconds
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("final_test_acc" in o["data"]["text/html"] for o in tables)


def test_headless_run_fails_on_a_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented headless command, run from the project root, exits non-zero with one line saying which folder."""
    pin_kernels(tmp_path, monkeypatch, "python3")  # the notebook's own kernel name
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), "jupyter execute comes with the dev extra (nbclient): pip install -e '.[dev]'"
    env = {**os.environ, "BNSTUDY_RESULTS": "does/not/exist"}
    p = subprocess.run([str(jupyter), "execute", "notebooks/convergence.ipynb"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    out = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout + p.stderr)  # the kernel colours its traceback
    assert f"NoRuns: does/not/exist: no such folder ({ROOT / 'does/not/exist'})" in out


def test_load_study_reads_a_relative_path_from_the_project_root(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    make_results(project / "results" / "study")
    assert A.project_root(project / "notebooks") == project
    assert A.project_root(tmp_path) == tmp_path  # no pyproject.toml above: the folder itself
    with pytest.warns(UserWarning, match="broken"):
        root, runs, metrics = A.load_study("results/study", start=project / "notebooks")
    assert root == project / "results" / "study"
    assert len(runs) == 7 and set(metrics["run"]) <= set(runs["run"]) and not metrics.empty
    with pytest.raises(A.NoRuns, match="no such folder"):
        A.load_study("study", start=project / "notebooks")  # not read from notebooks/
    # a folder without a readable run is an error, not empty tables
    empty = project / "results" / "empty" / "run" / "seed0"
    empty.mkdir(parents=True)
    with pytest.raises(A.NoRuns, match="no runs under"):
        A.load_study(project / "results" / "empty")
    (empty / "summary.json").write_text('{"status": "compl')
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(A.NoRuns, match="no runs under"):
        A.load_study(project / "results" / "empty")
