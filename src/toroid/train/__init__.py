"""Training: `fit` one network, `fit_population` many of one architecture together, and
their results."""

from toroid.train.fit import fit
from toroid.train.gradients import ENGINES, Engine
from toroid.train.population import Member, fit_population
from toroid.train.records import EpochRecord, StopReason, TrainResult, derive_seed
from toroid.train.schedules import SCHEDULES, lr_factor

__all__ = [
    "ENGINES",
    "SCHEDULES",
    "Engine",
    "EpochRecord",
    "Member",
    "StopReason",
    "TrainResult",
    "derive_seed",
    "fit",
    "fit_population",
    "lr_factor",
]
