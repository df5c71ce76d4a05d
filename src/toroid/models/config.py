"""Every built-in model carries the JSON-able config that rebuilds it (`build(config)`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from toroid.errors import InvalidArgumentError

CONFIG_ATTRIBUTE = "toroid_config"


def attach_config(model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    setattr(model, CONFIG_ATTRIBUTE, dict(config))
    return model


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config that `build` turns back into this model's architecture."""
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    if not isinstance(config, dict):
        raise InvalidArgumentError(
            f"{type(model).__name__} carries no toroid config; build it with toroid.models "
            "(mlp, lenet5, vgg, resnet, vit, build) or attach one with attach_config"
        )
    return dict(config)


def check_choice(label: str, value: object, valid: tuple[object, ...]) -> None:
    if value not in valid:
        raise InvalidArgumentError(
            f"{label} must be one of {', '.join(map(repr, valid))}, got {value!r}"
        )


def check_positive(label: str, value: float) -> None:
    if not value > 0:
        raise InvalidArgumentError(f"{label} must be positive, got {value!r}")


@contextmanager
def initialization_seed(seed: int | None) -> Iterator[None]:
    """Inside, parameters are initialized from `seed` without touching the caller's global
    generator; with None, from the global generator, as torch.nn does."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative integer or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
