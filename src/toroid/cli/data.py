"""What several commands read from checkpoints: the dataset a checkpoint was trained on,
and two checkpoints of one architecture."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from toroid import checkpoint
from toroid.data import Split, TensorData, load
from toroid.errors import InvalidArgumentError
from toroid.symmetry import default_example_input


def checkpoint_data(meta: Mapping[str, Any], model: nn.Module, source: Path, *, need: str) -> Split:
    """The dataset in a checkpoint's "data" entry (name, root, sizes, subset seed), with
    inputs shaped and typed for `model`; `need` says which command needs it, for the error
    when the entry is missing."""
    data = meta.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise InvalidArgumentError(
            f"{source} names no data (no 'data' entry in model.json); {need}"
        )
    split = load(
        data["name"],
        root=data.get("root"),
        train_size=data.get("train_size"),
        test_size=data.get("test_size"),
        seed=int(data.get("seed", 0)),
    )
    example = default_example_input(model)
    shape = tuple(example.shape[1:])
    if math.prod(split.input_shape) != math.prod(shape):
        raise InvalidArgumentError(
            f"the data named in {source} ({data['name']}) has inputs of shape "
            f"{split.input_shape}, but the model takes {shape}"
        )

    def fit(part: TensorData) -> TensorData:
        return TensorData(part.x.reshape(len(part), *shape).to(example.dtype), part.y)

    return Split(fit(split.train), fit(split.test), split.meta)


def load_same_architecture(
    a: Path, b: Path, *, command: str
) -> tuple[nn.Module, dict[str, Any], nn.Module, dict[str, Any]]:
    """Two checkpoints (model and metadata each) whose model configs must be equal; the
    one-line error names what differs."""
    net_a, meta_a = checkpoint.load(a)
    net_b, meta_b = checkpoint.load(b)
    config_a, config_b = meta_a["model"], meta_b["model"]
    if config_a != config_b:
        keys = [
            k for k in sorted(set(config_a) | set(config_b)) if config_a.get(k) != config_b.get(k)
        ]
        difference = "; ".join(f"{k} {config_a.get(k)!r} vs {config_b.get(k)!r}" for k in keys)
        raise InvalidArgumentError(
            f"{a} and {b} have different architectures ({difference}); {command} needs the "
            "same model"
        )
    return net_a, meta_a, net_b, meta_b
