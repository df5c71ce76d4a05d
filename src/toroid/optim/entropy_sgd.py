"""Entropy-SGD (Chaudhari et al. 2017): gradient descent on the local entropy, estimated by
a short Langevin chain coupled to the current weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from toroid.errors import InvalidArgumentError
from toroid.optim.checks import count, flag, fraction, number
from toroid.optim.protocol import (
    BatchStream,
    StepPlan,
    as_step_closure,
    check_progress,
    drive,
)
from toroid.optim.scoping import check_scope, scoped


class EntropySGD(torch.optim.Optimizer):
    """One step, from weights x:

        x' <- x, mu <- x
        L times, each on its own minibatch:
            x' <- x' - inner_lr (grad f(x') + weight_decay x' + gamma (x' - x))
                     + sqrt(inner_lr) noise N(0, I)
            mu <- (1 - alpha) mu + alpha x'
        x <- x - lr (x - mu)        (with momentum, optionally Nesterov)

    x - mu is the local-entropy gradient divided by gamma, as in the paper's experiments,
    so `lr` = 1 moves x onto the chain's average. `gamma` is scoped from `gamma0` to `gamma1`
    (see toroid.optim.scoping) as `set_progress` reports training progress; a learning-rate
    schedule acts on the outer `lr`, the Langevin step `inner_lr` stays fixed.

    L gradient evaluations and L minibatches per step. The noise comes from the generator
    given to `use_generator` (the training loop's, seeded and checkpointed per network),
    else from the global torch generator. BatchNorm running statistics are gathered
    along the chain, whose points stay near x."""

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 1.0,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        inner_lr: float = 0.1,
        L: int = 5,  # noqa: N803 -- the paper's name for the chain length
        gamma0: float = 1e-4,
        gamma1: float = 1.0,
        noise: float = 1e-4,
        alpha: float = 0.75,
    ) -> None:
        start, end = check_scope(gamma0, gamma1)
        defaults = {
            "lr": number("lr", lr, strict=True),
            "momentum": fraction("momentum", momentum, closed=False),
            "nesterov": flag("nesterov", nesterov),
            "weight_decay": number("weight_decay", weight_decay),
            "inner_lr": number("inner_lr", inner_lr, strict=True),
            "gamma0": start,
            "gamma1": end,
            "noise": number("noise", noise),
            "alpha": fraction("alpha", alpha),
        }
        if defaults["alpha"] == 0.0:
            raise InvalidArgumentError("alpha must be in (0, 1] (0 never moves the average), got 0")
        self.chain_length = count("L", L)
        self.progress = 0.0
        self.generator: torch.Generator | None = None
        super().__init__(params, defaults)

    def use_generator(self, generator: torch.Generator) -> None:
        self.generator = generator

    def set_progress(self, fraction: float) -> None:
        self.progress = check_progress(fraction)

    def gamma(self, group: dict[str, Any]) -> float:
        """The coupling of `group` at the current progress."""
        return scoped(group["gamma0"], group["gamma1"], self.progress)

    def step(  # type: ignore[override]
        self, closure: Callable[..., Any] | None = None
    ) -> torch.Tensor:
        """One outer step; returns the mean loss over the chain's L minibatches."""
        steps = as_step_closure(closure, "Entropy-SGD")
        return drive(self.plan_step(steps), steps)

    @torch.no_grad()
    def plan_step(self, batches: BatchStream) -> StepPlan:
        """One outer step as a plan: L gradient requests, each on its own minibatch."""
        params = [p for group in self.param_groups for p in group["params"]]
        anchor = {p: p.clone() for p in params}
        mean = {p: p.clone() for p in params}
        losses = []
        for inner in range(self.chain_length):
            if inner:
                batches.next_batch()
            losses.append((yield True))
            for group in self.param_groups:
                gamma, lr = self.gamma(group), group["inner_lr"]
                jitter = math.sqrt(lr) * group["noise"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    drift = p.grad.add(p - anchor[p], alpha=gamma)
                    if group["weight_decay"]:
                        drift.add_(p, alpha=group["weight_decay"])
                    p.add_(drift, alpha=-lr)
                    if jitter:
                        p.add_(self._noise(p), alpha=jitter)
                    mean[p].mul_(1.0 - group["alpha"]).add_(p, alpha=group["alpha"])
        for group in self.param_groups:
            for p in group["params"]:
                direction = anchor[p] - mean[p]
                if group["momentum"]:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buffer = state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
                    if group["nesterov"]:
                        direction = direction.add(buffer, alpha=group["momentum"])
                    else:
                        direction = buffer
                p.copy_(anchor[p]).add_(direction, alpha=-group["lr"])
        return torch.stack(losses).mean()

    def _noise(self, p: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return torch.randn_like(p)
        return torch.randn(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
