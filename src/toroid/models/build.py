"""`build(config)`: the model that a config (as carried by every built-in model) describes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models.lenet import lenet5
from toroid.models.mlp import mlp
from toroid.models.resnet import resnet
from toroid.models.vgg import vgg
from toroid.models.vit import vit

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet5": lenet5,
    "vgg": vgg,
    "resnet": resnet,
    "vit": vit,
}


def build(config: Mapping[str, Any], *, seed: int | None = None) -> nn.Module:
    """A freshly initialized model from `{"name": ..., **arguments}`; with `seed`, the
    initialization is drawn from that seed without touching the global generator."""
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(
            f"a model config must be a mapping with a 'name', got {type(config).__name__}"
        )
    name = config.get("name")
    if name not in BUILDERS:
        raise InvalidArgumentError(f"unknown model {name!r}; valid: {', '.join(BUILDERS)}")
    arguments = {k: v for k, v in config.items() if k != "name"}
    try:
        if seed is None:
            return BUILDERS[name](**arguments)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return BUILDERS[name](**arguments)
    except TypeError as exc:
        raise InvalidArgumentError(f"bad arguments for model {name!r}: {exc}") from exc
