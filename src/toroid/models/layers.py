"""Layers of toroid's own: the sign activation of binary networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _SignSTE(torch.autograd.Function):
    """sign(x) forward; straight-through gradient of hardtanh (1 where |x| <= 1) backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        passed: torch.Tensor = grad * (x.abs() <= 1).to(grad.dtype)
        return passed


class Sign(nn.Module):
    """The sign activation (+1 for x >= 0, -1 otherwise), an odd function up to x = 0,
    with the straight-through estimator of Hubara et al. (2016) for its gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _SignSTE.apply(x)  # type: ignore[no-untyped-call]
        return out
