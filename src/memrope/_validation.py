"""Checks of plain arguments shared by the whole package (a leaf module: imports nothing of memrope)."""

from __future__ import annotations

import numbers

__all__ = ["as_int", "check_int"]


def as_int(value: object) -> int | None:
    """``value`` as an ``int`` when it is an integer (``int``, NumPy integers; never ``bool``), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_int(value: object, name: str, minimum: int = 1, meaning: str = "") -> int:
    """``value`` as an ``int >= minimum``, else a ``ValueError`` naming ``name`` (and what it counts).

    >>> check_int(3, "chunk_frames")
    3
    >>> check_int(0, "num_layers", meaning="the model's block count")
    Traceback (most recent call last):
    ValueError: num_layers must be an int >= 1 (the model's block count), got 0
    """
    number = as_int(value)
    if number is None or number < minimum:
        what = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be an int >= {minimum}{what}, got {value!r}")
    return number
