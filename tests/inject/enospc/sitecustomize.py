"""Loaded (through PYTHONPATH) only by the disk-full tests: writes to chosen files fail with ENOSPC.

``BNSTUDY_INJECT_ENOSPC="PATTERN:K;..."``: from the K-th time a file whose name matches
PATTERN (fnmatch) is opened for writing, every write to it raises ``OSError(ENOSPC)``, as
on a full disk. Works without root or a small filesystem: Python's ``open`` is replaced,
and ``torch.save`` to a path is routed through it.
"""
import builtins
import errno
import fnmatch
import io
import os

_RULES = []
for item in filter(None, os.environ.get("BNSTUDY_INJECT_ENOSPC", "").split(";")):
    pattern, _, k = item.rpartition(":")
    _RULES.append([pattern, int(k), 0])  # pattern, first failing open, opens seen
_open = builtins.open


class _Full:
    """A file whose writes fail as on a full disk; everything else is the real file's."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _injected_open(file, mode="r", *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        name = os.path.basename(os.fsdecode(file))
        for rule in _RULES:
            if fnmatch.fnmatch(name, rule[0]):
                rule[2] += 1
                if rule[2] >= rule[1]:
                    return _Full(f)
    return f


def _save_through_open(save):
    def saved(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):  # torch writes a path with its own C++ file: route it through open()
            with open(f, "wb") as fh:
                return save(obj, fh, *args, **kwargs)
        return save(obj, f, *args, **kwargs)

    return saved


if _RULES:
    builtins.open = io.open = _injected_open  # before anything imports logging, which keeps a reference to open
    import torch

    torch.save = _save_through_open(torch.save)
