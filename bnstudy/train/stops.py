"""How a run stops early: a divergence, or a stop request seen between two steps.

Free of torch, so the command line can catch these before (or without) loading it.
"""
from __future__ import annotations

from dataclasses import dataclass


class Diverged(Exception):
    """Raised by the logging hook when the loss is non-finite or above ``train.diverge_loss``."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class StopRequest:
    """Set from a signal handler (a cluster's time limit, scancel); the loop stops at the next step boundary."""

    reason: str | None = None
    signum: int | None = None
    seen: bool = False  # the loop has stopped for it and is saving: a second Ctrl-C has nothing left to cut short

    def set(self, reason: str, signum: int | None = None) -> None:
        """Ask the loop to stop; the first request's reason is the one recorded."""
        if self.reason is None:
            self.reason, self.signum = reason, signum


class Interrupted(BaseException):
    """A :class:`StopRequest` seen between two steps; the run is checkpointed there, ``status: interrupted``.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` may turn it into a failure.
    """

    def __init__(self, reason: str, step: int):
        super().__init__(f"{reason} at step {step}")
        self.reason, self.step = reason, step
