"""Trackers (bnstudy/trackers.py): a sweep logged to MLflow and to TensorBoard's HParams dashboard, read back with
MLflow's own client and TensorBoard's own HParams backend; neither renames a run; a missing package is one line."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnstudy import trackers
from bnstudy.config import RunConfig, run_name
from bnstudy.errors import ConfigError

from .conftest import cli, compose

HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAVE_TB = importlib.util.find_spec("tensorboard") is not None
SWEEP = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=8", "train.batch_size=32",
         "train.progress=off", "train.threads=1", "train.steps=20", "train.eval_every=10", "train.log_every=5",
         "study=tracked"]  # fmt: skip
GRID = ["norm=bn,none", "seed=0,1"]


def rows(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as {split/metric: [(step, value), ...]}."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault(f"{r['split']}/{r['metric']}", []).append((int(r["step"]), float(r["value"])))
    return out


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A 2 variants x 2 seeds sweep with every tracker installed here turned on, run in its own working folder
    (MLflow's default store, mlruns/, lands there)."""
    if not (HAVE_MLFLOW or HAVE_TB):
        pytest.skip("neither mlflow (pip install -e '.[mlflow]') nor tensorboard is installed")
    root = tmp_path_factory.mktemp("tracked")
    flags = [f"logger.mlflow={str(HAVE_MLFLOW).lower()}", f"logger.tensorboard={str(HAVE_TB).lower()}"]
    r = cli(["-m", f"out_dir={root / 'out'}", *SWEEP, *GRID, *flags], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[WARNING] mlflow:" not in r.stdout and "[WARNING] tensorboard:" not in r.stdout  # no tracker failed
    return root


def run_dirs(root: Path) -> list[Path]:
    dirs = sorted((root / "out").glob("*/seed*"))
    assert len(dirs) == 4
    return dirs


def test_trackers_do_not_rename_a_run(swept: Path) -> None:
    plain = compose([f"out_dir={swept / 'out'}", *SWEEP, "norm=bn", "seed=0"])
    tracked = compose([f"out_dir={swept / 'out'}", *SWEEP, "norm=bn", "seed=0", "logger.mlflow=true",
                       f"logger.mlflow_uri={swept / 'elsewhere'}", "logger.tensorboard=true"])  # fmt: skip
    name = run_name(OmegaConf.to_container(plain, resolve=True))
    assert name == run_name(OmegaConf.to_container(tracked, resolve=True))
    assert (swept / "out" / name / "summary.json").exists()  # the folder the tracked sweep trained


def mlflow_client(uri: str):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # as bnstudy does for a file store
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_mlflow_holds_each_run_with_its_config_factors_and_every_logged_value(swept: Path) -> None:
    client = mlflow_client((swept / "mlruns").as_uri())  # the default store: mlruns/ in the working folder
    exp = client.get_experiment_by_name("tracked")  # one experiment per study
    assert exp is not None
    logged = {r.data.tags["bnstudy.run_dir"]: r for r in client.search_runs([exp.experiment_id])}
    dirs = run_dirs(swept)
    assert sorted(logged) == sorted(str(d.resolve()) for d in dirs)
    for d in dirs:
        run, s = logged[str(d.resolve())], summary(d)
        assert run.info.status == "FINISHED" and run.info.run_name == s["run"]
        # params: the resolved config as the run recorded it, one per leaf key
        config = OmegaConf.to_container(OmegaConf.load(d / "config.yaml"))
        assert run.data.params == trackers.flat_params(config)
        assert run.data.params["optim.lr"] == str(config["optim"]["lr"]) and run.data.params["norm.name"] == s["factors"]["norm"]
        # tags: the variant and each factor that applies
        assert run.data.tags["variant"] == s["factors"]["norm"]
        assert {k: run.data.tags[k] for k, v in s["factors"].items() if v is not None} == {
            k: str(v) for k, v in s["factors"].items() if v is not None
        }
        # metrics: every value of metrics.csv at its step, nothing more
        for key, expected in rows(d).items():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert history == expected, key
        assert run.data.metrics["test/acc"] == s["final"]["test/acc"]


def test_a_resumed_run_continues_its_mlflow_run(swept: Path, tmp_path: Path) -> None:
    """A job interrupted at step 10 logs to step 10 (status KILLED); the job that finishes the run logs the rest into
    the same MLflow run, no step twice."""
    client = mlflow_client((tmp_path / "store").as_uri())
    full = run_dirs(swept)[0]
    run_dir = tmp_path / full.parent.name / full.name
    shutil.copytree(full, run_dir)
    cfg = RunConfig.from_dict(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    cfg.logger.mlflow, cfg.logger.mlflow_uri = True, str(tmp_path / "store")
    finished = (run_dir / "metrics.csv").read_text()
    lines = finished.splitlines(keepends=True)
    (run_dir / "metrics.csv").write_text("".join(lines[:1] + [x for x in lines[1:] if int(x.split(",")[0]) <= 10]))
    done = summary(full)
    (run_dir / "summary.json").write_text(json.dumps({**done, "status": "interrupted", "step": 10}))
    first = trackers.log_mlflow(cfg, run_dir, summary(run_dir))
    assert client.get_run(first).info.status == "KILLED"
    assert max(m.step for m in client.get_metric_history(first, "test/acc")) == 10

    (run_dir / "metrics.csv").write_text(finished)
    (run_dir / "summary.json").write_text(json.dumps(done))
    assert trackers.log_mlflow(cfg, run_dir, summary(run_dir)) == first
    assert len(client.search_runs([client.get_experiment_by_name("tracked").experiment_id])) == 1
    assert client.get_run(first).info.status == "FINISHED"
    for key, expected in rows(run_dir).items():
        assert sorted((m.step, m.value) for m in client.get_metric_history(first, key)) == expected, key


def test_tensorboard_hparams_compare_the_runs_in_one_table(swept: Path) -> None:
    """TensorBoard's own HParams backend over the sweep's folder: one row per configuration (its seeds grouped), its
    factors as columns, each metric the mean of its seeds' final values."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install -e '.[tensorboard]'")
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    logdir = str(swept / "out")
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    tb = base_plugin.TBContext(logdir=logdir, data_provider=data_provider.MultiplexerDataProvider(mux, logdir), multiplexer=mux)
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, aggregation_type=api_pb2.AGGREGATION_AVG,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING],
    )  # fmt: skip
    groups = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb), "", request).run().session_groups

    dirs = run_dirs(swept)
    assert sorted(g.name for g in groups) == sorted({d.parent.name for d in dirs})
    for g in groups:
        seeds = [d for d in dirs if d.parent.name == g.name]
        s = summary(seeds[0])
        assert len(g.sessions) == len(seeds) == 2
        assert g.hparams["norm"].string_value == s["factors"]["norm"]
        assert g.hparams["lr"].number_value == pytest.approx(s["factors"]["lr"])
        assert "seed" not in g.hparams  # a replicate, not a hyperparameter: the group's seeds are its sessions
        values = {m.name.tag: m.value for m in g.metric_values}
        mean = sum(summary(d)["final"]["test/acc"] for d in seeds) / len(seeds)
        assert values["test/acc"] == pytest.approx(mean)


def test_a_missing_tracker_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for package, key in (("mlflow", "mlflow"), ("tensorboard", "tensorboard")):
        cfg = RunConfig()
        setattr(cfg.logger, key, True)
        with monkeypatch.context() as m:
            m.setitem(sys.modules, package, None)  # import machinery's "not installed"
            with pytest.raises(ConfigError, match=rf"^logger\.{key}=true needs .*pip install -e '\.\[{key}\]'"):
                trackers.require(cfg)
    cfg = RunConfig()
    cfg.logger.mlflow_uri = "sqlite:///mlflow.db"
    with pytest.raises(ConfigError, match="acts only with logger.mlflow=true"):
        trackers.require(cfg)


@pytest.mark.parametrize("key", ["mlflow", "tensorboard"])
def test_the_command_without_the_package_stops_before_any_folder(key: str, tmp_path: Path) -> None:
    """bnstudy-train where the tracker's package cannot be imported: one line, exit 2, no folder."""
    out = tmp_path / "out"
    args = [f"out_dir={out}", *SWEEP, f"logger.{key}=true"]
    code = (f"import runpy, sys; sys.modules[{key!r}] = None; sys.argv = ['bnstudy-train', *{args!r}]; "
            "runpy.run_module('bnstudy.train', run_name='__main__')")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: logger.{key}=true needs "), r.stderr
    assert not out.exists() and not (tmp_path / "mlruns").exists()
