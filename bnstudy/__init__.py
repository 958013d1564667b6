"""bnstudy: why does BatchNorm standardize before its learnable affine map? Measured."""

import _signal  # the C module, loaded with the interpreter: importing it runs no Python code a Ctrl-C could interrupt
import sys


def _hold_ctrl_c(signum, _frame) -> None:
    """SIGINT's handler from bnstudy's first line to :func:`bnstudy.startup.main` when ``bnstudy-train`` starts: notes the
    press in its ``pressed`` list, which ``main`` then reports as one line (a KeyboardInterrupt in these imports would be
    a traceback)."""
    _hold_ctrl_c.pressed.append(signum)


_hold_ctrl_c.pressed = []


def _starts_training() -> bool:
    """Whether this process is ``bnstudy-train`` (or ``python -m bnstudy.train`` / ``bnstudy.cli``) starting up."""
    if sys.argv[:1] != ["-m"]:  # runpy names the module's file only once its packages are imported
        return sys.argv[0].rsplit("/", 1)[-1] == "bnstudy-train" if sys.argv else False
    orig = getattr(sys, "orig_argv", [])
    return any(a == "-m" and b in ("bnstudy.train", "bnstudy.cli") for a, b in zip(orig, orig[1:]))


# First, before any other import: Ctrl-C is held from here until bnstudy.startup.main takes over (in the main thread
# only, where Python's own handler is installed; a launcher that ignores SIGINT keeps it ignored).
if _starts_training() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    try:
        _signal.signal(_signal.SIGINT, _hold_ctrl_c)
    except ValueError:  # not the main thread: signals are not ours to hold there
        pass

from bnstudy.threads import prepare_openmp  # noqa: E402

__version__ = "0.1.0"

# before any torch import of ours: OpenMP reads its wait policy once, when torch loads (see bnstudy.threads)
prepare_openmp()
