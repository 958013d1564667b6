"""What Hydra needs before it composes a config: bnstudy's resolvers and the typed schema."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from bnstudy.checks import check_out_dir
from bnstudy.cli.leftovers import note_missing
from bnstudy.config import NON_IDENTITY, RunConfig, run_name
from bnstudy.errors import ConfigError


def _run_name_resolver(*, _root_: DictConfig) -> str:
    # Hydra resolves hydra.run.dir / hydra.sweep.subdir with this, so its own
    # outputs (.hydra/, the job log) land inside the run folder.
    plain = {k: OmegaConf.to_container(_root_[k], resolve=True) if OmegaConf.is_config(_root_[k]) else _root_[k] for k in _root_ if k != "hydra"}
    check_out_dir(str(plain.get("out_dir", "")))  # before Hydra creates the run folder in it
    refuse_interpolated_identity(_root_)
    if plain.get("plugins"):  # a plugin that cannot be imported is one line before any folder exists
        from bnstudy.plugins import load

        load(plain["plugins"])
    name = run_name(plain)
    note_missing(Path(str(plain["out_dir"])) / name)  # Hydra creates it next: a command that trains nothing leaves none of it
    return name


# keys that neither name nor label a run (where it runs, where it goes, how it reports): an interpolation such as
# out_dir=${oc.env:SCRATCH}/runs is fine there; everywhere else the value typed is the value recorded
RESOLVED_OK = NON_IDENTITY - {"seed", "study"}


def _interpolations(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, its text) of every interpolation in a composed config, Hydra's own node left out."""
    keys = range(len(node)) if isinstance(node, ListConfig) else [k for k in node.keys() if prefix or k != "hydra"]
    for k in keys:
        key = f"{prefix}[{k}]" if isinstance(node, ListConfig) else f"{prefix}{k}"
        if OmegaConf.is_interpolation(node, k):
            yield key, str(node._get_node(k)._value())
        else:
            child = node._get_node(k)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _interpolations(child, key if isinstance(child, ListConfig) else f"{key}.")


def refuse_interpolated_identity(cfg: DictConfig) -> None:
    """Refuse an interpolation (``study=${oc.env:HOME}``) in a key that names or labels the run: config.yaml and the
    summary would record what it resolved to on this machine, not what the command said (ConfigError, one line)."""
    for key, text in _interpolations(cfg):
        top = key.split(".")[0].split("[")[0]
        if key.split("[")[0] not in RESOLVED_OK and top not in RESOLVED_OK:
            raise ConfigError(f"{key}={text} is an interpolation: a key that names or labels a run takes its value as "
                              f"typed, so that the run records what the command said; give the value itself ({key}=VALUE)")


def signal_delay(timeout_min: int, wanted: int) -> int:
    """Seconds before a SLURM time limit for the warning signal: ``wanted``, but the signal never comes
    before half the limit has passed.

    slurmctld checks time limits every 30 s and sends the signal up to 30 s before the delay
    asks, so with ``timeout_min`` of 1 or 2 the default 120 s would stop every job as soon as
    it starts (or before submitit catches signals at all, which kills it).
    """
    return max(1, min(int(wanted), int(timeout_min) * 60 // 2 - 30))


OmegaConf.register_new_resolver("bnstudy_run", _run_name_resolver, replace=True)
OmegaConf.register_new_resolver("bnstudy_signal_delay", signal_delay, replace=True)
# RunConfig is the schema of conf/config.yaml (its first default): Hydra then rejects
# unknown keys and values of the wrong type while composing, before any folder exists.
ConfigStore.instance().store(name="bnstudy_schema", node=RunConfig)
