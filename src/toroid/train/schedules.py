"""Learning-rate schedules as a factor of the base rate, a pure function of progress."""

from __future__ import annotations

import math
from typing import Literal

from toroid.errors import InvalidArgumentError

Schedule = Literal["constant", "cosine", "step"]
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
STEP_MILESTONES = (0.5, 0.75)  # fractions of training at which `step` divides the rate by 10


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(
            f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
        )


def lr_factor(schedule: Schedule, step: int, total_steps: int) -> float:
    """The multiplier of the base learning rate at `step` (0-based) of `total_steps`."""
    check_schedule(schedule)
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** sum(progress >= m for m in STEP_MILESTONES)
    return 1.0
