"""The folders a command made, so that one which trains nothing (bad input, a Ctrl-C before training, a damaged pack)
leaves none of them behind.

Hydra creates the run folder (``out_dir/NAME/seedN``, with every missing folder above it) and a sweep's ``out_dir``
before any job can look at its values. The run-name resolver and the sweep callback note here, just before that,
which folders do not exist yet; a command that ends without training removes those of them that are still empty.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

_made: set[Path] = set()


def note_missing(path: str | Path) -> None:
    """Remember the folders of ``path`` (itself and those above it) that do not exist yet."""
    p = Path(os.path.abspath(path))
    for q in (p, *p.parents):
        if q.exists():
            break
        _made.add(q)


def remove_made() -> None:
    """Remove the noted folders that are empty now, deepest first (one holding anything stays, and so do those above it)."""
    for q in sorted(_made, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            q.rmdir()
    _made.clear()
