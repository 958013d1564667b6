"""How a value is written in run names, figure labels and report tables: one rule for all of them."""
from __future__ import annotations

import numbers
from typing import Any


def fmt(v: Any, digits: int = 6, missing: str | None = None, whole_above: float | None = None) -> str:
    """``v`` as text: a non-integer number in ``%g`` with ``digits`` significant digits, anything else by ``str``.

    ``fmt(0.5) == "0.5"``, ``fmt(1e-05) == "1e-05"``, ``fmt(60) == "60"``. With
    ``missing``, None, NaN and pandas' NA read that instead; with ``whole_above``,
    numbers at least that large are written whole (``12345``, not ``1.234e+04``).
    """
    if missing is not None and _missing(v):
        return missing
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
        if whole_above is not None and abs(v) >= whole_above:
            return f"{v:.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN is the one value unequal to itself
    except TypeError:  # pandas' NA: a comparison with it is NA, which has no truth value
        return True
