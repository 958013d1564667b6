"""``python -m bnstudy.train``: the same as ``bnstudy-train``."""
from bnstudy.cli import train

train()
