"""A finished job's run folder, sent to the trackers the config turns on: MLflow and TensorBoard's HParams dashboard.

Both read what the run folder holds when a training job ends (``config.yaml``,
``metrics.csv``, ``summary.json``); neither changes a number of the run, nor its
folder's name (``logger`` is not part of a run's identity, ``NON_IDENTITY``).

- ``logger.mlflow=true``: one MLflow run per run folder, in one experiment per
  study (``study``, else ``out_dir``), in the tracking store ``logger.mlflow_uri``
  (default ``mlruns`` in the working directory, a file store). Its params are the
  resolved config (``optim.lr``, ...), its tags the variant and the factors, its
  metrics every logged value at its step (``test/acc``, ...); the run folder's
  path is a tag (``bnstudy.run_dir``) and the run's description. A resumed run
  continues its MLflow run: steps already logged are not logged again.
- ``logger.tensorboard=true``: besides the scalars written while training
  (:class:`bnstudy.runs.MetricsLog`), a finished run's ``tb/`` gets the HParams
  plugin's session records: its factors as hyperparameters, seeds of one
  configuration grouped, so ``tensorboard --logdir OUT_DIR`` compares runs in one table.

A tracker whose package is missing is one line before any folder is written (:func:`require`).
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnstudy.config import RunConfig
from bnstudy.errors import ConfigError
from bnstudy.runs import read_summary

log = logging.getLogger("bnstudy")

MLFLOW_DEFAULT = "mlruns"  # logger.mlflow_uri left empty: a file store in the working directory
# Statuses after which a run trains no more (an interrupted one resumes).
FINISHED = ("completed", "diverged", "failed")
_MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_BATCH = 1000  # MLflow's limit on metrics per log_batch call (params: 100)


def require(cfg: RunConfig) -> None:
    """Refuse a tracker the config turns on whose package is missing, or ``logger.mlflow_uri`` without MLflow (ConfigError)."""
    lg = cfg.logger
    if lg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logger.tensorboard=true needs the tensorboard package: pip install -e '.[tensorboard]', or drop the key")
    if lg.mlflow and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger.mlflow=true needs MLflow: pip install -e '.[mlflow]' (mlflow-skinny), or drop the key")
    if lg.mlflow_uri and not lg.mlflow:
        raise ConfigError(f"logger.mlflow_uri={lg.mlflow_uri} acts only with logger.mlflow=true: add it, or drop logger.mlflow_uri")


@contextlib.contextmanager
def after_training(cfg: RunConfig, run_dir: Path) -> Iterator[None]:
    """Around a training job: when it ends (completed, diverged, failed or interrupted by a signal), send its run
    folder to the trackers; a Ctrl-C sends nothing (the user wants out; the next job of the run sends it all)."""
    try:
        yield
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt) and getattr(e, "reason", None) != "Ctrl-C":
            publish(cfg, run_dir)
        raise
    publish(cfg, run_dir)


def publish(cfg: RunConfig, run_dir: Path) -> None:
    """Send the run folder's record to each tracker ``cfg.logger`` turns on; a tracker that fails is one warning line."""
    s = read_summary(run_dir)
    if s is None:
        return
    if cfg.logger.tensorboard and s.get("status") in FINISHED:
        try:
            write_hparams(run_dir, s)
        except Exception as e:  # noqa: BLE001 - the run's results are in its folder; the dashboard is an extra
            log.warning("tensorboard: no HParams record for %s (%s: %s)", run_dir, type(e).__name__, e)
    if cfg.logger.mlflow:
        try:
            log_mlflow(cfg, run_dir, s)
        except Exception as e:  # noqa: BLE001
            log.warning("mlflow: %s not logged to %s (%s: %s)", run_dir, tracking_uri(cfg.logger.mlflow_uri), type(e).__name__, e)


# ---------------------------------------------------------------- TensorBoard HParams


def hparams_of(s: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The hyperparameters a run shows in the HParams table: its factors that apply to it, but the seed (a replicate)."""
    return {k: v for k, v in (s.get("factors") or {}).items() if k != "seed" and isinstance(v, (bool, int, float, str))}


def _hparams_summary(tag: str, data: Any) -> Any:
    """A Summary holding one HParams plugin record (``data``: an HParamsPluginData) under ``tag``."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata

    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


def write_hparams(run_dir: Path, s: dict[str, Any]) -> None:
    """Write the HParams session records of a finished run into ``run_dir/tb``, beside its scalars.

    No experiment record: with none, TensorBoard builds the table from every run's sessions (their hyperparameters)
    and scalars (the metric columns), so runs written one at a time, by different jobs, still form one table. The
    seeds of one configuration share a group (their run folder's name), whose metrics the table aggregates.
    """
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(run_dir)
    start = SessionStartInfo(group_name=run_dir.parent.name)
    if isinstance(s.get("started"), (int, float)):
        start.start_time_secs = float(s["started"])
    for k, v in hparams_of(s).items():
        if isinstance(v, bool):
            start.hparams[k].bool_value = v
        elif isinstance(v, (int, float)):
            start.hparams[k].number_value = float(v)
        else:
            start.hparams[k].string_value = v
    status = api_pb2.STATUS_SUCCESS if s.get("status") == "completed" else api_pb2.STATUS_FAILURE
    end = SessionEndInfo(status=status)
    if isinstance(s.get("updated"), (int, float)):
        end.end_time_secs = float(s["updated"])
    version = metadata.PLUGIN_DATA_VERSION
    with SummaryWriter(str(run_dir / "tb")) as w:
        w.file_writer.add_summary(_hparams_summary(metadata.SESSION_START_INFO_TAG, HParamsPluginData(session_start_info=start, version=version)))
        w.file_writer.add_summary(_hparams_summary(metadata.SESSION_END_INFO_TAG, HParamsPluginData(session_end_info=end, version=version)))


# ---------------------------------------------------------------- MLflow


def tracking_uri(value: str) -> str:
    """``logger.mlflow_uri`` as MLflow takes it: a URI as given, a path (default ``mlruns``) as a ``file:`` URI."""
    value = value or MLFLOW_DEFAULT
    if "://" in value or value.startswith(("file:", "sqlite:", "databricks")):
        return value
    return Path(value).expanduser().resolve().as_uri()


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as MLflow params: one per leaf key (``optim.lr``), lists as JSON."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def run_tags(s: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """The tags of a run: ``variant`` (its norm), each factor that applies to it, and where its folder is."""
    factors = s.get("factors") or {}
    tags = {k: str(v) for k, v in factors.items() if v is not None}
    tags["variant"] = str(factors.get("norm"))
    tags["bnstudy.run"] = str(s.get("run") or f"{run_dir.parent.name}/{run_dir.name}")
    tags["bnstudy.run_dir"] = str(run_dir)
    tags["bnstudy.status"] = str(s.get("status"))
    return tags


def metric_rows(run_dir: Path, after: int) -> Iterator[tuple[int, str, float, float]]:
    """(step, split/metric, value, seconds) of each metrics.csv row past step ``after``."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            try:
                step, value, seconds = int(row["step"]), float(row["value"]), float(row["seconds"] or 0)
            except (TypeError, ValueError):
                continue  # a line cut short by a killed process
            if step > after:
                yield step, f"{row['split']}/{row['metric']}", value, seconds


def _experiment(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 - a parallel job created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def log_mlflow(cfg: RunConfig, run_dir: Path, s: dict[str, Any]) -> str:
    """Log the run folder to MLflow (creating, or continuing, the MLflow run tagged with its path); return its run id."""
    uri = tracking_uri(cfg.logger.mlflow_uri)
    if uri.startswith("file:"):
        # MLflow keeps its file store in maintenance mode and refuses it unless asked for explicitly; a local store
        # needs no server or database, which is what logger.mlflow's default is for (docs/tracking.md)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir).resolve()
    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment(client, cfg.study or cfg.out_dir)
    where = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    found = client.search_runs([exp_id], filter_string=f"tags.`bnstudy.run_dir` = '{where}'", max_results=1)
    tags = run_tags(s, run_dir)
    if found:
        run_id = found[0].info.run_id
        after = int(found[0].data.tags.get("bnstudy.logged_step", -1))
    else:
        note = f"Run folder: `{run_dir}` ([open]({run_dir.as_uri()}))"
        run_id = client.create_run(exp_id, run_name=tags["bnstudy.run"], tags={**tags, "mlflow.note.content": note}).info.run_id
        after = -1
        config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
        from omegaconf import OmegaConf

        params = flat_params(OmegaConf.to_container(OmegaConf.create(config)) or {})  # type: ignore[arg-type]
        items = sorted(params.items())
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    started = s.get("started") if isinstance(s.get("started"), (int, float)) else 0.0
    metrics, last = [], after
    for step, key, value, seconds in metric_rows(run_dir, after):
        metrics.append(Metric(key, value if math.isfinite(value) else float("nan"), int((started + seconds) * 1000), step))
        last = max(last, step)
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH])
    tags["bnstudy.logged_step"] = str(last)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, _MLFLOW_STATUS.get(str(s.get("status")), "FINISHED"))
    return run_id
