"""Replicated SGD (Baldassi et al. 2016; Pittorino et al. 2021): y replicas of the network,
each trained on its own minibatches, elastically coupled to a center that is the output."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch.optim.optimizer import ParamsT

from toroid.optim.checks import count, flag, fraction, number
from toroid.optim.protocol import (
    BatchStream,
    StepPlan,
    as_step_closure,
    check_progress,
    drive,
)
from toroid.optim.scoping import check_scope, scoped


class ReplicatedSGD(torch.optim.Optimizer):
    """Minimizes sum_a f(w_a) + gamma/2 sum_a ||w_a - c||^2 over y replicas w_a and their
    center c. The model's parameters hold c between steps; the replicas and their momentum
    buffers live in the optimizer state (`state[p]["replicas"]`, shape (y, *p.shape)), all
    starting at the model's initial weights.

    One step: each replica in turn is written into the model, gets the gradient of f on its
    own minibatch (the first uses the current one, the others call `next_batch`) and takes an
    SGD step (momentum, optionally Nesterov, L2 `weight_decay`). Then the coupling term is
    integrated exactly over a time `lr` for replicas and center together: deviations of the
    replicas from their mean shrink by exp(-lr gamma), the gap between mean and center by
    exp(-lr gamma (y + 1)), and y * mean + center is conserved. For small lr gamma this is
    the gradient step on the coupling; unlike that step it is stable for any gamma, and a
    very large gamma puts the replicas on the center. `gamma` is scoped from `gamma0` to
    `gamma1` (toroid.optim.scoping) as `set_progress` reports training progress.

    Cost: y gradient evaluations and y minibatches per step; memory for 2y + 1 copies of the
    parameters (replicas, their momentum, the center), y times one network trained with
    SGD. The model's BatchNorm running statistics come from the replicas' forward passes;
    `fit` recomputes them for the center (RecomputesBatchNorm)."""

    recomputes_batchnorm: ClassVar[bool] = True

    def __init__(
        self,
        params: ParamsT,
        *,
        y: int = 3,
        lr: float = 0.05,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        gamma0: float = 0.1,
        gamma1: float = 100.0,
    ) -> None:
        start, end = check_scope(gamma0, gamma1)
        defaults = {
            "lr": number("lr", lr, strict=True),
            "momentum": fraction("momentum", momentum, closed=False),
            "nesterov": flag("nesterov", nesterov),
            "weight_decay": number("weight_decay", weight_decay),
            "gamma0": start,
            "gamma1": end,
        }
        self.replicas = count("y", y)
        self.progress = 0.0
        super().__init__(params, defaults)

    def set_progress(self, fraction: float) -> None:
        self.progress = check_progress(fraction)

    def gamma(self, group: dict[str, Any]) -> float:
        """The coupling of `group` at the current progress."""
        return scoped(group["gamma0"], group["gamma1"], self.progress)

    def _replica_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = self.state[p]
        if "replicas" not in state:
            state["replicas"] = p.detach().unsqueeze(0).repeat(self.replicas, *[1] * p.dim())
            state["momentum"] = torch.zeros_like(state["replicas"])
        return state

    def step(  # type: ignore[override]
        self, closure: Callable[..., Any] | None = None
    ) -> torch.Tensor:
        """One step of every replica and of the coupling; returns the replicas' mean loss."""
        steps = as_step_closure(closure, "replicated SGD")
        return drive(self.plan_step(steps), steps)

    @torch.no_grad()
    def plan_step(self, batches: BatchStream) -> StepPlan:
        """One step as a plan: y gradient requests, one per replica and minibatch."""
        params = [p for group in self.param_groups for p in group["params"]]
        center = {p: p.clone() for p in params}
        losses = []
        for a in range(self.replicas):
            if a:
                batches.next_batch()
            for p in params:
                p.copy_(self._replica_state(p)["replicas"][a])
            losses.append((yield True))
            for p in params:
                # The forward may have changed the weights in place (binary layers clip
                # their latent weights): the replica takes the step from what was used.
                self._replica_state(p)["replicas"][a].copy_(p)
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self._replica_state(p)
                    replica, buffer = state["replicas"][a], state["momentum"][a]
                    grad = p.grad
                    if group["weight_decay"]:
                        grad = grad.add(replica, alpha=group["weight_decay"])
                    buffer.mul_(group["momentum"]).add_(grad)
                    if group["nesterov"]:
                        grad = grad.add(buffer, alpha=group["momentum"])
                    else:
                        grad = buffer
                    replica.add_(grad, alpha=-group["lr"])
        y = self.replicas
        for group in self.param_groups:
            time = group["lr"] * self.gamma(group)
            spread, gap = math.exp(-time), math.exp(-time * (y + 1))
            for p in group["params"]:
                replicas, c = self._replica_state(p)["replicas"], center[p]
                if time:
                    mean = replicas.mean(dim=0)
                    conserved = mean * y + c
                    shrunk = (mean - c).mul_(gap)
                    replicas.sub_(mean).mul_(spread).add_((conserved + shrunk) / (y + 1))
                    c = (conserved - shrunk * y) / (y + 1)
                p.copy_(c)
        return torch.stack(losses).mean()
