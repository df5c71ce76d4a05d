"""In-memory datasets: a pair of tensors, and a train/test split with its metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from toroid.errors import InvalidArgumentError


@dataclass(frozen=True)
class TensorData:
    """Inputs `x` (N, ...) and integer class labels `y` (N,), kept in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise InvalidArgumentError(
                f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]}; they must match"
            )
        if self.y.dim() != 1:
            raise InvalidArgumentError(
                f"y must be 1-D class labels, got shape {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: str | torch.device) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device))

    def subset(self, indices: torch.Tensor) -> TensorData:
        return TensorData(self.x[indices], self.y[indices])


DataLike = TensorData | tuple[torch.Tensor, torch.Tensor]


def as_tensor_data(data: DataLike) -> TensorData:
    """Accept a `TensorData` or a plain `(x, y)` tuple, as every toroid function does."""
    if isinstance(data, TensorData):
        return data
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        return TensorData(data[0], data[1])
    raise InvalidArgumentError(
        f"data must be a TensorData or an (x, y) tuple of tensors, got {type(data).__name__}"
    )


@dataclass(frozen=True)
class Split:
    """A dataset as loaded: `train` and `test` in memory, and `meta` describing them.

    `meta` holds at least: name, input_shape, num_classes, train_size, test_size, seed,
    normalization (mean/std per channel, computed on the training inputs) and source.
    """

    train: TensorData
    test: TensorData
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.meta["input_shape"])

    def to(self, device: str | torch.device) -> Split:
        return Split(self.train.to(device), self.test.to(device), self.meta)
