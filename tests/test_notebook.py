"""notebooks/convergence.ipynb executes top to bottom against a small results folder, so it cannot rot."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_analysis import make_results

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "convergence.ipynb"
KERNEL = "bnstudy-test-python"


def test_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = make_results(tmp_path / "results")
    monkeypatch.setenv("BNSTUDY_RESULTS", str(results))
    # A kernel spec of our own pinned to this interpreter: whatever "python3" means on
    # this machine (a user-level spec, another env), the kernel sees this venv's bnstudy.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # accuracy and loss, against steps and seconds
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("final_test_acc" in o["data"]["text/html"] for o in tables)
