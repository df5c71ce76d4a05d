"""The step protocol between the training loop and every optimizer.

The loop calls `optimizer.step(closure)` once per step. Calling `closure()` zeroes the
gradients, runs forward and backward on the current minibatch and returns the detached
loss; each call counts one gradient evaluation. Optimizers that need more than one
gradient per step (SAM) call it again; those that consume several minibatches per step
(Entropy-SGD, replicated SGD) call `closure.next_batch()` in between. `update_bn_stats=False`
leaves BatchNorm running statistics as they were, for extra evaluations within a step.
Plain torch optimizers (SGD, Adam) already follow this protocol.

Population training (toroid.train.fit_population) evaluates the gradients of many networks
in one vectorized pass, so it cannot let each optimizer call its closure when it likes.
An optimizer that needs more than one gradient per step therefore also states its step as
a plan (`PlansSteps.plan_step`): a generator that yields each time it needs a gradient (the
`update_bn_stats` flag), receives the loss with the gradients in `p.grad`, and returns the
step's loss; `drive` runs such a plan with an ordinary closure, which is how their `step`
works. Optimizers without a plan (SGD, Adam, anything registered) are taken to need one
gradient at the start of the step, as torch's do; should one call its closure again, that
call is answered by evaluating its network alone (`plan_of`).

Three optional hooks, which the training loop honours and plain optimizers need not
implement: `ProgressAware.set_progress` (hyperparameters that follow training progress, such
as a coupling scoped up during training), `RecomputesBatchNorm` (the model's running
statistics do not belong to the parameters a step leaves in the model) and
`DrawsNoise.use_generator` (the generator its random numbers come from, seeded and
checkpointed per network by the loop).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import torch

from toroid.errors import InvalidArgumentError


class StepClosure(Protocol):
    def __call__(self, *, update_bn_stats: bool = True) -> torch.Tensor: ...

    def next_batch(self) -> None: ...

    @property
    def grad_evals(self) -> int: ...


class BatchStream(Protocol):
    def next_batch(self) -> None: ...


# Yields update_bn_stats for each gradient it needs, is sent the loss, returns the step's loss.
StepPlan = Generator[bool, torch.Tensor, torch.Tensor]


@runtime_checkable
class PlansSteps(Protocol):
    """An optimizer whose step can run as a plan of gradient requests (see the module
    docstring); `batches.next_batch()` moves to the next minibatch between requests."""

    def plan_step(self, batches: BatchStream) -> StepPlan: ...


@runtime_checkable
class DrawsNoise(Protocol):
    """An optimizer that draws random numbers (Entropy-SGD's Langevin noise). The training
    loop hands it a generator of its own, seeded per network, so that networks trained
    together draw exactly what each would draw alone."""

    def use_generator(self, generator: torch.Generator) -> None: ...


def drive(plan: StepPlan, closure: StepClosure) -> torch.Tensor:
    """Run a step plan, answering each gradient request by calling `closure`."""
    try:
        update_bn_stats = next(plan)
        while True:
            update_bn_stats = plan.send(closure(update_bn_stats=update_bn_stats))
    except StopIteration as done:
        loss: torch.Tensor = done.value
        return loss


def plan_of(
    optimizer: torch.optim.Optimizer, batches: BatchStream, direct: StepClosure
) -> StepPlan:
    """The plan of one step of `optimizer`: its own when it has one, else one gradient
    request followed by `optimizer.step`, whose further closure calls (if any) `direct`
    answers."""
    if isinstance(optimizer, PlansSteps):
        return optimizer.plan_step(batches)
    return _one_gradient_plan(optimizer, batches, direct)


def _one_gradient_plan(
    optimizer: torch.optim.Optimizer, batches: BatchStream, direct: StepClosure
) -> StepPlan:
    loss = yield True
    optimizer.step(cast(Any, _Replay(loss, batches, direct)))
    return loss


class _Replay:
    """The closure a plan-less optimizer's step gets: its first call returns the gradient
    the plan already received; any further call, or minibatch, goes to `direct`."""

    def __init__(self, loss: torch.Tensor, batches: BatchStream, direct: StepClosure) -> None:
        self._loss: torch.Tensor | None = loss
        self._batches, self._direct = batches, direct

    def __call__(self, *, update_bn_stats: bool = True) -> torch.Tensor:
        if self._loss is not None:
            loss, self._loss = self._loss, None
            return loss
        return self._direct(update_bn_stats=update_bn_stats)

    def next_batch(self) -> None:
        self._loss = None
        self._batches.next_batch()

    @property
    def grad_evals(self) -> int:
        return self._direct.grad_evals


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
