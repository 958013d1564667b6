"""Run folders to and from a machine whose results come back as a few files (``scripts/device_study.sh``).

``pack`` puts the runs a job trained (``summary.json`` updated since a given
time) into one ``runs.tar.xz`` split into parts, beside ``manifest.json`` with
the sha256 of every part and of the whole archive and the status of every run:
at most :data:`MAX_FILES` files of at most :data:`PART_BYTES` bytes. Checkpoints
are left out, except those of interrupted runs while they fit, so such a run
can resume where it stopped.

``import`` checks all of it (the manifest's shape, every part there and
inside OUT_DIR, sizes and hashes right, run paths shaped as bnstudy names run folders, only plain files under them
inside DEST, every finished run intact by ``bnstudy-runs --check``'s rules, no
damaged pack in DEST, no local folder that would lose anything) before it
writes anything, then moves the runs into their folder, under each run's lock,
as if they had been trained there. A finished run already there is kept; an
unfinished one at an earlier step is updated in place (files that are not the
run's own stay); anything else in the way refuses the import. A failed run, or
an interrupted one whose checkpoint stayed behind, is not imported (the sweep
trains it again). It never removes a folder it did not write.

    python -m bnstudy.transfer import OUT_DIR [DEST]      # DEST: the study's out_dir recorded in the manifest
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from bnstudy.archive import unsafe_path
from bnstudy.runs import DONE, check_run, read_summary

MANIFEST = "manifest.json"
ARCHIVE = "runs.tar.xz"
FORMAT = 1
PART_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have
MAX_FILES = 8  # the manifest, the job's log and at most 6 parts
MAX_PARTS = MAX_FILES - 2
LEFT_OUT = {".lock"}  # a job's lock file means nothing elsewhere
# a run folder's path under the study: <factors>-<8 hex digits of its config hash>/seed<N>, in any subfolder
RUN_PATH = re.compile(r"(?:[^/]+/)*[^/]+-[0-9a-f]{8}/seed[0-9]+")


class TransferError(Exception):
    """A pack that cannot be made, or an import refused; the message says what to do."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trained_since(runs_dir: Path, since: float) -> list[Path]:
    """Run folders under ``runs_dir`` whose summary was written at or after ``since`` (Unix time)."""
    out = []
    for p in sorted(runs_dir.glob("**/summary.json")):
        s = read_summary(p.parent)
        if s and float(s.get("updated") or 0) >= since:
            out.append(p.parent)
    return out


def pack(runs_dir: Path, out: Path, since: float, meta: dict[str, Any], checkpoint_budget: int = 60 * 2**20) -> dict[str, Any]:
    """Pack the runs trained since ``since`` into ``out`` (parts + manifest); return the manifest."""
    runs = trained_since(runs_dir, since)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{ARCHIVE}.tmp"
    entries, spent = [], 0
    with tarfile.open(tmp, "w:xz", preset=6) as tf:
        for run in runs:
            s = read_summary(run) or {}
            rel = run.relative_to(runs_dir).as_posix()
            entry = {"run": rel, "status": s.get("status"), "step": s.get("step"), "checkpoint": False}
            for f in sorted(run.rglob("*")):
                if f.is_dir() or f.name in LEFT_OUT or f.name.endswith(".tmp") or f.is_symlink():
                    continue
                if f.name == "checkpoint.pt":
                    if s.get("status") != "interrupted" or spent + f.stat().st_size > checkpoint_budget:
                        continue  # a finished run needs none; an interrupted one's travels while they fit
                    spent += f.stat().st_size
                    entry["checkpoint"] = True
                tf.add(f, arcname=f"{rel}/{f.relative_to(run).as_posix()}", recursive=False)
            entries.append(entry)
    parts = _split(tmp, out)
    manifest = {
        "format": FORMAT,
        "created": time.time(),
        **meta,
        "archive_sha256": _sha256(tmp),
        "parts": [{"name": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in parts],
        "runs": entries,
    }
    tmp.unlink()
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _split(archive: Path, out: Path) -> list[Path]:
    size = archive.stat().st_size
    n = max(1, -(-size // PART_BYTES))
    if n > MAX_PARTS:
        raise TransferError(
            f"the packed runs take {size / 2**20:.1f} MiB, more than {MAX_PARTS} parts of {PART_BYTES // 2**20} MiB; "
            "run fewer runs per job (a smaller sweep) or leave out interrupted runs' checkpoints (DEVICE_CKPT_MIB=0)"
        )
    names = [out / (f"{ARCHIVE}.part{i}" if n > 1 else ARCHIVE) for i in range(n)]
    with open(archive, "rb") as f:
        for p in names:
            p.write_bytes(f.read(PART_BYTES))
    return names


def _refuse(why: str) -> TransferError:
    return TransferError(f"refused: {why}; nothing was imported (copy the whole output folder again)")


def verify(src: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest and the whole archive of the pack in ``src``, or a :class:`TransferError` saying what is wrong."""
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise _refuse(f"{src / MANIFEST} is missing") from None
    except (OSError, ValueError) as e:
        raise _refuse(f"{src / MANIFEST} is unreadable ({type(e).__name__}: {e})") from None
    _check_manifest(src, manifest)
    parts = manifest["parts"]
    blob = bytearray()
    for part in parts:
        p = src / part["name"]
        if not p.is_file():
            raise _refuse(f"{p} is missing ({len(parts)} part(s) expected)")
        if p.stat().st_size != part["bytes"] or _sha256(p) != part["sha256"]:
            raise _refuse(f"{p} is damaged or partial ({p.stat().st_size} bytes, expected {part['bytes']}; sha256 differs)")
        blob += p.read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest.get("archive_sha256"):
        raise _refuse("the parts do not join into the archive the manifest names")
    return manifest, bytes(blob)


def _check_manifest(src: Path, manifest: Any) -> None:
    """The manifest's shape: parts named inside ``src`` with their size and hash, runs with paths inside DEST."""
    where = src / MANIFEST
    if not isinstance(manifest, dict):
        raise _refuse(f"{where} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise _refuse(f"{where} is format {manifest.get('format')}, this bnstudy reads {FORMAT}")
    parts, runs = manifest.get("parts"), manifest.get("runs")
    if not isinstance(parts, list) or not parts or not isinstance(runs, list):
        raise _refuse(f"{where} needs 'parts' and 'runs' lists (parts is {type(parts).__name__}, runs {type(runs).__name__})")
    for part in parts:
        if not (isinstance(part, dict) and isinstance(part.get("name"), str) and _is_int(part.get("bytes"))
                and isinstance(part.get("sha256"), str)):
            raise _refuse(f"{where} lists a part that is not an object with a name, bytes and sha256: {str(part)[:80]}")
        if unsafe_path(part["name"]) or "/" in part["name"]:
            raise _refuse(f"{where} names a part {part['name']!r} outside {src}")
    seen = set()
    for r in runs:
        if not isinstance(r, dict):
            raise _refuse(f"{where} lists a run that is not an object: {str(r)[:80]}")
        why = unsafe_path(r.get("run"))
        if why:
            raise _refuse(f"the manifest names an unsafe run path: {why}")
        if not RUN_PATH.fullmatch(r["run"]):  # a study's own folder (figures/, tables/) is no run, whatever it holds
            raise _refuse(f"the manifest names a run {r['run']!r} whose path is not a run folder's (NAME-HASH/seedN, as "
                          "bnstudy names them)")
        if r["run"] in seen:
            raise _refuse(f"the manifest lists run {r['run']} twice")
        seen.add(r["run"])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _extract(blob: bytes, manifest: dict[str, Any], into: Path) -> None:
    names = {str(r["run"]) for r in manifest["runs"]}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:xz") as tf:
            members = tf.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if not m.isfile() or m.name.startswith("/") or ".." in parts or not any(m.name.startswith(f"{n}/") for n in names):
                    raise _refuse(f"the archive holds {m.name!r}, which is not a plain file of a listed run")
            tf.extractall(into, members=members, filter="data")
    except TransferError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _refuse(f"the archive cannot be read ({type(e).__name__}: {e})") from None
    for r in manifest["runs"]:
        run = into / str(r["run"])
        s = read_summary(run)
        if s is None:
            raise _refuse(f"run {r['run']} has no readable summary.json")
        if s.get("status") != r.get("status"):
            raise _refuse(f"run {r['run']} says {s.get('status')}, the manifest {r.get('status')}")
        damage = check_run(run, s) if s.get("status") in DONE else []
        if damage:
            raise _refuse(f"run {r['run']} is damaged ({'; '.join(damage)})")


OWNED = ("summary.json", "metrics.csv", "config.yaml", "checkpoint.pt", "train.log", "error.txt", ".hydra")  # a run's own files


def _plan(manifest: dict[str, Any], dest: Path) -> dict[str, list[str]]:
    """What the import does with each run ("import", "kept" or "left"); a :class:`TransferError` when any local folder
    would lose something (before anything is written)."""
    from bnstudy.archive import PackError
    from bnstudy.archive_write import refuse_damaged

    try:
        refuse_damaged(dest)  # a pack under DEST (or holding it) that cannot be read is not written beside
    except PackError as e:
        raise _refuse(str(e)) from None
    top = dest.resolve()
    plan: dict[str, list[str]] = {"import": [], "kept": [], "left": []}
    for r in manifest["runs"]:
        rel, status = str(r["run"]), r.get("status")
        target = dest / rel
        if not target.resolve().is_relative_to(top):  # a symlinked folder on the way
            raise _refuse(f"run {rel} would be written outside {dest}")
        if status not in DONE and not (status == "interrupted" and r.get("checkpoint")):
            plan["left"].append(rel)  # failed, or no checkpoint to resume from: the sweep trains it again
            continue
        here = read_summary(target)
        if here is None:
            if target.exists() and (not target.is_dir() or any(p.name != ".lock" for p in target.iterdir())):
                raise _refuse(f"{target} exists and is not a run folder; move it away, or name another DEST")
            plan["import"].append(rel)
        elif here.get("status") in DONE:
            damage = check_run(target, here)
            if damage:
                raise _refuse(f"{target} is a finished run but damaged ({'; '.join(damage)}); check it and move it away first")
            plan["kept"].append(rel)
        elif not (target / "summary.json").exists():
            raise _refuse(f"{target} is in a pack as {here.get('status')}; unpack or fix it first")
        elif not (isinstance(here.get("step"), int) and isinstance(r.get("step"), int) and here["step"] < r["step"]):
            raise _refuse(f"{target} is {here.get('status')} at step {here.get('step')}, the imported copy at step "
                          f"{r.get('step')}: the local run is kept (move it away to import this one)")
        else:
            plan["import"].append(rel)  # an unfinished local run at an earlier step: the imported one goes further
    return plan


def _move_in(run: Path, target: Path) -> None:
    """Move the imported run's files into ``target`` (summary.json last); the run's own files that it does not bring
    (an older checkpoint, error.txt) go, any other file in ``target`` stays."""
    new = sorted((p for p in run.rglob("*") if p.is_file()), key=lambda p: (p.name == "summary.json", str(p)))
    brought = {p.relative_to(run).as_posix() for p in new}
    for name in OWNED:
        old = target / name
        if name == ".hydra" and old.is_dir():
            for q in old.rglob("*"):
                if q.is_file() and q.relative_to(target).as_posix() not in brought:
                    q.unlink()
        elif name not in brought and name != "summary.json" and old.is_file():
            old.unlink()
    for p in new:
        to = target / p.relative_to(run)
        to.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, to)


def import_pack(src: Path, dest: Path) -> dict[str, list[str]]:
    """Check the pack in ``src`` whole, then move its runs under ``dest``.

    Nothing is removed that the import did not write: a finished intact run already there is kept; an unfinished
    one at an earlier step is updated in place (under its lock, keeping files that are not the run's own); any
    other folder in the way refuses the whole import before anything is written.
    """
    from bnstudy.runs import RunLock

    manifest, blob = verify(src)
    plan = _plan(manifest, dest)
    made = [q for q in [dest, *dest.parents] if not q.exists()]
    done: dict[str, list[str]] = {"imported": [], "kept": plan["kept"], "interrupted": [], "left": plan["left"]}
    status = {str(r["run"]): r.get("status") for r in manifest["runs"]}
    locks: list[RunLock] = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".import-") as tmp:
            _extract(blob, manifest, Path(tmp))
            for rel in plan["import"]:  # every lock first: a run being trained stops the whole import
                fresh = not (dest / rel).exists()
                lock = RunLock(dest / rel)
                if not lock.acquire():
                    raise _refuse(f"{dest / rel} is being trained by another process; import again when it is done")
                locks.append(lock)
                if fresh:
                    made.append(dest / rel)
            for rel in plan["import"]:
                _move_in(Path(tmp) / rel, dest / rel)
                done["interrupted" if status[rel] == "interrupted" else "imported"].append(rel)
    except BaseException:
        if not done["imported"] and not done["interrupted"]:  # nothing moved in: leave no folder or lock of ours
            for lock in locks:
                lock.release()
                lock.path.unlink(missing_ok=True)
            for q in sorted(set(made), key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    q.rmdir()  # only if empty
        raise
    finally:
        for lock in locks:
            lock.release()
    return done


def default_dest(manifest: dict[str, Any]) -> Path:
    """DEST when none is given: the manifest's out_dir, which must be a folder inside the current project."""
    out = manifest.get("out_dir")
    if not isinstance(out, str) or not out.strip() or out.strip() == ".":
        raise TransferError("the manifest records no out_dir; name the destination: python -m bnstudy.transfer import OUT_DIR results/STUDY")
    if unsafe_path(out.rstrip("/")) or not (Path.cwd() / out).resolve().is_relative_to(Path.cwd().resolve()):
        raise TransferError(
            f"the manifest's out_dir {out!r} is outside this project; name the destination: "
            "python -m bnstudy.transfer import OUT_DIR results/STUDY"
        )
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m bnstudy.transfer import OUT_DIR [DEST]`` (and ``pack``, used by scripts/device_study.sh)."""
    p = argparse.ArgumentParser(prog="python -m bnstudy.transfer", description="Pack runs for the way back from a GPU machine, or import them.")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("import", help="check a pack and move its runs into DEST")
    pi.add_argument("src", help="the folder the GPU job packed into")
    pi.add_argument("dest", nargs="?", help="where the runs go (default: the study's out_dir, as recorded in the manifest)")
    pp = sub.add_parser("pack", help="pack the runs trained since a time")
    pp.add_argument("runs_dir")
    pp.add_argument("out")
    pp.add_argument("--since", type=float, required=True, help="Unix time: runs whose summary.json is newer are packed")
    pp.add_argument("--meta", default="{}", help="JSON object recorded in the manifest (study, out_dir, machine)")
    pp.add_argument("--checkpoint-mib", type=float, default=60, help="checkpoints of interrupted runs travel up to this total")
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            m = pack(Path(args.runs_dir), Path(args.out), args.since, json.loads(args.meta), int(args.checkpoint_mib * 2**20))
            by: dict[str, int] = {}
            for r in m["runs"]:
                by[str(r["status"])] = by.get(str(r["status"]), 0) + 1
            counts = ", ".join(f"{v} {k}" for k, v in sorted(by.items())) or "no runs"
            mib = sum(q["bytes"] for q in m["parts"]) / 2**20
            print(f"packed {len(m['runs'])} run(s) ({counts}) into {len(m['parts'])} part(s), {mib:.2f} MiB, in {args.out}")
            return 0
        src = Path(args.src)
        manifest, _ = verify(src)
        dest = Path(args.dest) if args.dest else default_dest(manifest)
        done = import_pack(src, dest)
    except TransferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"imported {len(done['imported'])} finished run(s) and {len(done['interrupted'])} interrupted one(s) into {dest}; "
        f"kept {len(done['kept'])} finished run(s) already there"
    )
    for rel in done["interrupted"]:
        print(f"  interrupted: {dest / rel}  (the same sweep resumes it from its checkpoint)")
    for rel in done["left"]:
        print(f"  not imported: {rel}  (failed, or interrupted without its checkpoint: the same sweep trains it again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
