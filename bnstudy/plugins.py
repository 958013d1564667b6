"""Variants from outside the package: the modules a run names in ``plugins``.

``plugins=[my_norms]`` imports the module ``my_norms`` (from ``sys.path``, else from
the current folder, as ``python -m`` would); ``plugins=[path/to/my_norms.py]``
imports that file. A plugin registers its variants with
:func:`bnstudy.norm.register` when it is imported, exactly as bnstudy's own do, and
its YAML reaches the ``norm`` group through Hydra's search path
(``hydra.searchpath=[file://path/to/conf]``); see docs/plugins.md.

A plugin's code is part of the training code of every run of a variant it
registers: its files are hashed when it is imported and recorded as ``plugin:<file>`` beside
bnstudy's own in the run's ``provenance.code``, and where it was found goes to
``provenance.plugins``, so ``bnstudy-runs --stale`` finds an edited plugin and
reports and ``--reproduce`` find it again from another folder. Which plugins a run
loads is not part of its identity: like bnstudy's own code, an edit makes its runs
stale rather than renaming them.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bnstudy.errors import ConfigError

if TYPE_CHECKING:
    from bnstudy.config import RunConfig

PREFIX = "plugin:"  # the plugin files' names in provenance.code.files, beside "bnstudy/<path>"

# entry -> (where it was found: a module file or a package folder, its files' hashes when imported)
_LOADED: dict[str, tuple[str, dict[str, str]]] = {}


def _is_path(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def _module_name(entry: str) -> str:
    return Path(entry).stem if _is_path(entry) else entry


def _find(entry: str, where: str | None) -> tuple[Path, str]:
    """(the file or package folder to hash, how to import it: "file" or "module") for a plugin entry."""
    if _is_path(entry):
        path = Path(entry).expanduser()
        if not path.is_file() and where:  # a run recorded elsewhere: the place its plugin was found then
            path = Path(where)
        if not path.is_file():
            raise ConfigError(f"plugin file {entry} does not exist (from {os.getcwd()}); give its path, or the module's name")
        return path.resolve(), "file"
    if not all(part.isidentifier() for part in entry.split(".")):
        raise ConfigError(f"plugins entry {entry!r} is neither a module name nor a .py file; give e.g. plugins=[my_norms]")
    top = entry.split(".")[0]
    spec = _spec(top)
    if spec is None and where and Path(where).exists():
        sys.path.append(str(Path(where).parent))  # a package folder's parent, or a module file's folder
        spec = _spec(top)
    if spec is None:
        sys.path.append(os.getcwd())  # python -m puts the current folder on the path; bnstudy-train does not
        spec = _spec(top)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"plugin module {entry!r} is not importable from {os.getcwd()}; run from its folder, put that folder on "
            "PYTHONPATH, or give the file's path (plugins=[path/to/module.py])"
        )
    origin = Path(spec.origin).resolve()
    return (origin.parent if spec.submodule_search_locations else origin), "module"


def _spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def files(location: str | Path) -> dict[str, str]:
    """``{"plugin:<file>": sha256[:12]}`` of a plugin's Python files as they are on disk now (none if it is gone)."""
    loc = Path(location)
    found = sorted(loc.rglob("*.py")) if loc.is_dir() else [loc] if loc.is_file() else []
    return {
        PREFIX + p.relative_to(loc.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in found
        if "__pycache__" not in p.parts
    }


def load(entries: Iterable[str], where: Mapping[str, str] | None = None) -> dict[str, str]:
    """Import each plugin once (``where``: the places a run recorded, tried after the entry itself); ``{entry: location}``.

    A plugin that cannot be found or fails on import is a :class:`ConfigError` naming it;
    one that registers a variant under a name bnstudy (or an earlier plugin) already uses
    is refused, so a plugin never changes what a committed run's variant means.
    """
    from bnstudy.sigint import sigint_held

    out: dict[str, str] = {}
    for entry in entries or ():
        entry = str(entry)
        if entry not in _LOADED:
            location, how = _find(entry, (where or {}).get(entry))
            hashes = files(location)  # the code this process runs, even if the file is edited while a sweep goes on
            with sigint_held():  # a plugin imports torch (through bnstudy.norm): hold a Ctrl-C while it loads
                from bnstudy.norm import NORMS

                before = dict(NORMS)
                try:
                    if how == "file":
                        _import_file(_module_name(entry), location)
                    else:
                        importlib.import_module(entry)
                except ConfigError:
                    raise
                except Exception as e:
                    raise ConfigError(f"plugin {entry} failed to import: {type(e).__name__}: {e}") from e
            clash = sorted(n for n, v in before.items() if NORMS.get(n) is not v)
            if clash:
                NORMS.update(before)
                raise ConfigError(f"plugin {entry} registers norm {', '.join(clash)}, a name already taken; give its variant another name")
            _LOADED[entry] = (str(location), hashes)
        out[entry] = _LOADED[entry][0]
    return out


def _import_file(name: str, path: Path) -> None:
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def of_run(cfg: RunConfig) -> list[str]:
    """The run's ``plugins`` entries whose code it trains with: the plugin that registered its variant (its module, or a
    module inside its package); another plugin the sweep names leaves the run's fingerprint alone."""
    if not cfg.plugins:
        return []
    from bnstudy.norm import variant

    load(cfg.plugins)
    module = getattr(variant(cfg.norm.name).build, "__module__", "") or ""
    return [e for e in cfg.plugins if module == _module_name(str(e)) or module.startswith(_module_name(str(e)) + ".")]


def loaded_code(entries: Iterable[str]) -> dict[str, str]:
    """The hashes of the given (loaded) plugins' files as they were when this process imported them."""
    out: dict[str, str] = {}
    for entry in entries or ():
        out.update(_LOADED[str(entry)][1])
    return out


def recorded(summary: Mapping) -> dict[str, str]:
    """``{entry: location}`` of the plugins a run's summary recorded (``provenance.plugins``); ``{}`` for none."""
    prov = summary.get("provenance") if isinstance(summary, Mapping) else None
    found = prov.get("plugins") if isinstance(prov, Mapping) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def disk_code(summary: Mapping) -> dict[str, str]:
    """The files of the plugins a run recorded, hashed as they are on disk now: what ``--stale`` compares."""
    out: dict[str, str] = {}
    for location in recorded(summary).values():
        out.update(files(location))
    return out


def load_recorded(summaries: Iterable[Mapping]) -> list[str]:
    """Import the plugins the given runs recorded, for reading them (reports); one warning line per plugin not found."""
    wanted: dict[str, str] = {}
    for s in summaries:
        wanted.update(recorded(s))
    problems = []
    for entry, location in wanted.items():
        try:
            load([entry], {entry: location})
        except ConfigError as e:
            problems.append(f"{e} (its runs get a fallback colour)")
    return problems
