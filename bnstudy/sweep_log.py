"""A sweep's record in its out_dir: multirun.yaml left as it was when nothing trained, every command in sweeps.log."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from bnstudy.runs import atomic_write_text, read_summary

SWEEPS_LOG = "sweeps.log"  # every sweep command that trained something in this out_dir, one per line


def sweep_record_before(sweep_dir: Path) -> bytes | None:
    """multirun.yaml as it is before a sweep starts (Hydra rewrites it first thing); None when absent."""
    try:
        return (Path(sweep_dir) / "multirun.yaml").read_bytes()
    except OSError:
        return None


def keep_sweep_record(sweep_dir: Path, before: bytes | None, sweep_id: str | None) -> None:
    """After a sweep: put back multirun.yaml when none of its jobs trained, else log its command in sweeps.log.

    A re-run of a finished study then leaves its folder exactly as it was
    (``git status`` stays clean), and a second sweep into the same out_dir
    adds its command instead of hiding the first one.
    """

    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "multirun.yaml"
    trained = sweep_id is not None and any(
        (s := read_summary(p.parent)) is not None and s.get("sweep_id") == sweep_id for p in sweep_dir.glob("**/summary.json")
    )
    # the empty folders Hydra made for skipped jobs (of a packed study); listed first, since removing
    # folders while the glob walks them ends the walk with FileNotFoundError
    for d in sorted(sweep_dir.glob("**/seed*"), reverse=True):
        while d != sweep_dir and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent
    if not trained:
        if before is not None:
            atomic_write_text(path, before.decode())
        else:  # the sweep wrote it into a folder that had none: a sweep that trains nothing writes nothing
            path.unlink(missing_ok=True)
        return
    log = sweep_dir / SWEEPS_LOG
    logged = log.read_text().splitlines() if log.exists() else []
    commands = []
    if before is not None:
        old = sweep_dir / f".multirun.{os.getpid()}.before.yaml"
        old.write_bytes(before)
        try:
            commands.append(multirun_command(old))  # the sweep that made this folder, if it was another one
        finally:
            old.unlink(missing_ok=True)
    commands.append(multirun_command(path))
    new = [c for c in dict.fromkeys(commands) if c is not None and c not in logged]
    if new:
        atomic_write_text(log, "".join(line + "\n" for line in [*logged, *new]))


def multirun_command(path: Path) -> str | None:
    """The ``bnstudy-train -m ...`` command rebuilt from one multirun.yaml; None (with a warning) when unreadable."""
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text()) or {}
        task = cfg["hydra"]["overrides"]["task"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        warnings.warn(f"ignored {path}: {e}", stacklevel=2)
        return None
    return " ".join(["bnstudy-train", "-m", *(_quote(t) for t in task)])


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))
