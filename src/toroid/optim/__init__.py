"""Optimizers: a registry of named optimizers and the closure-based step protocol."""

from toroid.optim.protocol import StepClosure
from toroid.optim.registry import (
    OptimizerEntry,
    make_optimizer,
    optimizer_entry,
    optimizer_names,
    register_optimizer,
    resolve_optimizer,
)

__all__ = [
    "OptimizerEntry",
    "StepClosure",
    "make_optimizer",
    "optimizer_entry",
    "optimizer_names",
    "register_optimizer",
    "resolve_optimizer",
]
