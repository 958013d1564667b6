"""``python -m bnstudy.train``: the same as ``bnstudy-train``."""
from bnstudy.startup import main

main()
