"""A variant from outside the package, as a researcher would add one: a module and a YAML in a folder of their own.

Written into a temporary folder, it sweeps (two seeds, beside bn) with the joblib and submitit launchers, reports,
passes ``--check``, reproduces, and goes stale when edited; bnstudy itself is not touched. The reading commands run
in fresh interpreters, so the plugin never enters this test process's registry.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, cli

FAST = ["data=synthetic", "data.train_size=256", "data.test_size=64", "train.progress=off", "train.steps=20",
        "train.eval_every=10", "train.log_every=10"]  # fmt: skip

DOCS = ROOT / "docs" / "plugins.md"


def docs_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of docs/plugins.md, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.S | re.M)


def docs_file(path: str) -> str:
    """The block of docs/plugins.md whose first line is ``# <path>``: a file the page tells the reader to write."""
    (text,) = [t for _, t in docs_blocks() if t.startswith(f"# {path}\n")]
    return text


PLUGIN = docs_file("rms_bn.py")  # the page's example is the plugin every test here uses


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    """A researcher's folder: ``rms_bn.py`` and ``conf/norm/rms_bn.yaml``, nothing else."""
    (tmp_path / "conf" / "norm").mkdir(parents=True)
    (tmp_path / "conf" / "norm" / "rms_bn.yaml").write_text(docs_file("conf/norm/rms_bn.yaml"))
    (tmp_path / "rms_bn.py").write_text(PLUGIN)
    return tmp_path


def sweep(folder: Path, out: str, *more: str):
    """The sweep a user runs from their folder: bn and their variant, two seeds."""
    args = ["-m", "plugins=[rms_bn]", "hydra.searchpath=[file://conf]", "norm=bn,rms_bn", "seed=0,1", *FAST, f"out_dir={out}", *more]
    return cli(args, cwd=folder, env={"BNSTUDY_DATA_DIR": str(folder / "data")}, timeout=600)


def command(folder: Path, fn: str, *args: str) -> subprocess.CompletedProcess:
    """``bnstudy-runs`` or ``bnstudy-report`` in a fresh interpreter, run from ``folder``."""
    code = f"import sys; from bnstudy.runs_cli import {fn}; {fn}(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=folder, capture_output=True, text=True, timeout=300)


def summaries(out: Path) -> dict[str, dict]:
    return {p.parent.parent.name.split("-")[2] + "/" + p.parent.name: json.loads(p.read_text()) for p in out.glob("*/seed*/summary.json")}


def test_a_plugin_variant_sweeps_reports_reproduces_and_goes_stale(plugin: Path, tmp_path: Path):
    r = sweep(plugin, "out", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert r.returncode == 0, r.stderr[-2000:]
    s = summaries(plugin / "out")
    assert sorted(s) == ["bn/seed0", "bn/seed1", "rms_bn/seed0", "rms_bn/seed1"]
    assert all(v["status"] == "completed" for v in s.values())
    # the plugin's file is training code of its variant's runs (where it was found, and its hash), not of bn's
    prov = s["rms_bn/seed0"]["provenance"]
    assert prov["plugins"] == {"rms_bn": str(plugin / "rms_bn.py")} and "plugin:rms_bn.py" in prov["code"]["files"]
    assert "plugins" not in s["bn/seed0"]["provenance"]
    assert not any(f.startswith("plugin:") for f in s["bn/seed0"]["provenance"]["code"]["files"])
    # the plugin names no run: bn's folder is the one a sweep without it trains
    names = {p.parent.name for p in (plugin / "out").glob("*/seed0")}
    assert any(n.startswith("synthetic-mlp-rms_bn-") for n in names)

    # read from another folder: the runs recorded where the plugin is
    rep = command(tmp_path, "report", str(plugin / "out"), "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "rms_bn" in (tmp_path / "report" / "report.md").read_text() and "fallback colour" not in rep.stderr
    check = command(tmp_path, "runs", str(plugin / "out"), "--check")
    assert check.returncode == 0 and "all intact" in check.stderr, check.stderr
    again = command(tmp_path, "runs", str(plugin / "out"), "--reproduce", "4", "--steps", "10")
    assert again.returncode == 0 and again.stdout.count("bit-identical") == 4, again.stdout + again.stderr
    fresh = command(tmp_path, "runs", str(plugin / "out"), "--stale")
    assert "0 stale, 4 current" in fresh.stderr, fresh.stderr

    # an edited plugin: its variant's runs are stale, bn's are not; a second sweep says so and trains nothing
    (plugin / "rms_bn.py").write_text(PLUGIN.replace("ms.view(view) + self.eps", "ms.view(view) + 1e-3"))
    stale = command(tmp_path, "runs", str(plugin / "out"), "--stale")
    lines = [x for x in stale.stdout.splitlines() if x.startswith("stale ")]
    assert len(lines) == 2 and all("-rms_bn-" in x and "changed since: plugin:rms_bn.py" in x for x in lines), stale.stdout
    assert "2 stale, 2 current" in stale.stderr
    rerun = sweep(plugin, "out")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    log = rerun.stdout + rerun.stderr
    assert log.count("trained by other code") == 2 and "completed out/" not in log, log


def test_a_plugin_variant_runs_under_submitit(plugin: Path):
    r = cli(["-m", "plugins=[rms_bn]", "hydra.searchpath=[file://conf]", "norm=rms_bn", *FAST, "out_dir=out",
             "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
            cwd=plugin, env={"BNSTUDY_DATA_DIR": str(plugin / "data")}, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = summaries(plugin / "out").values()
    assert run["status"] == "completed" and "plugin:rms_bn.py" in run["provenance"]["code"]["files"]


@pytest.mark.parametrize(
    "entry,message",
    [
        ("no_such_module", "plugin module 'no_such_module' is not importable from"),
        ("lib/missing.py", "plugin file lib/missing.py does not exist"),
        ("clash", "plugin clash registers norm bn, a name already taken; give its variant another name"),
    ],
)
def test_a_plugin_that_cannot_load_is_one_line_before_anything_is_written(plugin: Path, entry: str, message: str):
    (plugin / "clash.py").write_text("from bnstudy.norm import register\nregister('bn', shift=True)(lambda n, d, cfg: None)\n")
    r = cli([f"plugins=[{entry}]", *FAST, "out_dir=out"], cwd=plugin)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {message}") and r.stderr.count("\n") == 1, r.stderr
    assert not (plugin / "out").exists()


def test_a_variant_without_its_yaml_or_module_says_where_to_add_it(plugin: Path):
    r = cli(["norm=rms_bn", *FAST, "out_dir=out"], cwd=plugin)
    assert r.returncode == 2 and "hydra.searchpath=[file://DIR]" in r.stderr, r.stderr
    r = cli(["norm.name=rms_bn", *FAST, "out_dir=out"], cwd=plugin)
    assert r.returncode == 2 and "plugins=[MODULE]" in r.stderr, r.stderr
    assert not list((plugin / "out").glob("*/seed*")), "no run folder left behind"


def test_the_docs_plugin_steps_work(tmp_path: Path):
    """docs/plugins.md step by step: its two files, its smoke sweep, report and --stale, then its contract check."""
    for _, text in docs_blocks():
        first = text.splitlines()[0]
        if first.startswith("# ") and first.endswith((".py", ".yaml")):
            (tmp_path / first[2:]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / first[2:]).write_text(text)
    assert (tmp_path / "rms_bn.py").exists() and (tmp_path / "conf" / "norm" / "rms_bn.yaml").exists()
    (smoke,) = [t for lang, t in docs_blocks() if lang == "sh" and "out_dir=runs/smoke" in t]
    for line in smoke.splitlines():
        prog, *args = shlex.split(line)
        if prog == "bnstudy-train":
            r = cli(args, cwd=tmp_path, env={"BNSTUDY_DATA_DIR": str(tmp_path / "data")})
        else:
            r = command(tmp_path, {"bnstudy-report": "report", "bnstudy-runs": "runs"}[prog], *args)
        assert r.returncode == 0, f"{line}\n{r.stdout[-1000:]}{r.stderr[-2000:]}"
    assert "rms_bn" in (tmp_path / "runs" / "smoke" / "report.md").read_text()
    assert "0 stale, 4 current" in r.stderr

    # step 3, the contract: the variant-wide tests over the variant, in a pytest of their own
    (check,) = [t for lang, t in docs_blocks() if lang == "sh" and "BNSTUDY_TEST_PLUGINS=" in t]
    assert "-m variants" in check and "BNSTUDY_TEST_PLUGINS_ONLY=1" in check
    env = {**os.environ, "BNSTUDY_TEST_PLUGINS": str(tmp_path / "rms_bn.py"), "BNSTUDY_TEST_PLUGINS_ONLY": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "variants", "-p", "no:cacheprovider", "-p", "no:xdist", "-rA",
         str(ROOT / "tests")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:]
    ran = [line for line in r.stdout.splitlines() if line.startswith("PASSED")]
    assert sum("rms_bn" in line for line in ran) >= 20, "the variant-wide cases of the plugin's variant ran"
    assert not any(f"[{n}" in line or f"-{n}]" in line for line in ran for n in ("bn_frozen", "layernorm")), "only its cases"
