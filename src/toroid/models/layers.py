"""Layers of toroid's own: the sign activation and the binary Linear and Conv2d layers of
binary networks (+-1 weights and activations, trained BinaryConnect-style)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _sign(x: torch.Tensor) -> torch.Tensor:
    # +1 at 0 (torch.sign gives 0 there): every binary value is +-1.
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    """sign(x) forward; straight-through gradient of hardtanh (1 where |x| <= 1) backward.
    `setup_context` and the generated vmap rule let `evaluate_sets` (vmap) run it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _sign(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        passed: torch.Tensor = grad * (x.abs() <= 1).to(grad.dtype)
        return passed


class _BinarizeSTE(torch.autograd.Function):
    """sign(w) forward; the identity backward (BinaryConnect): the gradient with respect to
    the binary weight updates the latent real weight."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor) -> torch.Tensor:
        return _sign(w)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with +1 at 0, and the hardtanh straight-through gradient."""
    out: torch.Tensor = _SignSTE.apply(x)  # type: ignore[no-untyped-call]
    return out


def binarize(w: torch.Tensor) -> torch.Tensor:
    """sign(w) with +1 at 0, and the identity straight-through gradient."""
    out: torch.Tensor = _BinarizeSTE.apply(w)  # type: ignore[no-untyped-call]
    return out


class Sign(nn.Module):
    """The sign activation (+1 for x >= 0, -1 otherwise), an odd function up to x = 0,
    with the straight-through estimator of Hubara et al. (2016) for its gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


LATENT_BOUND = 1.0


class _Binary:
    """The latent-weight bookkeeping shared by the binary layers. The latent weights are
    clipped to [-1, 1] inside the layer, at the start of every training-mode forward and
    whenever the mode is switched (fit's evaluations, `model.eval()`), so that every
    optimizer trains it unchanged. Clipping never changes sign(w), hence never the
    function; it keeps latent weights close enough to 0 for their signs to flip back."""

    weight: torch.Tensor

    def clip_(self) -> None:
        with torch.no_grad():
            self.weight.clamp_(-LATENT_BOUND, LATENT_BOUND)

    def binary_weight(self) -> torch.Tensor:
        """The +-1 weights the layer computes with (differentiable, straight-through)."""
        return binarize(self.weight)


class BinaryLinear(nn.Linear, _Binary):
    """A Linear layer whose forward uses sign(latent weight) (+1 at 0), with the identity
    straight-through gradient, latent weights clipped to [-1, 1]. A bias, when present,
    stays real (the built-in binary models have none: BatchNorm follows every layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.clip_()
        return F.linear(x, self.binary_weight(), self.bias)

    def train(self, mode: bool = True) -> BinaryLinear:
        self.clip_()
        return super().train(mode)


class BinaryConv2d(nn.Conv2d, _Binary):
    """A Conv2d layer whose forward uses sign(latent weight) (+1 at 0), with the identity
    straight-through gradient, latent weights clipped to [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.clip_()
        out: torch.Tensor = self._conv_forward(x, self.binary_weight(), self.bias)
        return out

    def train(self, mode: bool = True) -> BinaryConv2d:
        self.clip_()
        return super().train(mode)


BINARY_LAYERS: tuple[type[nn.Module], ...] = (BinaryLinear, BinaryConv2d)


def is_binary(model: nn.Module) -> bool:
    """Whether `model` holds at least one binary layer."""
    return any(isinstance(m, BINARY_LAYERS) for m in model.modules())
