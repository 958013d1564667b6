"""Where prepared data and the offline mirror live (``BNSTUDY_DATA_DIR``, ``BNSTUDY_DATA_MIRROR``)."""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The source checkout holding this package (or the working directory when installed elsewhere)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def data_dir() -> Path:
    """The prepared data folder: ``$BNSTUDY_DATA_DIR`` or ``data/`` in the project."""
    env = os.environ.get("BNSTUDY_DATA_DIR")
    return Path(env).expanduser() if env else project_root() / "data"


def mirror_dir() -> Path | None:
    """The offline mirror folder, if ``$BNSTUDY_DATA_MIRROR`` is set."""
    env = os.environ.get("BNSTUDY_DATA_MIRROR")
    return Path(env).expanduser() if env else None
