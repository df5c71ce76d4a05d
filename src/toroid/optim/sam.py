"""Sharpness-aware minimization (Foret et al. 2021) and its adaptive variant ASAM
(Kwon et al. 2021), around any base optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from toroid.optim.checks import flag, number
from toroid.optim.protocol import BatchStream, StepPlan, as_step_closure, drive

# Keeps the ascent step finite when the gradient vanishes (then it is zero anyway).
_EPS = 1e-12


class SAM(torch.optim.Optimizer):
    """Each step takes the gradient at the worst point, to first order, of a ball of radius
    `rho` around the weights w, e = rho g / ||g||, and lets the base optimizer apply that
    gradient to w itself. With `adaptive` (ASAM) the ball is scaled elementwise by |w|:
    e = rho |w|^2 g / || |w| g ||, which makes the neighbourhood invariant to the per-unit
    rescalings a ReLU network allows. The norm is taken over all parameters together.

    Two gradient evaluations per step. Only the first, at w, updates BatchNorm running
    statistics: the second runs at a point the model never occupies.

    `base(params)` builds the base optimizer (any torch optimizer). SAM shares its parameter
    groups and state with it, so learning-rate schedules and checkpoints see the base's
    hyperparameters and buffers (momentum) through SAM."""

    def __init__(
        self,
        params: ParamsT,
        *,
        base: Callable[[ParamsT], torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
    ) -> None:
        defaults = {"rho": number("rho", rho), "adaptive": flag("adaptive", adaptive)}
        self.base = base(params)
        super().__init__(self.base.param_groups, defaults)
        self._link_base()

    def _link_base(self) -> None:
        self.base.param_groups = self.param_groups
        self.base.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link_base()  # loading replaced our groups and state with new objects

    def step(  # type: ignore[override]
        self, closure: Callable[..., Any] | None = None
    ) -> torch.Tensor:
        """One SAM step; returns the loss at w (before the step)."""
        steps = as_step_closure(closure, "SAM")
        return drive(self.plan_step(steps), steps)

    @torch.no_grad()
    def plan_step(self, batches: BatchStream) -> StepPlan:
        """One SAM step as a plan: the gradient at w, then at the ascent point on the same
        minibatch (statistics frozen)."""
        loss = yield True
        scaled = [
            (p, group, p.grad * p.abs() if group["adaptive"] else p.grad)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not scaled:
            return loss
        device = scaled[0][0].device
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(s).to(device) for _, _, s in scaled])
        )
        saved = []
        for p, group, s in scaled:
            ascent = s * (group["rho"] / (norm.to(p.device) + _EPS))
            if group["adaptive"]:
                ascent = ascent * p.abs()
            saved.append((p, p.clone()))
            p.add_(ascent)
        yield False
        for p, original in saved:
            p.copy_(original)  # a copy, not w + e - e: the base must see w exactly
        self.base.step()
        return loss
