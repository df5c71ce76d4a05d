"""What several commands read from checkpoints: the dataset a checkpoint was trained on,
and two checkpoints of one architecture."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
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
    if data is None:
        raise InvalidArgumentError(
            f"{source} names no data (no 'data' entry in model.json); {need}"
        )
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        shown = repr(data if not isinstance(data, dict) else data.get("name"))
        field = "data" if not isinstance(data, dict) else "data.name"
        raise InvalidArgumentError(
            f"{source / 'model.json'}: {field} is {shown[:60]}; it must be "
            + ("an object naming a dataset" if field == "data" else "a dataset name")
        )
    entry = _data_entry(data, source / "model.json")
    split = load(data["name"], **entry)
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


def _data_entry(data: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """The root, sizes and seed of a checkpoint's "data" entry, each checked; the one-line
    error names the field and what is valid."""

    def bad(field: str, value: object, valid: str) -> InvalidArgumentError:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return InvalidArgumentError(f"{source}: data.{field} is {shown}; it must be {valid}")

    root = data.get("root")
    if root is not None and (not isinstance(root, str) or not root):
        raise bad("root", root, "a directory path (a string) or null")
    if root is not None and not Path(root).is_dir():
        # The data has moved since training (another machine, a copied run): look where
        # `load` looks without a root ($TOROID_DATA, the Debian package), which says where
        # the files are expected if they are not there either.
        root = None
    sizes: dict[str, int | None] = {}
    for field in ("train_size", "test_size"):
        value = data.get(field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            raise bad(field, value, "a positive integer or null")
        sizes[field] = value
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise bad("seed", seed, "an integer from -2**63 to 2**64 - 1")
    return {"root": root, **sizes, "seed": seed}


def common_dtype(*models: nn.Module) -> list[nn.Module]:
    """`models` in one floating dtype, the widest of theirs (float32 with float64 becomes
    float64, which is exact), so that checkpoints saved in different precisions combine."""
    dtypes = [p.dtype for m in models for p in m.parameters() if p.is_floating_point()]
    if not dtypes:
        return list(models)
    widest = dtypes[0]
    for dtype in dtypes[1:]:
        widest = torch.promote_types(widest, dtype)
    return [m.to(widest) for m in models]


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
    net_a, net_b = common_dtype(net_a, net_b)
    return net_a, meta_a, net_b, meta_b
