"""Packed studies: run folders turned into one Parquet table of metrics and one text table of runs.

A pack is two files in a results folder:

- ``runs.jsonl``: one JSON line per run — its path relative to the folder
  (``run``), its ``summary`` (summary.json), its ``config`` (config.yaml), the
  ``overrides`` of the command line that made it, the kept ``files`` of a
  failed or diverged run (train.log, error.txt), and the number of metrics
  ``rows``. It is text, so a change of results reads as a diff.
- ``metrics.parquet``: every run's metrics.csv as tidy rows ``run, step,
  split, metric, value, seconds`` (zstd), float64 values exactly as logged.

``iter_runs`` reads folders and packs alike; ``pack`` and ``unpack`` convert,
and the round trip gives back each file byte for byte (packing refuses a
run it could not give back exactly).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import yaml

from bnstudy.errors import BnstudyError

PACK_RUNS = "runs.jsonl"
PACK_METRICS = "metrics.parquet"
COLUMNS = ["run", "step", "split", "metric", "value", "seconds"]
KEPT_FILES = ("train.log", "error.txt")  # kept only for runs that failed or diverged
PACKED_FILES = ("config.yaml", "metrics.csv", "summary.json", *KEPT_FILES)
DROPPED = (".hydra", ".lock", "train.log")  # Hydra's copies (config.yaml is the record) and a finished run's log
UNFINISHED = ("running", "interrupted")  # left as folders: their checkpoint resumes them


class PackError(BnstudyError):
    """A pack that cannot be read or written as asked (the message says what to do)."""


def unsafe_path(rel: Any) -> str | None:
    """Why ``rel``, a run's path read from a pack or a manifest, could lead outside its root; None when it cannot.

    It must be a relative POSIX path of plain names: not absolute, no ``..``, ``.`` or empty part, no hidden
    (``.``-prefixed) folder, no backslash or NUL.
    """
    if not isinstance(rel, str) or not rel:
        return f"{rel!r} is not a path"
    if "\\" in rel or "\0" in rel or any(q in ("", ".", "..") or q.startswith(".") for q in rel.split("/")):
        return f"{rel!r} leads outside its folder"  # an absolute path has an empty first part
    return None


# ---------------------------------------------------------------- file text <-> values

def summary_text(s: dict[str, Any]) -> str:
    """summary.json's text for ``s``, as :func:`bnstudy.runs.write_json` writes it."""
    return json.dumps(s, indent=2, sort_keys=False) + "\n"


def config_text(cfg: dict[str, Any]) -> str:
    """config.yaml's text for ``cfg``, as training writes it (OmegaConf's YAML, keys in order)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg))


def metrics_text(rows: Any) -> str:
    """metrics.csv's text for a frame of ``step, split, metric, value, seconds`` rows, as MetricsLog writes it."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS[1:])
    for step, split, metric, value, seconds in zip(rows["step"], rows["split"], rows["metric"], rows["value"], rows["seconds"]):
        w.writerow([int(step), split, metric, repr(float(value)), f"{seconds:.4f}"])
    return buf.getvalue()


def _parse_metrics(text: str) -> dict[str, list]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or rows[0] != COLUMNS[1:]:
        raise PackError(f"metrics.csv header is {rows[0] if rows else None}, expected {','.join(COLUMNS[1:])}")
    cols: dict[str, list] = {c: [] for c in COLUMNS[1:]}
    for r in rows[1:]:
        cols["step"].append(int(r[0]))
        cols["split"].append(r[1])
        cols["metric"].append(r[2])
        cols["value"].append(float(r[3]))
        cols["seconds"].append(float(r[4]))
    return cols


# ---------------------------------------------------------------- values shared by every run of a pack

SHARED = "defaults"  # runs.jsonl's first line: {"defaults": {"config": ..., "summary": ...}}; each run's line holds what differs


def _key(v: Any) -> str:
    # equal as JSON text: 1 and 1.0 and true differ, as they do in the files
    return json.dumps(v, sort_keys=False)


ABSENT = "-"  # in a run's line: the default keys this run does not have


def common(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Defaults for ``values``: every key at least half of them have (recursively, in their order), at its most
    frequent value (null where each has its own).

    Laying a run's differences over the defaults (:func:`merge`) then gives its
    keys back in their order; :mod:`bnstudy.archive_write` checks that it does.
    """
    from collections import Counter

    order: list[str] = []
    for d in values:  # the keys in an order every dict agrees with: each new key right after its predecessor
        prev = None
        for k in d:
            if k not in order:
                order.insert(order.index(prev) + 1 if prev is not None else 0, k)
            prev = k
    out = {}
    for k in order:
        have = [d[k] for d in values if k in d]
        if 2 * len(have) < len(values):
            continue
        if all(isinstance(v, dict) for v in have):
            out[k] = common(have)
        else:
            value, n = Counter(_key(v) for v in have).most_common(1)[0]
            out[k] = json.loads(value) if n > 1 else None  # null: a value of each run's own (its line has it)
    return out


def difference(value: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """What ``value`` has beyond ``base`` (recursively); ``merge(base, difference(value, base))`` rebuilds it."""
    out: dict[str, Any] = {}
    missing = [k for k in base if k not in value]
    if missing:
        out[ABSENT] = missing
    for k, v in value.items():
        if k not in base:
            out[k] = v
        elif isinstance(v, dict) and isinstance(base[k], dict):
            sub = difference(v, base[k])
            if sub:
                out[k] = sub
        elif _key(v) != _key(base[k]):
            out[k] = v
    return out


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` laid over it (recursively), keys in ``base``'s order, then ``patch``'s new ones."""
    out = {}
    absent = set(patch.get(ABSENT, ()))
    for k, v in base.items():
        if k in absent:
            continue
        if k in patch and isinstance(v, dict) and isinstance(patch[k], dict):
            out[k] = merge(v, patch[k])
        else:
            out[k] = patch.get(k, v)
    for k, v in patch.items():
        if k not in base and k != ABSENT:
            out[k] = v
    return out


# ---------------------------------------------------------------- records

def _read_dict(path: Path, parse: Any, bad: type[Exception]) -> dict[str, Any] | None:
    """A run file parsed to a dict, or None when it is absent, unreadable or not a mapping."""
    try:
        d = parse(path.read_text())
    except (OSError, bad):
        return None
    return d if isinstance(d, dict) else None


class RunRecord:
    """One run, in a folder or in a pack: ``rel`` (path under the root), ``dir`` (its would-be folder), config, summary, metrics()."""

    def __init__(self, rel: str, dir: Path, pack: "Pack | None" = None, entry: dict[str, Any] | None = None):
        self.rel, self.dir, self.pack, self._entry = rel, Path(dir), pack, entry
        self._summary: Any = entry.get("summary") if entry is not None else _UNREAD
        self._config: Any = entry.get("config") if entry is not None else _UNREAD

    @property
    def packed(self) -> bool:
        """Whether the run lives in a pack (else in its folder)."""
        return self.pack is not None

    @property
    def summary(self) -> dict[str, Any] | None:
        """summary.json's content, or None when absent or unreadable."""
        if self._summary is _UNREAD:
            self._summary = _read_dict(self.dir / "summary.json", json.loads, ValueError)
        return self._summary

    @property
    def config(self) -> dict[str, Any] | None:
        """config.yaml's content, or None when absent or unreadable."""
        if self._config is _UNREAD:
            self._config = _read_dict(self.dir / "config.yaml", yaml.safe_load, yaml.YAMLError)
        return self._config

    @property
    def overrides(self) -> list[str] | None:
        """The command-line overrides that made the run (Hydra's ``.hydra/overrides.yaml``), when recorded."""
        if self._entry is not None:
            return self._entry.get("overrides")
        try:
            return yaml.safe_load((self.dir / ".hydra" / "overrides.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return None

    def file_text(self, name: str) -> str | None:
        """The text of one of the run's files (``PACKED_FILES``) as it would be in its folder; None when absent."""
        if self.pack is None:
            try:
                with open(self.dir / name, newline="") as f:  # as written: metrics.csv lines end in \r\n
                    return f.read()
            except (OSError, UnicodeDecodeError):
                return None
        e = self._entry or {}
        if name == "summary.json":
            return e.get("summary_text") or summary_text(e["summary"])
        if name == "config.yaml":
            if e.get("config") is None:
                return None
            return e.get("config_text") or config_text(e["config"])
        if name == "metrics.csv":
            return metrics_text(self.metrics()) if e.get("rows") is not None else None
        return (e.get("files") or {}).get(name)

    def metrics(self):
        """The run's metrics.csv as a DataFrame ``step, split, metric, value, seconds`` (empty when it has none)."""
        import pandas as pd

        if self.pack is not None:
            return self.pack.metrics_of(self.rel_in_pack)
        text = self.file_text("metrics.csv")
        if text is None:
            return pd.DataFrame({c: [] for c in COLUMNS[1:]})
        return pd.DataFrame(_parse_metrics(text))

    @property
    def rel_in_pack(self) -> str:
        """The run's path relative to its pack's folder."""
        return self._entry["run"] if self._entry else self.rel


_UNREAD = object()


class Pack:
    """A ``runs.jsonl`` + ``metrics.parquet`` pair in folder ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.entries: list[dict[str, Any]] = []
        self._table = None
        self._index: dict[str, Any] | None = None
        path = self.root / PACK_RUNS
        shared: dict[str, Any] = {}
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise PackError(f"{path} is unreadable ({err}); restore it from git") from None
        self.shared = False
        for n, line in enumerate(text.splitlines(), start=1):
            try:
                e = json.loads(line)
            except ValueError as err:
                raise PackError(f"{path} line {n} is not JSON ({err}); restore it from git") from None
            if n == 1 and isinstance(e, dict) and isinstance(e.get(SHARED), dict):
                shared, self.shared = e[SHARED], True
                continue
            if not isinstance(e, dict) or not isinstance(e.get("run"), str) or not isinstance(e.get("summary"), dict):
                raise PackError(f"{path} line {n} has no 'run' path and 'summary' object; restore it from git")
            why = unsafe_path(e["run"])
            if why:
                raise PackError(f"{path} line {n}: run path {why}; restore it from git")
            if not isinstance(e.get("config", {}), dict) or not isinstance(e.get("files", {}), dict):
                raise PackError(f"{path} line {n}: 'config' or 'files' is not an object; restore it from git")
            for key in ("summary", "config"):  # each line holds what differs from the shared values
                if isinstance(shared.get(key), dict) and isinstance(e.get(key), dict) and key not in e.get("whole", ()):
                    e[key] = merge(shared[key], e[key])
            self.entries.append(e)
        self.by_run = {e["run"]: e for e in self.entries}

    def table(self):
        """The whole metrics table (pandas), read once."""
        if self._table is None:
            import pandas as pd

            path = self.root / PACK_METRICS
            if not path.exists():
                self._table = pd.DataFrame({c: [] for c in COLUMNS})
            else:
                try:
                    self._table = pd.read_parquet(path, engine="pyarrow")
                except Exception as e:  # pyarrow raises several kinds for a damaged file
                    raise PackError(f"{path} is unreadable ({type(e).__name__}: {e}); restore it from git") from None
                missing = [c for c in COLUMNS if c not in self._table.columns]
                if missing:
                    raise PackError(f"{path} has no column(s) {', '.join(missing)}; restore it from git")
                for c in ("run", "split", "metric"):  # dictionary-encoded on disk: plain strings, as from metrics.csv
                    self._table[c] = self._table[c].astype(str)
        return self._table

    def metrics_of(self, run: str):
        """One run's rows, without the run column, in logged order."""
        t = self.table()
        groups = self._groups()
        idx = groups.get(run)
        if idx is None:
            return t.iloc[0:0][COLUMNS[1:]].reset_index(drop=True)
        return t.iloc[idx][COLUMNS[1:]].reset_index(drop=True)

    def _groups(self) -> dict[str, Any]:
        if self._index is None:
            self._index = dict(self.table().groupby("run", sort=False).indices)
        return self._index


_PACKS: dict[tuple, Pack] = {}


def pack_key(root: Path) -> tuple:
    """What identifies the state of the pack in ``root``: its two files' paths, times, sizes and inodes."""
    path = Path(root) / PACK_RUNS
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PackError(f"{path} is missing" + (" (deleted?); restore it from git" if (Path(root) / PACK_METRICS).exists() else "")) from None
    try:
        mt = (Path(root) / PACK_METRICS).stat()
        table = (mt.st_mtime_ns, mt.st_size, mt.st_ino)
    except OSError:
        table = None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ino, table)


def load_pack(root: Path) -> Pack:
    """The pack in folder ``root``, cached until one of its two files changes."""
    key = pack_key(root)
    if key not in _PACKS:
        _PACKS.clear() if len(_PACKS) > 64 else None
        _PACKS[key] = Pack(Path(root))
    return _PACKS[key]


def iter_runs(root: str | Path, skip_packs: set[Path] | frozenset = frozenset()) -> Iterator[RunRecord]:
    """Every run under ``root``, folders and packs alike, sorted by ``rel``; a folder overrides a packed run of the same path.

    A pack that cannot be read raises :class:`PackError`, except those in ``skip_packs`` (resolved folders), left out.
    """
    root = Path(root)
    found: dict[str, RunRecord] = {}
    folders: dict[str, RunRecord] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .hydra/ and friends
        here = Path(dirpath)
        rel_here = here.relative_to(root).as_posix()
        if skip_packs and (PACK_RUNS in filenames or PACK_METRICS in filenames) and here.resolve() in skip_packs:
            pass
        elif PACK_METRICS in filenames and PACK_RUNS not in filenames:
            raise PackError(lost_runs_line(here))
        elif PACK_RUNS in filenames:
            pack = load_pack(here)
            for e in pack.entries:
                rel = e["run"] if rel_here == "." else f"{rel_here}/{e['run']}"
                found[rel] = RunRecord(rel, root / rel, pack, e)
        if "summary.json" in filenames or "metrics.csv" in filenames:  # a run that lost its summary is still listed
            folders[rel_here] = RunRecord(rel_here, here)
    found.update(folders)
    for rel in sorted(found):
        yield found[rel]


LEFT_BY_A_FAILED_PACK = "left by a --pack that failed part way"


def lost_runs_line(root: Path) -> str:
    """What a folder holding metrics.parquet but no runs.jsonl is: a pack that lost its runs.jsonl, or (when every run
    its table holds is a run folder beside it) what a --pack that failed part way left before packing became atomic."""
    path = Path(root) / PACK_METRICS
    if _runs_all_in_folders(Path(root)):
        return (f"{path} is there but {PACK_RUNS} is not, and every run it holds is a run folder beside it: {LEFT_BY_A_FAILED_PACK}; "
                f"delete {path} (the run folders hold everything it does)")
    return f"{path} is there but {PACK_RUNS} is not (deleted?); restore {PACK_RUNS} from git"


def _runs_all_in_folders(root: Path) -> bool:
    """Whether every run named in ``root``'s metrics.parquet has its run folder (summary.json and metrics.csv) under ``root``."""
    try:
        import pyarrow.parquet as pq

        runs = set(pq.read_table(root / PACK_METRICS, columns=["run"]).column("run").to_pylist())
    except Exception:  # noqa: BLE001 - an unreadable table proves nothing: the usual line
        return False
    return bool(runs) and all(
        isinstance(r, str) and not unsafe_path(r) and (root / r / "summary.json").is_file() and (root / r / "metrics.csv").is_file()
        for r in runs
    )


def find_packed(run_dir: Path) -> RunRecord | None:
    """The packed record of a run folder that does not exist as a folder, from a pack in one of its parents."""
    run_dir = Path(run_dir).absolute()
    for parent in run_dir.parents:
        if (parent / PACK_RUNS).is_file():
            rel = run_dir.relative_to(parent).as_posix()
            try:
                pack = load_pack(parent)
            except (OSError, PackError):
                return None
            e = pack.by_run.get(rel)
            return RunRecord(rel, run_dir, pack, e) if e is not None else None
    return None


def run_file_text(run_dir: str | Path, name: str) -> str | None:
    """The text of a run's file (metrics.csv, config.yaml, ...) from its folder, or from the pack holding it; None if absent."""
    run_dir = Path(run_dir)
    if (run_dir / name).exists() or (run_dir / "summary.json").exists():
        return RunRecord(run_dir.name, run_dir).file_text(name)
    rec = find_packed(run_dir)
    return rec.file_text(name) if rec is not None else None
