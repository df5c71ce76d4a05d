"""`fit`: train a copy of a model on in-memory data, deterministically and resumably; a
population of one (see toroid.train.population)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toroid.data.tensordata import DataLike, Split
from toroid.errors import TrainingDivergedError
from toroid.train.population import Member, _plan, train_population
from toroid.train.records import EpochRecord, TrainResult
from toroid.train.schedules import Schedule


def fit(
    model: nn.Module,
    split: Split | DataLike,
    *,
    optimizer: str | Mapping[str, Any] = "sgd",
    epochs: int,
    batch_size: int | None = None,
    schedule: Schedule = "constant",
    weight_decay: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    stop_at_zero_train_error: bool = True,
    augment: bool = False,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    eval_batch_size: int = 1000,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train a copy of `model` with cross-entropy on `split.train` (a `Split`, or training
    data alone as a `TensorData` or `(x, y)`).

    `optimizer` is a registered name (a preset, see toroid.optim.presets) or a config such
    as `{"name": "sgd", "lr": 0.05}`; `weight_decay`, when given, overrides the config's.
    `batch_size` defaults to the preset's (1024 for sgd-large-batch, else 128). The
    learning rate follows `schedule` per minibatch consumed (optimizers that take several
    minibatches per step advance it by that many); an epoch is one pass over the data.
    Optimizers that follow training progress (ProgressAware) are told it before every step;
    those that leave parameters in the model that its BatchNorm statistics were not gathered
    at (RecomputesBatchNorm) get the statistics re-estimated before every evaluation. With
    `stop_at_zero_train_error`, training stops at the end of the first epoch whose
    eval-mode error on the whole (un-augmented) training set is zero.
    With `checkpoint_dir`, the full training state is saved atomically after every epoch;
    `resume=True` continues from it and ends with the same weights as an uninterrupted
    run. Same seed, same machine: bit-identical weights. A non-finite loss raises
    `TrainingDivergedError`. Progress goes through `toroid.progress` (shown when the CLI or
    the user enabled it).
    """
    plan = _plan(
        Member(
            model,
            optimizer=optimizer,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            schedule=schedule,
            weight_decay=weight_decay,
        ),
        epochs=epochs,
        schedule=schedule,
        stop_at_zero_train_error=stop_at_zero_train_error,
    )
    (result,) = train_population(
        [model],
        [plan],
        split,
        device=device,
        augment=augment,
        engine="loop",
        progress=progress,
        label=f"train {plan.optimizer['name']}",
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        eval_batch_size=eval_batch_size,
        on_epoch_end=None if on_epoch_end is None else lambda _, record: on_epoch_end(record),
    )
    if isinstance(result, TrainingDivergedError):
        raise result
    return result
