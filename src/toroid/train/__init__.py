"""Training: `fit` and its results."""

from toroid.train.fit import EpochRecord, TrainResult, derive_seed, fit
from toroid.train.schedules import SCHEDULES, lr_factor

__all__ = ["SCHEDULES", "EpochRecord", "TrainResult", "derive_seed", "fit", "lr_factor"]
