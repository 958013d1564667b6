"""Where a result came from: the code (git commit, dirty flag, a fingerprint of the training code) and the machine.

Every ``summary.json`` holds :func:`provenance` under ``"provenance"``. The run
hash covers the config only, so a run trained by older code keeps its folder
name; the fingerprint is what tells it apart: :func:`stale_files` names the
training-code files that changed since the run was trained.
"""
from __future__ import annotations

import functools
import hashlib
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
# Code that cannot change a training result: the analysis of finished runs and the benchmark.
NOT_TRAINING = ("analysis/", "bench/")
UNKNOWN = "unknown"


def training_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The package's Python files that affect training (all but analysis/ and the benchmark), sorted."""
    files = []
    for p in sorted(Path(package_dir).rglob("*.py")):
        rel = p.relative_to(package_dir).as_posix()
        if "__pycache__" in rel or any(rel == x or rel.startswith(x) for x in NOT_TRAINING):
            continue
        files.append(p)
    return files


def code_files(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """``{"bnstudy/<path>": sha256[:12]}`` of each training file's content."""
    package_dir = Path(package_dir)
    return {
        f"bnstudy/{p.relative_to(package_dir).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in training_files(package_dir)
    }


def fingerprint(files: dict[str, str]) -> str:
    """One short hash of the per-file hashes: equal fingerprints mean the same training code."""
    blob = "\n".join(f"{k} {v}" for k, v in sorted(files.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Hashed when the package is imported, i.e. the code this process actually runs, even if
# the files are edited while a long sweep goes on.
_CODE_AT_IMPORT = code_files()


def current_code(package_dir: Path | None = None) -> dict[str, Any]:
    """``{"fingerprint", "files"}`` of the training code (of this process, or of ``package_dir`` as it is on disk)."""
    files = _CODE_AT_IMPORT if package_dir is None else code_files(package_dir)
    return {"fingerprint": fingerprint(files), "files": files}


def _git(repo: Path, *args: str) -> bytes | None:
    try:
        p = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or it hung
    return p.stdout if p.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_state(repo: Path = PACKAGE_DIR.parent) -> dict[str, Any]:
    """``commit``, ``dirty`` and (when dirty) ``diff_sha256`` of the checkout holding the package; "unknown" outside one."""
    top = _git(repo, "rev-parse", "--show-toplevel")
    # an installed package may sit inside some unrelated repository: only its own checkout counts
    if top is None or Path(top.decode().strip()).resolve() != Path(repo).resolve():
        return {"commit": UNKNOWN, "dirty": None}
    head = _git(repo, "rev-parse", "HEAD")
    if head is None:
        return {"commit": UNKNOWN, "dirty": None}  # a repository without commits
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status.strip())
    out: dict[str, Any] = {"commit": head.decode().strip(), "dirty": dirty}
    if dirty:
        diff = _git(repo, "diff", "HEAD", "--binary")
        out["diff_sha256"] = hashlib.sha256(diff).hexdigest()[:16] if diff is not None else UNKNOWN
    return out


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


@functools.lru_cache(maxsize=None)
def _static() -> dict[str, Any]:
    import torch

    from bnstudy import __version__

    return {
        "bnstudy": __version__,
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
    }


@functools.lru_cache(maxsize=None)
def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def provenance(device: Any = "cpu") -> dict[str, Any]:
    """The record for summary.json: code identity, versions, machine, device name and torch's thread count now."""
    import torch

    from bnstudy import threads

    return {
        **_static(),
        "device_name": _device_name(str(device)),
        "threads": torch.get_num_threads(),  # results are bit-identical only at the same thread count
        "threads_why": threads.current().why if threads.current() else "torch's default (no bnstudy build step ran)",
        "code": current_code(),
    }


def stale_files(summary: dict[str, Any], current: dict[str, Any] | None = None) -> list[str] | None:
    """Training files that differ between the code a run recorded and ``current`` (this process's code).

    None when the run recorded no code fingerprint (trained before provenance
    was recorded): its code is unknown, not known to differ.
    """
    code = (summary.get("provenance") or {}).get("code") if isinstance(summary.get("provenance"), dict) else None
    if not isinstance(code, dict) or not isinstance(code.get("fingerprint"), str):
        return None
    current = current or current_code()
    if code["fingerprint"] == current["fingerprint"]:
        return []
    then, now = code.get("files") or {}, current["files"]
    changed = sorted(f for f in set(then) | set(now) if then.get(f) != now.get(f))
    return changed or ["(fingerprint differs)"]


def commit_label(summary: dict[str, Any]) -> str:
    """Short commit of a run (``abc1234``, ``abc1234+dirty``), or "unknown" when none was recorded."""
    prov = summary.get("provenance")
    commit = prov.get("commit") if isinstance(prov, dict) else None
    if not isinstance(commit, str) or commit == UNKNOWN:
        return UNKNOWN
    return commit[:7] + ("+dirty" if prov.get("dirty") else "")
