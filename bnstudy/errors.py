"""Errors that reach the user as one clear line (no traceback), and what an exception's chain of causes holds."""
from __future__ import annotations

import errno
from typing import Iterator


# a Ctrl-C before the first training step, from start-up (bnstudy.startup) to data loading (bnstudy.cli.app)
INTERRUPTED_AT_START = "interrupted before training began; run the same command to start again"


class BnstudyError(Exception):
    """Base of the errors bnstudy reports as a single line saying what to do."""


class ConfigError(BnstudyError):
    """An impossible or unknown configuration value."""


class DataError(BnstudyError):
    """A dataset that cannot be found, read or trusted."""


class CheckpointError(BnstudyError):
    """A run folder's checkpoint that cannot be resumed from (corrupt, foreign or not a bnstudy checkpoint)."""


def causes(e: BaseException | None) -> Iterator[BaseException]:
    """``e``, then what caused it (``__cause__``, else ``__context__``), and so on; each exception once."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def no_space(e: BaseException) -> bool:
    """Whether a full disk (ENOSPC) is somewhere in ``e``'s chain of causes (torch's writer wraps it in a RuntimeError)."""
    return any(isinstance(x, OSError) and x.errno == errno.ENOSPC for x in causes(e))
