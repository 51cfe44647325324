"""Argument checks shared by models, strategies and the command line, so
that each rule and its message live in one place."""

import math
from typing import Any

__all__ = ["check_positive", "check_count"]


def check_positive(name: str, value: Any) -> None:
    """Refuse anything but a positive finite number.

    :raises ValueError: naming the argument and the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def check_count(name: str, value: Any, *, minimum: int = 1) -> None:
    """Refuse anything but an ``int`` of at least ``minimum``.

    :raises ValueError: naming the argument and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}.")
