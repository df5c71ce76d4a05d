"""Named optimizers with defaults, so the trainer, the CLI and study configs share them.

A registered name is a preset: an optimizer with published defaults (`source` says where
they come from) and, where the defaults assume one, the minibatch size that `fit` and the
CLI use unless the caller gives another (`sgd-large-batch`). A wrapper (`wraps=True`, such
as SAM) names a base optimizer under "base" and takes the base's hyperparameters too."""

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
    source: str = ""
    batch_size: int | None = None
    wraps: bool = False


_REGISTRY: dict[str, OptimizerEntry] = {}
# The minibatch size of optimizers whose defaults do not assume one.
DEFAULT_BATCH_SIZE = 128


def register_optimizer(
    name: str,
    factory: Factory,
    *,
    defaults: Mapping[str, Any],
    description: str = "",
    source: str = "",
    batch_size: int | None = None,
    wraps: bool = False,
) -> None:
    """Make `name` usable from `fit`, the CLI and configs. `factory(params, **hparams)`
    must return a torch Optimizer whose `step(closure)` follows `StepClosure`. With
    `wraps`, `defaults` must hold "base" (a registered optimizer's name) and the factory
    also receives the base's hyperparameters."""
    if wraps and "base" not in defaults:
        raise InvalidArgumentError(f"wrapper optimizer {name!r} needs a 'base' default")
    _REGISTRY[name] = OptimizerEntry(
        name, factory, dict(defaults), description, source, batch_size, wraps
    )


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
    given = {k: v for k, v in config.items() if k != "name"}
    given.update({k: v for k, v in overrides.items() if v is not None})
    defaults = dict(entry.defaults)
    if entry.wraps:
        base = optimizer_entry(str(given.get("base", defaults["base"])))
        if base.wraps:
            valid = ", ".join(n for n, e in _REGISTRY.items() if not e.wraps)
            raise InvalidArgumentError(
                f"optimizer {entry.name!r} cannot wrap {base.name!r}, itself a wrapper; "
                f"valid bases: {valid}"
            )
        defaults.update({k: v for k, v in base.defaults.items() if k not in defaults})
    resolved: dict[str, Any] = {"name": entry.name, **defaults}
    unknown = set(given) - set(defaults)
    if unknown:
        raise InvalidArgumentError(
            f"optimizer {entry.name!r} has no hyperparameter {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(defaults)}"
        )
    resolved.update(given)
    lr = resolved.get("lr")
    if lr is not None and not (isinstance(lr, int | float) and lr > 0):
        raise InvalidArgumentError(f"lr must be a positive number, got {lr!r}")
    return resolved


def default_batch_size(optimizer: str | Mapping[str, Any]) -> int:
    """The minibatch size `fit` and the CLI use with `optimizer` when none is given: the
    preset's own (sgd-large-batch), else DEFAULT_BATCH_SIZE."""
    name = optimizer if isinstance(optimizer, str) else str(optimizer.get("name"))
    size = optimizer_entry(name).batch_size
    return DEFAULT_BATCH_SIZE if size is None else size


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
    source="momentum 0.9 (Sutskever et al. 2013); lr 0.05 and batch 128: toroid's MLP default",
)
register_optimizer(
    "adam",
    _adam,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    description="Adam; weight_decay is L2 added to the gradient",
    source="Kingma & Ba 2015: lr 1e-3, betas (0.9, 0.999), eps 1e-8",
)
register_optimizer(
    "adamw",
    _adamw,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
    description="AdamW: decoupled weight decay",
    source="Loshchilov & Hutter 2019; Adam's defaults, weight decay 0.01",
)
