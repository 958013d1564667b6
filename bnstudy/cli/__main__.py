"""``python -m bnstudy.cli``: the same as ``bnstudy-train``."""
from bnstudy.cli import train

train()
