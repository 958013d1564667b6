"""Packing a results folder's run folders into its pack, and unpacking it (see :mod:`bnstudy.archive`)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from bnstudy.archive import (
    COLUMNS,
    DROPPED,
    KEPT_FILES,
    PACK_METRICS,
    PACK_RUNS,
    PACKED_FILES,
    UNFINISHED,
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
    metrics_text,
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=19, use_byte_stream_split=["value", "seconds"])
    os.replace(tmp, path)


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
    unfinished, damaged, or not exactly reproducible). Packed folders are removed.
    """
    import pandas as pd

    from bnstudy.runs import check_run

    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if PACK_RUNS in filenames and Path(dirpath) != root:
            raise PackError(f"{dirpath} holds a pack of its own: unpack it first, or pack that folder on its own")
    for parent in root.absolute().parents:
        if (parent / PACK_RUNS).is_file():
            raise PackError(f"{parent} holds a pack that would hold these runs: run --pack on {parent}")
    old = load_pack(root) if (root / PACK_RUNS).is_file() else None
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
        try:
            e = _entry(rec)
        except (PackError, ValueError, OSError, yaml.YAMLError) as err:
            left.append(f"left {rec.rel}: {err}")
            continue
        cols = e.pop("_metrics", None)
        entries[rec.rel] = e
        frames[rec.rel] = pd.DataFrame(cols).assign(run=rec.rel) if cols else None
        packed_dirs.append(rec)
    if not packed_dirs:
        return len(entries), left
    runs = sorted(entries)
    _write_table(root / PACK_METRICS, [frames[r][COLUMNS] for r in runs if frames.get(r) is not None])
    lines = _runs_lines([entries[r] for r in runs])
    from bnstudy.runs import atomic_write_text

    atomic_write_text(root / PACK_RUNS, lines)
    new = load_pack(root)
    by_run = {e["run"]: e for e in new.entries}
    for rec in packed_dirs:  # read back before any folder goes: every file must come back as it was
        back = RunRecord(rec.rel, rec.dir, new, by_run[rec.rel])
        for name in PACKED_FILES:
            if name in KEPT_FILES and name not in (by_run[rec.rel].get("files") or {}):
                continue
            if back.file_text(name) != rec.file_text(name):
                raise PackError(f"{rec.rel}/{name} did not come back from the pack as it was; the folders are kept")
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
    """Turn ``root``'s pack back into run folders (a folder already there is kept); remove the pack. Returns runs written."""
    from omegaconf import OmegaConf

    from bnstudy.runs import atomic_write_text

    root = Path(root)
    if not (root / PACK_RUNS).is_file():
        raise PackError(f"{root} holds no {PACK_RUNS}: nothing to unpack")
    p = load_pack(root)
    n = 0
    for e in p.entries:
        d = root / e["run"]
        if (d / "summary.json").exists():
            continue  # a folder overrides its packed copy
        rec = RunRecord(e["run"], d, p, e)
        d.mkdir(parents=True, exist_ok=True)
        for name in PACKED_FILES:
            text = rec.file_text(name)
            if text is not None and name != "summary.json":
                atomic_write_text(d / name, text)
        if e.get("overrides") is not None:
            (d / ".hydra").mkdir(exist_ok=True)
            atomic_write_text(d / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(e["overrides"]))
        atomic_write_text(d / "summary.json", rec.file_text("summary.json") or "")  # last: a run is whole once it has one
        n += 1
    (root / PACK_METRICS).unlink(missing_ok=True)
    (root / PACK_RUNS).unlink()
    return n


def pack_problems(root: str | Path) -> list[str]:
    """What is wrong with the pack in ``root`` as a whole: unreadable files, schema, duplicate runs, row counts."""
    import pyarrow.parquet as pq

    root = Path(root)
    try:
        p = load_pack(root)
    except (OSError, PackError) as e:
        return [str(e)]
    out = []
    runs = [e["run"] for e in p.entries]
    if len(set(runs)) != len(runs):
        out.append(f"{PACK_RUNS} lists {len(runs) - len(set(runs))} run(s) twice")
    path = root / PACK_METRICS
    if any(e.get("rows") for e in p.entries) or path.exists():
        try:
            schema = pq.read_schema(path)
        except Exception as e:  # pyarrow raises several kinds for a missing or damaged file
            return out + [f"{PACK_METRICS} is unreadable ({type(e).__name__}: {str(e)[:120]}); restore it from git"]
        want = {"run": "string", "step": "int64", "split": "string", "metric": "string", "value": "double", "seconds": "double"}
        for name, kind in want.items():
            got = str(schema.field(name).type) if name in schema.names else None
            if got is None or kind not in got:  # a dictionary<values=string, ...> column is a string column
                out.append(f"{PACK_METRICS} column {name} is {got or 'missing'}, expected {kind}")
        if out:
            return out
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


def find_packs(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) holding a pack."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if PACK_RUNS in filenames:
            found.append(Path(dirpath))
    return sorted(found)
