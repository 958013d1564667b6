"""The ``bnstudy-train`` entry point before its heavy imports: a Ctrl-C while torch and Hydra load is one line.

Only the standard library is imported here. A SIGINT during the imports is held
until they finish (a KeyboardInterrupt raised inside torch's C++ start-up can
abort the interpreter), then reported as one line with exit code 130. The hold
begins at the first line of ``bnstudy/__init__.py``, when that line runs in
``bnstudy-train`` (or ``python -m bnstudy.train``); what comes before it is
Python's own start-up (docs/faults.md measures it). torch itself is loaded
later, by the first job that trains (:mod:`bnstudy.cli.job`), under the same hold.
"""
from __future__ import annotations

import os
import sys

from bnstudy.errors import INTERRUPTED_AT_START
from bnstudy.sigint import sigint_held


def main() -> None:
    """``bnstudy-train`` and ``python -m bnstudy.train``: import the app with Ctrl-C held, then run it."""
    try:
        with sigint_held():
            from bnstudy.cli import train
        try:
            train()  # from here the app reports a Ctrl-C itself; one between two of its statements still ends here
        finally:
            sys.stdout.flush()  # here, not at exit, where a closed pipe is an "Exception ignored" traceback
    except KeyboardInterrupt:
        print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader stopped early (``bnstudy-train --help | head``): it has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
