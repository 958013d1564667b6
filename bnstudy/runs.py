"""Run folders: atomic files, the tidy metrics log, the summary, and the per-run lock.

A run folder holds ``config.yaml``, ``metrics.csv``, ``summary.json`` and, while
a run is unfinished, ``checkpoint.pt``. Nothing else is needed to skip, resume
or analyse it.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

METRICS_HEADER = ["step", "split", "metric", "value", "seconds"]
DONE = ("completed", "diverged")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file behind
        raise


def _finite(obj: Any) -> Any:
    # JSON has no NaN/inf: non-finite numbers are written as null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats become null).

    A finished run's summary.json (status completed or diverged, with ``checksums``) is sealed as it is written:
    its ``checksums`` also get ``summary``, the digest of its own result fields (:func:`summary_digest`).
    """
    obj = _finite(obj)
    if Path(path).name == "summary.json" and obj.get("status") in DONE and isinstance(obj.get("checksums"), dict):
        obj = {**obj, "checksums": {**obj["checksums"], "summary": summary_digest(obj)}}
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json (from its folder, or from the pack holding it), or None when absent or unreadable."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        from bnstudy.archive import find_packed

        rec = find_packed(Path(run_dir))
        return rec.summary if rec is not None else None
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) else None


def summary_damage(run_dir: Path) -> str | None:
    """Why a run folder's summary.json cannot be read (missing beside a metrics.csv, empty, cut short); None if readable or no run."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        if (Path(run_dir) / "metrics.csv").exists() and read_summary(run_dir) is None:
            return "summary.json is missing"
        return None
    try:
        text = path.read_text()
    except OSError as e:
        return f"summary.json is unreadable ({e.strerror})"
    if not text.strip():
        return "summary.json is empty"
    try:
        s = json.loads(text)
    except ValueError as e:
        return f"summary.json is not JSON, cut short? ({e})"
    return None if isinstance(s, dict) else "summary.json is not a JSON object"


CHECKED_FILES = ("metrics.csv", "config.yaml")
# summary.json's own results, covered by checksums["summary"]: what a report counts and a sweep's skip trusts
SEALED = ("status", "step", "final", "best", "params", "seconds", "ms_per_step", "hook_seconds", "diverged_at", "factors", "run")


def summary_digest(s: dict[str, Any]) -> str:
    """sha256 of a canonical form of a summary's result fields (:data:`SEALED`): sorted keys, no spaces, null for non-finite."""
    fields = {k: s[k] for k in SEALED if k in s}
    return hashlib.sha256(json.dumps(_finite(fields), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checksum(text: str) -> str:
    """sha256 of a file's text (as written, UTF-8), as summary.json's ``checksums`` record it."""
    return hashlib.sha256(text.encode()).hexdigest()


def checksums(run_dir: Path) -> dict[str, str]:
    """``{file: sha256}`` of a finished run's metrics.csv and config.yaml, for summary.json's ``checksums``."""
    out = {}
    for name in CHECKED_FILES:
        path = Path(run_dir) / name
        if path.exists():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class MetricsLog:
    """Appends tidy rows ``step,split,metric,value,seconds`` to metrics.csv, flushed at each write."""

    def __init__(self, path: Path, resume_step: int | None = None, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        if resume_step is None or not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(METRICS_HEADER)
        else:
            self.truncate(resume_step)
        self._f = open(self.path, "a", newline="")
        self._w = csv.writer(self._f)
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` (those written after the checkpoint a run resumes from)."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(METRICS_HEADER) and int(r[0]) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, self.path)

    def write(self, step: int, rows: Iterable[tuple[str, str, float]], seconds: float) -> None:
        """Append (split, metric, value) rows measured at ``step`` after ``seconds`` of training."""
        rows = list(rows)
        for split, metric, value in rows:
            self._w.writerow([step, split, metric, repr(float(value)), f"{seconds:.4f}"])
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{metric}", value, step)
        self._f.flush()

    def close(self) -> None:
        """Flush and close the file (and the TensorBoard writer)."""
        self._f.close()
        if self._tb is not None:
            self._tb.close()


class RunLock:
    """An exclusive, non-blocking lock on a run folder (released when the process dies)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def now() -> float:
    """Wall-clock time, for the ``updated`` field of summaries."""
    return time.time()


# ---------------------------------------------------------------- damage checks

STATUSES = ("completed", "diverged", "failed", "interrupted", "running")
# summary.json keys and the JSON types their values must have (None allowed where a value may be missing)
_NUMBER = (int, float)
_SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "step": (int,),
    "final": (dict,),
    "best": (dict,),
    "params": (int,),
    "seconds": _NUMBER,
    "ms_per_step": _NUMBER,
    "factors": (dict,),
}


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)  # JSON true is not a number


def summary_problems(s: Any) -> list[str]:
    """What is wrong with a summary.json's content: missing keys, values of the wrong type."""
    if not isinstance(s, dict):
        return ["summary.json is not a JSON object"]
    out = []
    for key, types in _SUMMARY_TYPES.items():
        if key not in s:
            out.append(f"summary.json has no '{key}'")
        elif not _is(s[key], types):
            out.append(f"summary.json '{key}' is {type(s[key]).__name__}, expected {' or '.join(t.__name__ for t in types)}")
    if isinstance(s.get("status"), str) and s["status"] not in STATUSES:
        out.append(f"summary.json status '{s['status']}' is none of {', '.join(STATUSES)}")
    if _is(s.get("step"), (int,)) and s["step"] < 0:
        out.append(f"summary.json step is {s['step']}")
    for block in ("final", "best"):
        for k, v in (s.get(block) or {}).items() if isinstance(s.get(block), dict) else ():
            if v is not None and not _is(v, _NUMBER):
                out.append(f"summary.json {block} '{k}' is {type(v).__name__}, expected a number or null")
    if "provenance" in s and not isinstance(s["provenance"], dict):
        out.append("summary.json 'provenance' is not an object")
    return out


def _same(recorded: Any, logged: float) -> bool:
    # summary.json writes non-finite numbers as null; metrics.csv writes repr(float), so finite values match exactly
    if recorded is None:
        return not math.isfinite(logged)
    return math.isfinite(logged) and float(recorded) == logged


def metrics_problems(path: Path, s: dict[str, Any]) -> list[str]:
    """What is wrong with a finished run's metrics.csv, read against its summary ``s``."""
    if not path.exists():
        return ["metrics.csv is missing"]
    try:
        with open(path, newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        return [f"metrics.csv is unreadable ({e})"]
    return metrics_text_problems(text, s)


def metrics_text_problems(text: str, s: dict[str, Any], diverge_loss: float | None = None) -> list[str]:
    """What is wrong with a finished run's metrics.csv text, read against its summary ``s``.

    With ``diverge_loss`` (the run's ``train.diverge_loss``) the status must agree with the last train loss: a
    diverged run's is non-finite or above it (the loss that stopped the run), a completed run's is neither.
    """
    last: dict[tuple[str, str], float] = {}
    best = math.nan
    seen: set[tuple[int, str, str]] = set()
    prev_step, n = -1, 0
    try:
        with io.StringIO(text, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != METRICS_HEADER:
                return [f"metrics.csv header is {header}, expected {','.join(METRICS_HEADER)}"]
            for n, row in enumerate(reader, start=2):
                if len(row) != len(METRICS_HEADER):
                    return [f"metrics.csv line {n} has {len(row)} field(s), expected {len(METRICS_HEADER)} (cut short?)"]
                try:
                    step, value, _ = int(row[0]), float(row[3]), float(row[4])
                except ValueError:
                    return [f"metrics.csv line {n} does not parse: {','.join(row)[:80]}"]
                split, metric = row[1], row[2]
                if not split or not metric:
                    return [f"metrics.csv line {n} has an empty split or metric"]
                if step < prev_step:
                    return [f"metrics.csv line {n}: step {step} after step {prev_step} (rows out of order)"]
                if (step, split, metric) in seen:
                    return [f"metrics.csv line {n}: duplicate row for step {step} {split}/{metric}"]
                seen.add((step, split, metric))
                prev_step = step
                last[(split, metric)] = value
                if (split, metric) == ("test", "acc") and math.isfinite(value) and not value <= best:
                    best = value
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [f"metrics.csv is unreadable ({e})"]
    out = []
    step = s.get("step")
    if prev_step != step:
        out.append(f"metrics.csv ends at step {prev_step if n else 'none (no rows)'}, summary.json says {step}")
    for key, recorded in (s.get("final") or {}).items():
        split, _, metric = key.partition("/")
        if (split, metric) not in last:
            if recorded is not None:
                out.append(f"summary.json final {key} = {recorded} but metrics.csv has no {key} row")
        elif not _same(recorded, last[(split, metric)]):
            out.append(f"summary.json final {key} = {recorded}, metrics.csv's last is {last[(split, metric)]!r}")
    recorded_best = (s.get("best") or {}).get("test/acc")
    if recorded_best is not None and not (math.isfinite(best) and float(recorded_best) == best):
        out.append(f"summary.json best test/acc = {recorded_best}, metrics.csv's best is {best!r}")
    if diverge_loss is not None:
        loss = last.get(("train", "loss"))
        bad = loss is not None and (not math.isfinite(loss) or loss > diverge_loss)
        if s.get("status") == "diverged" and not bad:
            out.append(f"summary.json says diverged, but metrics.csv's last train loss is {loss!r}, "
                       f"finite and not above train.diverge_loss {diverge_loss:g}")
        elif s.get("status") == "completed" and bad:
            out.append(f"summary.json says completed, but metrics.csv's last train loss {loss!r} diverged "
                       f"(train.diverge_loss {diverge_loss:g})")
    return out


def check_run(run_dir: Path, s: dict[str, Any] | None = None) -> list[str]:
    """Everything found damaged in a run (a folder, or a packed run by its would-be folder); empty: intact.

    Any run: a readable summary.json of the right types, matching its own
    ``checksums["summary"]`` where it has one. A finished run (completed or
    diverged) also: a config.yaml that names the run's folder
    (:func:`bnstudy.config.run_name`), a metrics.csv with the header, parsable
    rows in step order, no duplicate (step, split, metric), a last step equal
    to the summary's (a completed run's at its budget), last values equal to
    the summary's final and best, a status that agrees with the last train loss,
    and both files matching the summary's ``checksums`` where it has them.
    """
    from bnstudy.archive import RunRecord, find_packed

    run_dir = Path(run_dir)
    rec = RunRecord(run_dir.name, run_dir)
    if not (run_dir / "summary.json").exists():
        rec = find_packed(run_dir) or rec
    return check_record(rec, s)


def check_record(rec: Any, s: dict[str, Any] | None = None) -> list[str]:
    """:func:`check_run` of one :class:`bnstudy.archive.RunRecord` (a folder's or a pack's)."""
    run_dir = rec.dir
    if s is None:
        text = rec.file_text("summary.json")
        if text is None:
            return ["summary.json is missing or unreadable"]
        if not text.strip():
            return ["summary.json is empty"]
        try:
            s = json.loads(text)
        except ValueError as e:
            return [f"summary.json is not JSON, cut short? ({e})"]
    problems = summary_problems(s)
    if problems or s.get("status") not in DONE:
        return problems + seal_problems(s)
    cfg_text, m_text = rec.file_text("config.yaml"), rec.file_text("metrics.csv")
    problems, cfg = _config_problems(run_dir, cfg_text, s)
    problems += ["metrics.csv is missing"] if m_text is None else metrics_text_problems(m_text, s, _diverge_loss(cfg))
    sums = s.get("checksums")
    if isinstance(sums, dict):
        for name, text in (("metrics.csv", m_text), ("config.yaml", cfg_text)):
            if name in sums and text is not None and checksum(text) != sums[name]:
                problems.append(f"{name} does not match summary.json's checksum (edited after the run?)")
    return problems + seal_problems(s)  # last: what else disagrees says more about an edit


def seal_problems(s: dict[str, Any]) -> list[str]:
    """Whether a summary's result fields still give the digest it was sealed with (none to check: recorded before digests)."""
    sums = s.get("checksums") if isinstance(s, dict) else None
    if isinstance(sums, dict) and "summary" in sums and sums["summary"] != summary_digest(s):
        return ["summary.json's status or numbers do not match its checksum (edited after the run?)"]
    return []


def _diverge_loss(cfg: Any) -> float | None:
    """``train.diverge_loss`` of a parsed config.yaml (its default when the key is absent); None without a config."""
    train = cfg.get("train") if isinstance(cfg, dict) else None
    if not isinstance(train, dict):
        return None
    limit = train.get("diverge_loss", 1000.0)
    return float(limit) if _is(limit, _NUMBER) else None


def _config_problems(run_dir: Path, text: str | None, s: dict[str, Any]) -> tuple[list[str], Any]:
    """config.yaml must exist, parse, name this run's folder, and (completed) have been trained to its budget; (problems, config)."""
    import yaml

    if text is None:
        # every run a sweep names has one; a run made elsewhere (a test's hand-made folder) is missing one only
        # if its summary recorded one
        recorded = isinstance(s.get("checksums"), dict) and "config.yaml" in s["checksums"]
        return (["config.yaml is missing"] if recorded or not _named_differently(run_dir) else []), None
    if not text.strip():
        return ["config.yaml is empty"], None
    try:
        cfg = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        return [f"config.yaml does not parse ({str(e).splitlines()[0]})"], None
    return config_dict_problems(run_dir, cfg, s), cfg


def config_dict_problems(run_dir: Path, cfg: Any, s: dict[str, Any]) -> list[str]:
    """A parsed config.yaml must name this run's folder and (completed) have been trained to its budget."""
    from bnstudy.config import ConfigError, run_name

    if not isinstance(cfg, dict):
        return ["config.yaml is not a mapping"]
    out = []
    try:
        name = run_name(cfg)
    except (ConfigError, KeyError, TypeError) as e:
        return [f"config.yaml does not name a run ({e})"]
    if name != f"{run_dir.parent.name}/{run_dir.name}" and not _named_differently(run_dir):
        out.append(f"config.yaml names {name}, not this folder (edited after the run?)")
    steps = (cfg.get("train") or {}).get("steps") if isinstance(cfg.get("train"), dict) else None
    if s.get("status") == "completed" and isinstance(steps, int) and isinstance(s.get("step"), int) and s["step"] < steps:
        out.append(f"summary.json says completed at step {s['step']}, but train.steps is {steps}")
    return out


_NAMED = re.compile(r".+-[0-9a-f]{8}/seed\d+")


def _named_differently(run_dir: Path) -> bool:
    # a run trained by train_run() into a folder of the caller's choosing (tests, the benchmark) has no
    # <name>-<hash>/seedN path to check against
    return not _NAMED.fullmatch(f"{run_dir.parent.name}/{run_dir.name}")
