"""Packing a results folder's run folders into its pack, and unpacking it (see :mod:`bnstudy.archive`)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from bnstudy.archive import (
    COLUMNS,
    DROPPED,
    KEPT_FILES,
    LEFT_BY_A_FAILED_PACK,
    PACK_METRICS,
    PACK_RUNS,
    PACKED_FILES,
    UNFINISHED,
    Pack,
    SHARED,
    PackError,
    RunRecord,
    _key,
    common,
    difference,
    merge,
    _parse_metrics,
    config_text,
    iter_runs,
    load_pack,
    lost_runs_line,
    metrics_text,
    pack_key,
    summary_text,
)


def _entry(rec: RunRecord) -> dict[str, Any]:
    """A folder run's runs.jsonl line; PackError when its files would not come back byte for byte."""
    s_text = rec.file_text("summary.json") or ""
    s = json.loads(s_text)
    e: dict[str, Any] = {"run": rec.rel, "summary": s}
    if summary_text(s) != s_text:
        e["summary_text"] = s_text  # written by other code: kept verbatim so that unpacking gives it back
    c_text = rec.file_text("config.yaml")
    if c_text is not None:
        e["config"] = yaml.safe_load(c_text)
        if config_text(e["config"]) != c_text:
            e["config_text"] = c_text
    over = rec.dir / ".hydra" / "overrides.yaml"
    if over.is_file():
        e["overrides"] = yaml.safe_load(over.read_text())
    if s.get("status") in ("failed", "diverged"):
        files = {n: t for n in KEPT_FILES if (t := rec.file_text(n)) is not None}
        if files:
            e["files"] = files
    m_text = rec.file_text("metrics.csv")
    if m_text is not None:
        try:
            cols = _parse_metrics(m_text)
        except (PackError, ValueError, IndexError) as err:
            raise PackError(f"metrics.csv does not parse ({err})") from None
        if metrics_text(cols) != m_text:
            raise PackError("metrics.csv is not in MetricsLog's format, so it would not come back byte for byte")
        e["rows"] = len(cols["step"])
        e["_metrics"] = cols
    return e


def _write_table(path: Path, frames: list) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in COLUMNS})
    table = pa.Table.from_pydict(
        {
            "run": pa.array(df["run"].astype(str).tolist(), pa.string()).dictionary_encode(),
            "step": pa.array(df["step"].astype("int64"), pa.int64()),
            "split": pa.array(df["split"].astype(str).tolist(), pa.string()).dictionary_encode(),
            "metric": pa.array(df["metric"].astype(str).tolist(), pa.string()).dictionary_encode(),
            "value": pa.array(df["value"].astype("float64"), pa.float64()),
            "seconds": pa.array(df["seconds"].astype("float64"), pa.float64()),
        }
    )
    pq.write_table(table, path, compression="zstd", compression_level=19, use_byte_stream_split=["value", "seconds"])


def _runs_lines(entries: list[dict[str, Any]]) -> str:
    """runs.jsonl's text: the values every run shares on a first line, then one line per run with the rest."""
    shared = {}
    for key in ("config", "summary"):
        values = [e[key] for e in entries if isinstance(e.get(key), dict)]
        if len(values) == len(entries) and len(values) > 1:
            shared[key] = common(values)
    lines = [{SHARED: shared}] if shared else []
    for e in entries:
        line = {k: v for k, v in e.items() if k != "whole"}
        for key, base in shared.items():
            line[key] = difference(e[key], base)
            if _key(merge(base, line[key])) != _key(e[key]):  # its keys' order would not come back: kept whole
                line[key] = e[key]
                line["whole"] = [*line.get("whole", []), key]
        lines.append(line)
    return "".join(json.dumps(x, sort_keys=False, ensure_ascii=False) + "\n" for x in lines)


def pack(root: str | Path, log=print) -> tuple[int, list[str]]:
    """Pack the finished run folders under ``root`` into ``root``'s pack (merging with one already there).

    Returns (runs now in the pack, lines naming the folders left as they were:
    unfinished, damaged, or not exactly reproducible). Packed folders are removed, once both files of the new
    pack are written whole and read back; a write that fails (a full disk) raises OSError and leaves the folders
    and any pack there as they were.
    """
    import pandas as pd

    from bnstudy.runs import check_run, write_json

    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if PACK_RUNS in filenames and Path(dirpath) != root:
            raise PackError(f"{dirpath} holds a pack of its own: unpack it first, or pack that folder on its own")
    for parent in root.absolute().parents:
        if (parent / PACK_RUNS).is_file():
            raise PackError(f"{parent} holds a pack that would hold these runs: run --pack on {parent}")
    if (root / PACK_METRICS).exists() and not (root / PACK_RUNS).exists():
        raise PackError(lost_runs_line(root))
    for stale in root.glob(".pack-*.tmp"):  # left by a --pack that was killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    old = load_pack(root) if (root / PACK_RUNS).is_file() else None
    damaged_old = _refuse_damage(root, "packed") if old else {}
    entries = {e["run"]: e for e in (old.entries if old else [])}
    frames = {r: old.metrics_of(r).assign(run=r) for r in entries} if old else {}
    left, packed_dirs = [], []
    for rec in iter_runs(root):
        if rec.packed:
            continue
        s = rec.summary
        if not isinstance(s, dict) or s.get("status") in UNFINISHED:
            left.append(f"left {rec.rel}: {'unfinished (' + s['status'] + ')' if isinstance(s, dict) else 'unreadable summary.json'}")
            continue
        problems = check_run(rec.dir)
        if problems:
            left.append(f"left {rec.rel}: damaged ({'; '.join(problems)})")
            continue
        if isinstance(s.get("checksums"), dict) and "summary" not in s["checksums"]:
            # trained by code from before summaries were sealed, and intact (checked just now): sealed here as the
            # trainer seals it today, so that the pack protects its status and numbers as well
            write_json(rec.dir / "summary.json", s)
            rec = RunRecord(rec.rel, rec.dir)
        try:
            e = _entry(rec)
        except (PackError, ValueError, OSError, yaml.YAMLError) as err:
            left.append(f"left {rec.rel}: {err}")
            continue
        cols = e.pop("_metrics", None)
        entries[rec.rel] = e
        frames[rec.rel] = pd.DataFrame(cols).assign(run=rec.rel) if cols else None
        packed_dirs.append(rec)
    unmended = sorted(set(damaged_old) - {rec.rel for rec in packed_dirs})
    if unmended:  # a damaged packed run is replaced only by an intact folder of the same run
        rel = unmended[0]
        raise PackError(f"{root / PACK_RUNS}: {rel} is damaged ({'; '.join(damaged_old[rel])}); nothing was packed: "
                        f"restore the pack from git (bnstudy-runs {root} --check lists the damage)")
    if not packed_dirs:
        return len(entries), left
    runs = sorted(entries)
    # Both files are written and read back in a hidden folder beside the pack, and moved into place only once both
    # are whole: a full disk (or any failure) leaves the pack and the run folders as they were, never one file
    # without the other.
    staging = root / f".pack-{os.getpid()}.tmp"
    try:
        staging.mkdir()
        _write_table(staging / PACK_METRICS, [frames[r][COLUMNS] for r in runs if frames.get(r) is not None])
        with open(staging / PACK_RUNS, "w") as f:
            f.write(_runs_lines([entries[r] for r in runs]))
            f.flush()
            os.fsync(f.fileno())
        new = Pack(staging)
        by_run = {e["run"]: e for e in new.entries}
        for rec in packed_dirs:  # read back before anything moves: every file must come back as it was
            back = RunRecord(rec.rel, rec.dir, new, by_run[rec.rel])
            for name in PACKED_FILES:
                if name in KEPT_FILES and name not in (by_run[rec.rel].get("files") or {}):
                    continue
                if back.file_text(name) != rec.file_text(name):
                    raise PackError(f"{rec.rel}/{name} did not come back from the pack as it was; nothing was packed")
        os.replace(staging / PACK_METRICS, root / PACK_METRICS)
        os.replace(staging / PACK_RUNS, root / PACK_RUNS)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for rec in packed_dirs:
        _remove_run_folder(rec.dir, root)
    return len(entries), left


def _remove_run_folder(run_dir: Path, root: Path) -> None:
    for name in (*PACKED_FILES, *DROPPED):
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    d = run_dir
    while d != root and d.is_dir() and not any(d.iterdir()):
        d.rmdir()
        d = d.parent


def unpack(root: str | Path) -> int:
    """Turn ``root``'s pack back into run folders, then remove the pack. Returns runs written.

    The whole pack is checked first (:func:`pack_damage`) and a damaged one is refused before anything is
    written. Every file written is read back before the pack goes; if any does not come back, what was written
    is removed again and the pack is kept. A run folder already there is kept when it holds the packed run's
    files; one that differs is refused (unpacking would lose the packed copy).
    """
    from omegaconf import OmegaConf

    from bnstudy.runs import atomic_write_text

    root = Path(root)
    if not (root / PACK_RUNS).is_file():
        if (root / PACK_METRICS).exists():
            raise PackError(lost_runs_line(root))
        raise PackError(f"{root} holds no {PACK_RUNS}: nothing to unpack")
    _refuse_damage(root, "unpacked", runs_too=True)
    p = load_pack(root)
    top = root.resolve()
    todo = []
    for e in p.entries:
        d = root / e["run"]
        if not d.resolve().is_relative_to(top):  # a symlinked folder on the way
            raise PackError(f"{d} leads outside {root}; nothing was unpacked")
        rec = RunRecord(e["run"], d, p, e)
        files = {name: text for name in PACKED_FILES if (text := rec.file_text(name)) is not None}
        if e.get("overrides") is not None:
            files[".hydra/overrides.yaml"] = OmegaConf.to_yaml(e["overrides"])
        if (d / "summary.json").exists():
            here = RunRecord(e["run"], d)
            if any(here.file_text(name) != files.get(name) for name in PACKED_FILES if name in files):
                raise PackError(f"{d} exists as a folder and differs from its packed copy; nothing was unpacked: "
                                "move the folder away (or pack it) first")
            continue  # the folder is this run already
        todo.append((d, files))
    written: list[Path] = []
    made: list[Path] = []
    try:
        for d, files in todo:
            for folder in (d / ".hydra", d):
                for q in [folder, *folder.parents]:
                    if q == root or q.exists():
                        break
                    made.append(q)
            (d / ".hydra" if ".hydra/overrides.yaml" in files else d).mkdir(parents=True, exist_ok=True)
            for name in sorted(files, key=lambda n: n == "summary.json"):  # the summary last: a run is whole once it has one
                atomic_write_text(d / name, files[name])
                written.append(d / name)
        for d, files in todo:  # read back before the pack goes
            for name, text in files.items():
                with open(d / name, newline="") as f:
                    if f.read() != text:
                        raise PackError(f"{d / name} did not read back as written; the pack is kept")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for q in sorted(set(made), key=lambda q: len(q.parts), reverse=True):
            if q.is_dir() and not any(q.iterdir()):
                q.rmdir()
        raise
    (root / PACK_METRICS).unlink(missing_ok=True)
    (root / PACK_RUNS).unlink()
    return len(todo)


_PROBLEMS: dict[tuple, list[str]] = {}


def pack_problems(root: str | Path) -> list[str]:
    """What is wrong with the pack in ``root`` that a reader can find without reading every run's metrics.

    Unreadable files, a lost runs.jsonl or defaults line, the table's columns, runs listed twice, rows of runs no
    line names, row counts, and each line's summary (types, its own checksum) and, for a finished run, config
    (it names the run's folder). Cached until one of the pack's files changes.
    """
    root = Path(root)
    if not (root / PACK_RUNS).exists():
        return [lost_runs_line(root)] if (root / PACK_METRICS).exists() else []
    try:
        key = pack_key(root)
    except PackError as e:
        return [str(e)]
    if key not in _PROBLEMS:
        _PROBLEMS.clear() if len(_PROBLEMS) > 64 else None
        _PROBLEMS[key] = _pack_problems(root)
    return list(_PROBLEMS[key])


def _pack_problems(root: Path) -> list[str]:
    import pyarrow.parquet as pq

    from bnstudy.runs import DONE, config_dict_problems, seal_problems, summary_problems

    try:
        p = load_pack(root)
    except (OSError, PackError) as e:
        return [str(e)]
    out = []
    runs = [e["run"] for e in p.entries]
    if len(set(runs)) != len(runs):
        twice = next(r for r in runs if runs.count(r) > 1)
        out.append(f"{PACK_RUNS} lists {len(runs) - len(set(runs))} run(s) twice (e.g. {twice})")
    for e in p.entries:
        s = e["summary"]
        problems = summary_problems(s) + seal_problems(s)
        if not problems and s.get("status") in DONE and e.get("config") is not None:
            problems = config_dict_problems(root / e["run"], e["config"], s)
        if problems:
            lost = "" if p.shared or len(p.entries) < 2 else f" ({PACK_RUNS} has no defaults line: its first line lost?)"
            out.append(f"{e['run']}: {'; '.join(problems)}{lost}")
    path = root / PACK_METRICS
    if any(e.get("rows") for e in p.entries) or path.exists():
        try:
            schema = pq.read_schema(path)
        except Exception as e:  # pyarrow raises several kinds for a missing or damaged file
            return out + [f"{PACK_METRICS} is unreadable ({type(e).__name__}: {str(e)[:120]}); restore it from git"]
        want = {"run": "string", "step": "int64", "split": "string", "metric": "string", "value": "double", "seconds": "double"}
        columns = []
        for name, kind in want.items():
            got = str(schema.field(name).type) if name in schema.names else None
            if got is None or kind not in got:  # a dictionary<values=string, ...> column is a string column
                columns.append(f"{PACK_METRICS} column {name} is {got or 'missing'}, expected {kind}")
        if columns:
            return out + columns
        try:
            counts = p.table().groupby("run", sort=False).size().to_dict()
        except PackError as e:
            return out + [str(e)]
        listed = set(runs)
        strays = [r for r in counts if r not in listed]
        if strays:
            out.append(f"{PACK_METRICS} has rows of {len(strays)} run(s) not in {PACK_RUNS} (e.g. {strays[0]})")
        for e in p.entries:
            if int(counts.get(e["run"], 0)) != int(e.get("rows") or 0):
                out.append(f"{e['run']}: {PACK_METRICS} has {counts.get(e['run'], 0)} row(s), {PACK_RUNS} says {e.get('rows') or 0}")
    return out


def pack_damage(root: str | Path) -> tuple[list[str], dict[str, list[str]]]:
    """Everything ``bnstudy-runs --check`` finds in the pack in ``root``: (problems of the pack, {run: its problems})."""
    from bnstudy.runs import check_record

    root = Path(root)
    whole = pack_problems(root)
    if whole or not (root / PACK_RUNS).exists():
        return whole, {}
    p = load_pack(root)
    runs: dict[str, list[str]] = {}
    for e in p.entries:
        try:
            problems = check_record(RunRecord(e["run"], root / e["run"], p, e))
        except PackError as err:
            problems = [str(err)]
        if problems:
            runs[e["run"]] = problems
    return whole, runs


def _refuse_damage(root: Path, what: str, runs_too: bool = False) -> dict[str, list[str]]:
    """Raise a :class:`PackError` (one line) when the pack in ``root`` is damaged as a whole (or, with ``runs_too``,
    in any run); else return its damaged runs."""
    whole, runs = pack_damage(root)
    if whole and LEFT_BY_A_FAILED_PACK in whole[0]:
        raise PackError(whole[0])  # it says what to do: not restoring anything from git
    if whole or (runs_too and runs):
        first = _without_fix(whole[0]) if whole else f"{next(iter(runs))}: {'; '.join(next(iter(runs.values())))}"
        more = len(whole) + len(runs) - 1
        raise PackError(
            f"{root} holds a damaged pack ({first}{f'; and {more} more' if more else ''}); nothing was {what}: "
            f"restore it from git (bnstudy-runs {root} --check lists the damage)"
        )
    return runs


def refuse_damaged(root: str | Path) -> None:
    """Raise a :class:`PackError` (one line) when a pack under ``root``, or the one holding ``root``, is damaged as a whole.

    What every reader of a results folder calls first: a pack that cannot be trusted is never read as if it were
    intact.
    """
    root = Path(root)
    found = find_packs(root) if root.is_dir() else []
    holder = pack_holding(root)
    for d in ([holder] if holder is not None else []) + found:
        problems = pack_problems(d)
        if problems:
            raise PackError(damaged_line(d, problems))


def damaged_line(d: Path, problems: list[str]) -> str:
    """The one line that refuses to use the damaged pack in ``d``."""
    if LEFT_BY_A_FAILED_PACK in problems[0]:
        return problems[0]  # it says what to do: not restoring anything from git
    more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"{d} holds a damaged pack ({_without_fix(problems[0])}{more}); restore it from git (bnstudy-runs {d} --check lists the damage)"


def _without_fix(problem: str) -> str:
    """A pack problem without its own "; restore ... from git": the line that quotes it says that once."""
    return re.sub(r"; restore [\w.]+ from git$", "", problem)


def pack_holding(path: str | Path) -> Path | None:
    """The folder above ``path`` that holds a pack (runs.jsonl, or a metrics.parquet that lost it), if any."""
    for parent in Path(path).absolute().parents:
        if (parent / PACK_RUNS).is_file() or (parent / PACK_METRICS).is_file():
            return parent
    return None


def find_packs(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) holding a pack (or a metrics.parquet that lost its runs.jsonl)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if PACK_RUNS in filenames or PACK_METRICS in filenames:
            found.append(Path(dirpath))
    return sorted(found)
