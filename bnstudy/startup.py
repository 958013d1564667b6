"""The ``bnstudy-train`` entry point before its heavy imports: a Ctrl-C while torch and Hydra load is one line.

Only the standard library is imported here. A SIGINT during the imports is held
until they finish (a KeyboardInterrupt raised inside torch's C++ start-up can
abort the interpreter), then reported as one line with exit code 130.
"""
from __future__ import annotations

import signal
import sys
import threading

from bnstudy.errors import INTERRUPTED_AT_START


def main() -> None:
    """``bnstudy-train`` and ``python -m bnstudy.train``: import the app with Ctrl-C held, then run it."""
    pressed: list[int] = []
    hold = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if hold:
        signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))
    try:
        from bnstudy.cli import train
    finally:
        if hold:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        print(INTERRUPTED_AT_START, file=sys.stderr)
        sys.exit(130)
    train()
