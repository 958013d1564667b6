"""Holding a Ctrl-C while heavy modules load (torch, Hydra, a plugin): the press is raised once they have.

Standard library only, at the bottom of the package, so that every layer may hold a press
(:mod:`bnstudy.startup` around the app's imports, :mod:`bnstudy.plugins` around a plugin's).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C while heavy modules load; raise it as KeyboardInterrupt once they have.

    Only where Python's own handler is installed, in the main thread (elsewhere it is a no-op), or where
    ``bnstudy/__init__.py`` has held SIGINT since the process started (``bnstudy-train``): a press it noted counts too.
    """
    current = signal.getsignal(signal.SIGINT)
    early = getattr(current, "pressed", None) if getattr(current, "__module__", None) == "bnstudy" else None
    # held since bnstudy's first line (bnstudy/__init__.py): a press noted there counts too
    pressed: list[int] = early if isinstance(early, list) else []
    hold = threading.current_thread() is threading.main_thread() and (current is signal.default_int_handler or early is not None)
    if hold:
        signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))
    try:
        yield
    finally:
        if hold:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt
