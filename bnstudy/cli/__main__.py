"""``python -m bnstudy.cli``: the same as ``bnstudy-train``."""
from bnstudy.startup import main

main()
