"""Named optimizers with defaults, so the trainer, the CLI and study configs share them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from toroid.errors import InvalidArgumentError

Factory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    factory: Factory
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, OptimizerEntry] = {}


def register_optimizer(
    name: str, factory: Factory, *, defaults: Mapping[str, Any], description: str = ""
) -> None:
    """Make `name` usable from `fit`, the CLI and configs. `factory(params, **hparams)`
    must return a torch Optimizer whose `step(closure)` follows `StepClosure`."""
    _REGISTRY[name] = OptimizerEntry(name, factory, dict(defaults), description)


def optimizer_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def optimizer_entry(name: str) -> OptimizerEntry:
    if name not in _REGISTRY:
        raise InvalidArgumentError(f"unknown optimizer {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def resolve_optimizer(optimizer: str | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The complete config `{"name": ..., **hyperparameters}`: registry defaults, then the
    given config, then `overrides` (None values ignored). Unknown keys are rejected."""
    config = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer)
    entry = optimizer_entry(str(config.get("name")))
    resolved: dict[str, Any] = {"name": entry.name, **entry.defaults}
    given = {k: v for k, v in config.items() if k != "name"}
    given.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(given) - set(entry.defaults)
    if unknown:
        raise InvalidArgumentError(
            f"optimizer {entry.name!r} has no hyperparameter {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(entry.defaults)}"
        )
    resolved.update(given)
    lr = resolved.get("lr")
    if lr is not None and not (isinstance(lr, int | float) and lr > 0):
        raise InvalidArgumentError(f"lr must be a positive number, got {lr!r}")
    return resolved


def make_optimizer(
    config: Mapping[str, Any], params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """Instantiate a resolved config (see `resolve_optimizer`) on `params`."""
    entry = optimizer_entry(str(config["name"]))
    hparams = {k: v for k, v in config.items() if k != "name"}
    if "betas" in hparams:
        hparams["betas"] = tuple(hparams["betas"])
    try:
        return entry.factory(params, **hparams)
    except ValueError as exc:
        raise InvalidArgumentError(f"optimizer {entry.name!r}: {exc}") from exc


def _sgd(params: Iterable[torch.nn.Parameter], **hparams: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, **hparams)


def _adam(params: Iterable[torch.nn.Parameter], **hparams: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, **hparams)


def _adamw(params: Iterable[torch.nn.Parameter], **hparams: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, **hparams)


register_optimizer(
    "sgd",
    _sgd,
    defaults={"lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    description="SGD with (optionally Nesterov) momentum",
)
register_optimizer(
    "adam",
    _adam,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    description="Adam (Kingma & Ba 2015); weight_decay is L2 added to the gradient",
)
register_optimizer(
    "adamw",
    _adamw,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
    description="AdamW (Loshchilov & Hutter 2019): decoupled weight decay",
)
