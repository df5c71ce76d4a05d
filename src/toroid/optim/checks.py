"""Hyperparameter checks shared by the optimizers: one-line errors naming the bad value."""

from __future__ import annotations

import math
from typing import Any

from toroid.errors import InvalidArgumentError


def number(name: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    """`value` as a finite float >= `low` (> `low` when `strict`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise InvalidArgumentError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def fraction(name: str, value: Any, *, closed: bool = True) -> float:
    """`value` as a float in [0, 1] ([0, 1) unless `closed`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (0.0 <= value <= 1.0) or (not closed and value == 1.0):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise InvalidArgumentError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def count(name: str, value: Any, *, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be true or false, got {value!r}")
    return value
