"""Optimizers: a registry of named optimizers and presets, the closure-based step protocol,
SAM, Entropy-SGD and replicated SGD."""

from toroid.optim.entropy_sgd import EntropySGD
from toroid.optim.presets import GRAD_EVALS_PER_STEP, PRESETS
from toroid.optim.protocol import ProgressAware, RecomputesBatchNorm, StepClosure
from toroid.optim.registry import (
    DEFAULT_BATCH_SIZE,
    OptimizerEntry,
    default_batch_size,
    make_optimizer,
    optimizer_entry,
    optimizer_names,
    register_optimizer,
    resolve_optimizer,
)
from toroid.optim.replicated import ReplicatedSGD
from toroid.optim.sam import SAM
from toroid.optim.scoping import scoped

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "GRAD_EVALS_PER_STEP",
    "PRESETS",
    "SAM",
    "EntropySGD",
    "OptimizerEntry",
    "ProgressAware",
    "RecomputesBatchNorm",
    "ReplicatedSGD",
    "StepClosure",
    "default_batch_size",
    "make_optimizer",
    "optimizer_entry",
    "optimizer_names",
    "register_optimizer",
    "resolve_optimizer",
    "scoped",
]
