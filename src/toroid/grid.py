"""The one parser of a grid of numbers written as text (noise levels, flip probabilities):
`start:stop:count` or a comma list, for the command line and the study config alike."""

from __future__ import annotations

import math

from toroid.errors import InvalidArgumentError

GRID_FORMS = (
    "start:stop:count (count evenly spaced values, both ends included, e.g. 0:0.5:11) "
    "or a comma list (e.g. 0,0.1,0.2)"
)


def parse_grid(text: str, *, name: str = "grid") -> tuple[float, ...]:
    """The values of `text`: `start:stop:count` or a comma-separated list.

    `start:stop:count` gives value i = start + (stop - start) * i / (count - 1), with the
    last one exactly `stop` (and a single value, `start`, when count is 1). Unlike
    `numpy.linspace`, which adds i times a rounded step, this gives round numbers where
    they are expected: 0:0.5:11 has exactly 0.15 and 0.3, not 0.15000000000000002 and
    0.30000000000000004. Values must be finite; their order and range are the caller's
    to check. `name` (e.g. "--sigmas") names the setting in the one-line
    `InvalidArgumentError` that bad input raises."""
    bad_syntax = InvalidArgumentError(f"{name} must be {GRID_FORMS}, got {text!r}")
    parts = [p.strip() for p in text.split(":")] if ":" in text else None
    if parts is not None and len(parts) != 3:
        raise bad_syntax
    try:
        if parts is not None:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        else:
            values = tuple(float(p.strip()) for p in text.split(","))
    except ValueError as exc:  # float() / int() of a malformed item, or an empty one
        raise bad_syntax from exc
    if parts is not None:
        if count < 1:
            raise InvalidArgumentError(f"{name} {text!r}: count must be at least 1, got {count}")
        if not (math.isfinite(start) and math.isfinite(stop)):
            raise InvalidArgumentError(f"{name} must be finite numbers, got {text!r}")
        if count == 1:
            return (start,)
        # Pinned: start + (stop - start) can round away from stop (0.1:0.41 gives 0.40999...).
        values = (*(start + (stop - start) * i / (count - 1) for i in range(count - 1)), stop)
    if any(not math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"{name} must be finite numbers, got {text!r}")
    return values


__all__ = ["GRID_FORMS", "parse_grid"]
