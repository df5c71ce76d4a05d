"""The step protocol between the training loop and every optimizer.

The loop calls `optimizer.step(closure)` once per step. Calling `closure()` zeroes the
gradients, runs forward and backward on the current minibatch and returns the detached
loss; each call counts one gradient evaluation. Optimizers that need more than one
gradient per step (SAM) call it again; those that consume several minibatches per step
(Entropy-SGD, replicated SGD) call `closure.next_batch()` in between. `update_bn_stats=False`
leaves BatchNorm running statistics as they were, for extra evaluations within a step.
Plain torch optimizers (SGD, Adam) already follow this protocol.
"""

from __future__ import annotations

from typing import Protocol

import torch


class StepClosure(Protocol):
    def __call__(self, *, update_bn_stats: bool = True) -> torch.Tensor: ...

    def next_batch(self) -> None: ...

    @property
    def grad_evals(self) -> int: ...
