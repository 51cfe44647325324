"""Argument checks shared by models, strategies and the command line, so
that each rule and its message live in one place."""

import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["check_positive", "check_count", "warn_caller", "without_no_logger_warning"]

# Frames of these packages (and of functools' wrappers, which Avalanche's and
# our constructors go through) are not the user's line.
_LIBRARY_PREFIXES = ("piggyback_avalanche", "avalanche", "functools", "torch")


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, pointing at the first line outside this package, Avalanche,
    torch and functools: the user's own line, however deeply wrapped the
    call that warns is."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _LIBRARY_PREFIXES:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


@contextmanager
def without_no_logger_warning() -> Iterator[None]:
    """Silence Avalanche's "No loggers specified" warning while an
    evaluation plugin is built for a caller who asked for no logger
    (``evaluator=None``, or metrics read with ``get_last_metrics``): it would
    otherwise repeat once per strategy built."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning)
        yield


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
