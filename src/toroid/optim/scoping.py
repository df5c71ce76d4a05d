"""Scoping: a coupling that grows geometrically during training (Entropy-SGD, rSGD).

Chaudhari et al. (2017) and Pittorino et al. (2021) grow the coupling as
gamma(t) = gamma_0 (1 + r)^t with t the number of updates. toroid names the two ends
instead: gamma goes from `gamma0` at the start to `gamma1` at the end of the planned
training, geometrically in the fraction p of training done,
gamma(p) = gamma0 (gamma1 / gamma0)^p, so that a preset means the same thing whatever the
number of steps. A published rate r over T updates corresponds to
gamma1 = gamma0 (1 + r)^T.
"""

from __future__ import annotations

from typing import Any

from toroid.errors import InvalidArgumentError
from toroid.optim.checks import number


def check_scope(gamma0: Any, gamma1: Any) -> tuple[float, float]:
    """(gamma0, gamma1) as floats with 0 <= gamma0 <= gamma1, gamma0 > 0 when they differ."""
    start, end = number("gamma0", gamma0), number("gamma1", gamma1)
    if end < start:
        raise InvalidArgumentError(
            f"gamma1 (the final coupling) must be >= gamma0 (the initial one), got "
            f"gamma0={start:g}, gamma1={end:g}"
        )
    if start == 0.0 and end > 0.0:
        raise InvalidArgumentError(
            "gamma0 must be > 0 when gamma1 > gamma0 (the coupling grows geometrically "
            f"from gamma0 to gamma1), got gamma0=0, gamma1={end:g}"
        )
    return start, end


def scoped(gamma0: float, gamma1: float, progress: float) -> float:
    """The coupling at `progress` in [0, 1] of training."""
    if gamma0 == gamma1:
        return gamma0
    return float(gamma0 * (gamma1 / gamma0) ** progress)
