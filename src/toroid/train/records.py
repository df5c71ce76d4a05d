"""What training reports: per-epoch records, per-network results, and the seeds of a run's
independent random streams."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from toroid.evaluate import Metrics

StopReason = Literal["zero-train-error", "epochs"]


def derive_seed(seed: int, purpose: str) -> int:
    """Independent seeds for independent random streams of one run."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: running (train-mode, as the minibatches were seen) loss and error, the
    eval-mode training error when it was checked, time, and cumulative gradient evaluations."""

    epoch: int
    lr: float
    train_loss: float
    train_error: float
    eval_train_error: float | None
    seconds: float
    grad_evals: int


@dataclass(frozen=True)
class TrainResult:
    """A trained model (a new object; the input model is untouched) and how it got there.
    Final metrics are eval-mode, on the un-augmented training and test sets. `stopped_by`
    says why training ended: the first epoch with zero eval-mode training error, or the
    last planned epoch."""

    model: nn.Module
    history: tuple[EpochRecord, ...]
    train: Metrics
    test: Metrics | None
    epochs: int
    reached_zero_train_error: bool
    wall_time: float
    grad_evals: int
    optimizer: Mapping[str, Any]
    seed: int
    stopped_by: StopReason = "epochs"

    @property
    def train_error(self) -> float:
        return self.train.error

    @property
    def test_error(self) -> float | None:
        return None if self.test is None else self.test.error
