"""Which datasets a flatness measurement evaluates on."""

from __future__ import annotations

from typing import Literal

from toroid.data.tensordata import DataLike, Split, TensorData, as_tensor_data
from toroid.errors import InvalidArgumentError

SplitName = Literal["train", "test", "both"]


def measured_parts(data: Split | DataLike, split: SplitName) -> dict[str, TensorData]:
    """The datasets a measurement evaluates on: {"train": ...}, {"test": ...} or both."""
    if split not in ("train", "test", "both"):
        raise InvalidArgumentError(f"split must be train, test or both, got {split!r}")
    if isinstance(data, Split):
        train, test = data.train, data.test
    else:
        train, test = as_tensor_data(data), None
    if split in ("test", "both") and test is None:
        raise InvalidArgumentError(
            f"split={split!r} needs a Split with test data; got training data only"
        )
    parts = {"train": train} if split in ("train", "both") else {}
    if split in ("test", "both"):
        assert test is not None
        parts["test"] = test
    return parts
