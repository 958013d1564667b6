"""Where a result came from: the code (git commit, dirty flag, a fingerprint of the training code) and the machine.

Every ``summary.json`` holds :func:`provenance` under ``"provenance"``. The run
hash covers the config only, so a run trained by older code keeps its folder
name; the fingerprint is what tells it apart: :func:`stale_files` names the
training-code files (those that can change a logged number) that changed since
the run was trained. Whether the numbers actually changed is what
``bnstudy-runs --reproduce`` (:mod:`bnstudy.reproduce`) checks.
"""
from __future__ import annotations

import functools
import hashlib
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
# The package's files that cannot change a logged number, each with the reason. Every other
# Python file counts as training code, so a new module marks runs stale until it is listed
# here: a missed entry costs a needless retrain, never a silently different result. A name
# ending in "/" is a folder; any other name also covers files it begins (bench -> bench_*.py).
NOT_TRAINING: dict[str, str] = {
    "__init__.py": "the version string, and Ctrl-C held from the first line of bnstudy-train",
    "analysis/": "reads finished runs",
    "archive.py": "packs and reads finished runs",
    "archive_write.py": "packs and unpacks finished runs",
    "checks.py": "rejects bad values and foreign checkpoints before training; accepted runs train as before",
    "bench": "times the loop; its runs are not kept",
    "cli": "the Hydra entry point: composes the config (recorded in config.yaml), skips, locks, signals",
    "devices.py": "which device a job gets and its time budget (the device is recorded in the summary)",
    "errors.py": "exception classes and their messages",
    "flops.py": "counts a model's FLOPs on the meta device, for the thread policy and the bench",
    "fmt.py": "how values are written in run names, labels and tables",
    "plugins.py": "imports the modules a run names in plugins=[...]; their own files are fingerprinted, as plugin:<file>",
    "provenance.py": "this record",
    "reproduce.py": "re-trains committed runs in a temporary folder",
    "sigint.py": "holds a Ctrl-C while modules load",
    "runs.py": "run-folder files: metrics.csv and summary.json writing and checks, locks",
    "runs_cli.py": "bnstudy-runs and bnstudy-report",
    "search.py": "bnstudy-search: picks the rates; its runs train through the job bnstudy-train runs",
    "startup.py": "the bnstudy-train entry point (holds Ctrl-C while imports load)",
    "sweep_log.py": "keeps each sweep's command beside its runs",
    "threads.py": "the thread-count policy; the count a run used is recorded (provenance.threads)",
    "trackers.py": "logs finished values to external trackers; reads, never changes, training",
    "train/__main__.py": "python -m bnstudy.train",
    "transfer.py": "moves finished run folders between machines",
}
UNKNOWN = "unknown"

# Code that was reorganised without changing a number. A run that recorded every hash of
# ``before`` is taken to have recorded ``after`` instead, so moving code from one file to
# others does not make every run stale. An entry is added only after `bnstudy-runs DIR
# --reproduce` showed the committed runs bit-identical under the new code; it names that check.
# (before: {"bnstudy/<path>": sha256[:12]}, after: the same for the new files, the check)
EQUIVALENT: list[tuple[dict[str, str], dict[str, str], str]] = [
    (
        # the training code of the committed runs (fingerprints d732f8a8f69215e3, ffef59a456fb3d11) ...
        {
            "bnstudy/config.py": "82fccff35cf7", "bnstudy/data/__init__.py": "9337207ad222",
            "bnstudy/norm/__init__.py": "cf28422692cf", "bnstudy/norm/variants.py": "d3119400ea6e",
            "bnstudy/probes.py": "ebec973dd2e5", "bnstudy/train/__init__.py": "a999af904390",
            "bnstudy/train/loop.py": "a464f2023c0e",
        },
        # ... split into the loop's spine, the norm registry and the data readers (2026-12-01)
        {
            "bnstudy/config.py": "ad9370470203", "bnstudy/data/__init__.py": "4a16f0082ada",
            "bnstudy/data/compact.py": "1298cfc0a2e6", "bnstudy/data/jpeg.py": "d7b85e17ca73",
            "bnstudy/data/paths.py": "3fb3f33147fb", "bnstudy/norm/__init__.py": "630fd3c5566c",
            "bnstudy/norm/basic.py": "44c69061f9e0", "bnstudy/norm/registry.py": "95563fda2c3e",
            "bnstudy/norm/variants.py": "24a438d17af4", "bnstudy/train/__init__.py": "8114e2524efc",
            "bnstudy/train/build.py": "38e268abd14d", "bnstudy/train/checkpoint.py": "06db7e5c3cd9",
            "bnstudy/train/hooks.py": "7d97a94c7d16", "bnstudy/train/lifecycle.py": "27013355e579",
            "bnstudy/train/loop.py": "e3b4e7e74ccf", "bnstudy/train/precise_bn.py": "afc3cc38a94f",
            "bnstudy/train/probes.py": "8c567ce2e3c4", "bnstudy/train/snapshot.py": "0749a5761876",
            "bnstudy/train/state.py": "9c57c0238a22",
        },
        "bnstudy-runs results/<study> --reproduce 5 --steps 300 on the MLP, CNN, VGG and ResNet studies: "
        "every sampled run bit-identical on the CPU (closing note of 2026-12-01)",
    ),
    (
        # the 2026-12-01 layout above, as the committed runs map to it ...
        {
            "bnstudy/norm/registry.py": "95563fda2c3e", "bnstudy/norm/variants.py": "24a438d17af4",
            "bnstudy/train/__init__.py": "8114e2524efc", "bnstudy/train/build.py": "38e268abd14d",
            "bnstudy/train/hooks.py": "7d97a94c7d16", "bnstudy/train/lifecycle.py": "27013355e579",
            "bnstudy/train/loop.py": "e3b4e7e74ccf", "bnstudy/train/precise_bn.py": "afc3cc38a94f",
            "bnstudy/train/probes.py": "8c567ce2e3c4", "bnstudy/train/state.py": "9c57c0238a22",
        },
        # ... after the stop classes moved to train/stops.py (2026-12-02), and with train.amp on any device
        # (train/precision.py), bn_center and bn_scale, centering and scaling declared apart, and adamw (2026-12-03)
        {
            "bnstudy/norm/registry.py": "a774ef462065", "bnstudy/norm/variants.py": "e9e4de96cfc4",
            "bnstudy/train/__init__.py": "5c2a19aa7e33", "bnstudy/train/build.py": "3f92db397a9d",
            "bnstudy/train/hooks.py": "8d99710e7722", "bnstudy/train/lifecycle.py": "fe90a432e3b8",
            "bnstudy/train/loop.py": "2ad08ccc7eb4", "bnstudy/train/precise_bn.py": "b837bb73838f",
            "bnstudy/train/precision.py": "38f10392d34f", "bnstudy/train/probes.py": "092f0dc4d08d",
            "bnstudy/train/state.py": "1ff5fc2b2e31", "bnstudy/train/stops.py": "d26e21e8f209",
        },
        "bnstudy-runs results/<study> --reproduce 2 on ioffe_mnist (300 steps), skipinit, vgg_tuned, fashion_tuned, "
        "landscape (100) and norm_family (200): 12 of 12 bit-identical on the CPU; and decompose/mlp's 18 bn/affine/none "
        "runs bit-identical to effective_lr's committed runs of the same names, every logged value (2026-12-03)",
    ),
    (
        # train.amp on any device as first committed (e13bf2f, the resnet_full runs) ...
        {
            "bnstudy/norm/registry.py": "95563fda2c3e", "bnstudy/norm/variants.py": "24a438d17af4",
            "bnstudy/train/build.py": "0a56d6ec91b9", "bnstudy/train/precise_bn.py": "8577811ad628",
            "bnstudy/train/probes.py": "fa464e745002",
        },
        # ... with bn_center and bn_scale, centering and scaling declared apart, and adamw (2026-12-03)
        {
            "bnstudy/norm/registry.py": "a774ef462065", "bnstudy/norm/variants.py": "e9e4de96cfc4",
            "bnstudy/train/build.py": "3f92db397a9d", "bnstudy/train/precise_bn.py": "b837bb73838f",
            "bnstudy/train/probes.py": "092f0dc4d08d",
        },
        "bnstudy-runs results/resnet_full/select --reproduce 1 --steps 100: bit-identical in bf16 + channels_last on the CPU "
        "(2026-12-03)",
    ),
    (
        # the run folder's lifecycle as the resnet_full rungs and the optimizer and decompose studies recorded it ...
        {"bnstudy/train/lifecycle.py": "fe90a432e3b8"},
        # ... keeping which machine trained which steps (provenance.segments; 2026-12-04)
        {"bnstudy/train/lifecycle.py": "af9f10ffe10e"},
        "bnstudy-runs results/<study> --reproduce 2 on decompose/mlp and optimizer/cnn (300 steps): 4 of 4 "
        "bit-identical on the CPU (2026-12-04)",
    ),
    (
        # train/precision.py before 8341ae60 (2026-12-03), as 1,152 committed runs recorded it ...
        {"bnstudy/train/precision.py": "38f10392d34f"},
        # ... with check() refusing train.channels_last for a ResNet narrower than 8 on a CPU: an accepted run runs none of it
        {"bnstudy/train/precision.py": "87eef4ce4f1e"},
        "bnstudy-runs results/<study> --reproduce N under 2d9494f8 and under 2d9494f8 with the precision.py before 8341ae60, "
        "on an Intel Xeon (AVX-512, AMX bf16), 2026-12-07: ioffe_mnist 2 and fashion_tuned 2 (300 steps), optimizer/cnn 1 "
        "(300), vgg_tuned 2, skipinit 2, decompose/resnet 1 and resnet_full/select 2 (bf16 + channels_last) at 100 steps: "
        "12 of 12 lines the same under both codes, value for value. Against the committed values (AMD EPYC) the MLPs are "
        "bit-identical or within 7e-8 and the conv nets differ from step 50-100 under both codes alike: the CPU's "
        "kernels, not the change (docs/determinism.md)",
    ),
    (
        # the training code at 2d9494f8, as every committed run maps to it ...
        {
            "bnstudy/config.py": "ad9370470203", "bnstudy/data/__init__.py": "4a16f0082ada",
            "bnstudy/models/__init__.py": "e3fa35874548", "bnstudy/models/init.py": "fcd2e929120a",
            "bnstudy/norm/registry.py": "a774ef462065", "bnstudy/train/build.py": "3f92db397a9d",
            "bnstudy/train/lifecycle.py": "af9f10ffe10e", "bnstudy/train/probes.py": "092f0dc4d08d",
        },
        # ... with optim.norm_decay / norm_lr_scale, model.init=fixup and model.branch_gate, plugins, data.train_size on
        # every dataset, the default eval grid, the trackers' keys and the probes' block gains (2026-12-07)
        {
            "bnstudy/config.py": "b47d65f7da28", "bnstudy/data/__init__.py": "531e69ee91ba",
            "bnstudy/models/__init__.py": "13562ad668d3", "bnstudy/models/init.py": "bc2f6edabec9",
            "bnstudy/norm/registry.py": "a049d71f8f4e", "bnstudy/train/build.py": "311924945e00",
            "bnstudy/train/lifecycle.py": "cf001e5dd2c4", "bnstudy/train/probes.py": "ac32e6c21418",
        },
        "bnstudy-runs results/<study> --reproduce N under 2d9494f8 and under the new code, on an Intel Xeon (AVX-512, AMX "
        "bf16), 2026-12-07: ioffe_mnist 2 (300 steps; bit-identical or within 7e-8 of the committed values under both), "
        "fashion_tuned 1 (300), vgg_tuned 1, skipinit 1, resnet_full/mid 1 (fp32) and resnet_full/select 1 (bf16) at 100 "
        "steps: 7 of 7 lines the same under both codes, value for value (the conv nets differ from their AMD-trained "
        "values alike under both: the CPU's kernels)",
    ),
    (
        # bnstudy/config.py as results/mnist_search's runs recorded it (trained mid-way through the change above) ...
        {"bnstudy/config.py": "f9f993963bca"},
        {"bnstudy/config.py": "b47d65f7da28"},
        "bnstudy-runs results/mnist_search --reproduce 2: 2 of 2 bit-identical under the new code (2026-12-07)",
    ),
    (
        # the code of 662b5cde, as results/vgg_fair's first runs recorded it ...
        {"bnstudy/config.py": "107678d7d9ba", "bnstudy/data/__init__.py": "4a16f0082ada", "bnstudy/train/probes.py": "092f0dc4d08d"},
        {"bnstudy/config.py": "b47d65f7da28", "bnstudy/data/__init__.py": "531e69ee91ba", "bnstudy/train/probes.py": "ac32e6c21418"},
        "bnstudy-runs <two of those runs> --reproduce 2 --steps 250 under the new code: 2 of 2 bit-identical "
        "(vgg_fair bn lr 0.05 and affine lr 0.02, seed 0; optim.norm_decay=false; 2026-12-07)",
    ),
]  # fmt: skip


def is_training(rel: str) -> bool:
    """Whether the package file ``rel`` (e.g. ``train/loop.py``, or ``bnstudy/train/loop.py``) can change a logged number."""
    rel = rel.removeprefix("bnstudy/")
    return not any(rel == x or rel.startswith(x) for x in NOT_TRAINING)


def training_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The package's Python files that can change a training result (all but :data:`NOT_TRAINING`), sorted."""
    files = []
    for p in sorted(Path(package_dir).rglob("*.py")):
        rel = p.relative_to(package_dir).as_posix()
        if "__pycache__" not in rel and is_training(rel):
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


# What "dirty" looks at: the whole checkout but results/, where runs write (a sweep appends to a committed
# study's sweeps.log and multirun.yaml, which says nothing about the code that trained it)
CODE_PATHS = (".", ":(exclude)results/")


@functools.lru_cache(maxsize=None)
def git_state(repo: Path = PACKAGE_DIR.parent) -> dict[str, Any]:
    """``commit``, ``dirty`` and (when dirty) ``diff_sha256`` of the checkout holding the package; "unknown" outside one.

    ``dirty`` and the diff cover the tracked files outside ``results/`` (:data:`CODE_PATHS`).
    """
    top = _git(repo, "rev-parse", "--show-toplevel")
    # an installed package may sit inside some unrelated repository: only its own checkout counts
    if top is None or Path(top.decode().strip()).resolve() != Path(repo).resolve():
        return {"commit": UNKNOWN, "dirty": None}
    head = _git(repo, "rev-parse", "HEAD")
    if head is None:
        return {"commit": UNKNOWN, "dirty": None}  # a repository without commits
    status = _git(repo, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    dirty = None if status is None else bool(status.strip())
    out: dict[str, Any] = {"commit": head.decode().strip(), "dirty": dirty}
    if dirty:
        diff = _git(repo, "diff", "HEAD", "--binary", "--", *CODE_PATHS)
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
        # the vector kernels ATen picked (AVX2, AVX512, ...): reductions sum in another order under
        # another width, so CPU results are bit-identical only with the same kernels
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


@functools.lru_cache(maxsize=None)
def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def provenance(device: Any = "cpu", threads_why: str = "torch's default", plugins: Sequence[str] = ()) -> dict[str, Any]:
    """The record for summary.json: code identity, versions, machine, device name, torch's thread count now and why.

    ``plugins``: the run's ``plugins`` entries; their files join the code (as ``plugin:<file>``) and
    where each was found is kept under ``plugins``."""
    import torch

    from bnstudy import plugins as plugin_code

    code = current_code()
    found = plugin_code.load(plugins)
    if found:
        files = {**code["files"], **plugin_code.loaded_code(plugins)}
        code = {"fingerprint": fingerprint(files), "files": files}
    return {
        **_static(),
        "device_name": _device_name(str(device)),
        "threads": torch.get_num_threads(),  # results are bit-identical only at the same thread count
        "threads_why": threads_why,
        "code": code,
        **({"plugins": found} if found else {}),
    }


def recorded_code(summary: dict[str, Any]) -> dict[str, str] | None:
    """The training-file hashes a run recorded, read by today's rule: files now in :data:`NOT_TRAINING`
    left out, :data:`EQUIVALENT` moves applied. None when the run recorded none (trained before
    provenance was recorded)."""
    prov = summary.get("provenance")
    code = prov.get("code") if isinstance(prov, dict) else None
    files = code.get("files") if isinstance(code, dict) else None
    if not isinstance(files, dict):
        return None
    # Only the files both rules count are compared: narrowing the rule marks no run stale.
    files = {f: h for f, h in files.items() if is_training(f)}
    for before, after, _ in EQUIVALENT:
        if before and all(files.get(f) == h for f, h in before.items()):
            files = {f: h for f, h in files.items() if f not in before} | after
    return files


def equivalence(summary: dict[str, Any], current: dict[str, Any] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """An :data:`EQUIVALENT` entry's (before, after) from a run's record to ``current`` (this process's code).

    To be added, with the check that justifies it, only after ``--reproduce``
    showed runs with this record bit-identical under the current code.
    """
    then = recorded_code(summary) or {}
    now = {f: h for f, h in (current or _code_for(summary))["files"].items() if is_training(f)}
    return {f: h for f, h in then.items() if now.get(f) != h}, {f: h for f, h in now.items() if then.get(f) != h}


def _code_for(summary: dict[str, Any]) -> dict[str, Any]:
    """This process's training code, with the plugins the run recorded as their files are on disk now."""
    from bnstudy.plugins import disk_code

    extra = disk_code(summary)
    if not extra:
        return current_code()
    files = {**current_code()["files"], **extra}
    return {"fingerprint": fingerprint(files), "files": files}


def code_version(summary: dict[str, Any]) -> str | None:
    """The fingerprint of a run's training code by today's rule (comparable across runs), or None when unknown."""
    files = recorded_code(summary)
    return None if files is None else fingerprint(files)


def stale_files(summary: dict[str, Any], current: dict[str, Any] | None = None) -> list[str] | None:
    """Training files that differ between the code a run recorded and ``current`` (this process's code).

    A file present on one side only (added, removed or moved since) counts as
    changed. None when the run recorded no code (trained before provenance was
    recorded): its code is unknown, not known to differ.
    """
    then = recorded_code(summary)
    if then is None:
        return None
    now = {f: h for f, h in (current or _code_for(summary))["files"].items() if is_training(f)}
    return sorted(f for f in set(then) | set(now) if then.get(f) != now.get(f))


def commit_label(summary: dict[str, Any]) -> str:
    """Short commit of a run (``abc1234``, ``abc1234+dirty``), or "unknown" when none was recorded."""
    prov = summary.get("provenance")
    commit = prov.get("commit") if isinstance(prov, dict) else None
    if not isinstance(commit, str) or commit == UNKNOWN:
        return UNKNOWN
    return commit[:7] + ("+dirty" if prov.get("dirty") else "")


# What decides a run's rounding besides its code: a run resumed where any of these differ trains its
# later steps with other arithmetic, so bit-identity holds segment by segment, not for the whole run.
MACHINE_KEYS = ("device_name", "cpu_capability", "torch", "threads")


def segments(previous: dict[str, Any] | None, step: int, now: dict[str, Any]) -> list[dict[str, Any]]:
    """Which machine trained which steps: ``[{"from_step": 0, <MACHINE_KEYS>}, ...]``, one entry per change.

    ``previous`` is the summary a resumed run left (None for a fresh start), ``step`` the step it
    resumes from and ``now`` this process's :func:`provenance`. A resume on the same kind of machine
    adds nothing; one on another adds an entry from ``step`` on (replacing an entry that begins
    there: it trained no step). A run whose summary predates this record is taken to have trained
    its earlier steps on the machine that summary names (its last writer).
    """
    here = {k: now.get(k) for k in MACHINE_KEYS}
    if previous is None or step == 0:
        return [{"from_step": 0, **here}]
    past = recorded_segments(previous)
    if past is None:
        prov = previous.get("provenance")
        past = [{"from_step": 0, **{k: prov.get(k) if isinstance(prov, dict) else None for k in MACHINE_KEYS}}]
    past = [p for p in past if int(p.get("from_step", 0)) < step] or past[:1]
    if {k: past[-1].get(k) for k in MACHINE_KEYS} == here:
        return past
    return [*past, {"from_step": step, **here}]


def first_machine(summary: dict[str, Any]) -> dict[str, Any]:
    """The machine that trained a run's first steps (what re-training its first steps must match): the
    first of its :func:`segments`, else its provenance; ``{}`` when it recorded none."""
    prov = summary.get("provenance")
    if not isinstance(prov, dict):
        return {}
    first = (recorded_segments(summary) or [prov])[0]
    return {k: first.get(k) for k in MACHINE_KEYS}


def recorded_segments(summary: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A summary's ``provenance.segments``, or None when it kept none (written before they were kept)."""
    prov = summary.get("provenance") if isinstance(summary, dict) else None
    seg = prov.get("segments") if isinstance(prov, dict) else None
    return seg if isinstance(seg, list) and seg and all(isinstance(p, dict) for p in seg) else None
