"""The step protocol between the training loop and every optimizer.

The loop calls `optimizer.step(closure)` once per step. Calling `closure()` zeroes the
gradients, runs forward and backward on the current minibatch and returns the detached
loss; each call counts one gradient evaluation. Optimizers that need more than one
gradient per step (SAM) call it again; those that consume several minibatches per step
(Entropy-SGD, replicated SGD) call `closure.next_batch()` in between. `update_bn_stats=False`
leaves BatchNorm running statistics as they were, for extra evaluations within a step.
Plain torch optimizers (SGD, Adam) already follow this protocol.

Two optional hooks, which `fit` honours and plain optimizers need not implement:
`ProgressAware.set_progress` (hyperparameters that follow training progress, such as a
coupling scoped up during training) and `RecomputesBatchNorm` (the model's running
statistics do not belong to the parameters a step leaves in the model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import torch

from toroid.errors import InvalidArgumentError


class StepClosure(Protocol):
    def __call__(self, *, update_bn_stats: bool = True) -> torch.Tensor: ...

    def next_batch(self) -> None: ...

    @property
    def grad_evals(self) -> int: ...


@runtime_checkable
class ProgressAware(Protocol):
    """An optimizer whose hyperparameters depend on how far training has come. `fit` calls
    `set_progress(fraction)` before every step, with the fraction in [0, 1] of the planned
    minibatches (all epochs) already consumed; without a call the fraction is 0."""

    def set_progress(self, fraction: float) -> None: ...


@runtime_checkable
class RecomputesBatchNorm(Protocol):
    """An optimizer after whose steps the model's BatchNorm running statistics do not
    describe the parameters in the model (replicated SGD: the model holds the center, the
    statistics were gathered on the replicas). `fit` re-estimates them with
    `toroid.evaluate.recompute_bn` on the training data before every evaluation."""

    recomputes_batchnorm: ClassVar[bool]


def as_step_closure(closure: Callable[[], Any] | None, optimizer: str) -> StepClosure:
    """The closure an optimizer's `step` received, as the protocol it must follow."""
    if closure is None:
        raise InvalidArgumentError(
            f"{optimizer} needs a closure: call step(closure) with a StepClosure "
            "(toroid.optim.protocol), as toroid.train.fit does"
        )
    return cast(StepClosure, closure)


def check_progress(fraction: float) -> float:
    if not 0.0 <= fraction <= 1.0:
        raise InvalidArgumentError(f"training progress must be in [0, 1], got {fraction!r}")
    return float(fraction)
