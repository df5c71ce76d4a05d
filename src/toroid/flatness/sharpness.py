"""SAM sharpness: the largest increase of the training loss within an L2 ball of radius rho
around the weights, found by projected normalized-gradient ascent (Foret et al. 2021,
"Sharpness-Aware Minimization"; the worst-case sharpness of Keskar et al. 2017 and Jiang et
al. 2020; the adaptive ball of Kwon et al. 2021 as discussed by Andriushchenko et al. 2023)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toroid.data.tensordata import DataLike, Split, TensorData, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate.single import inputs_like
from toroid.models.finite import check_finite_data, check_finite_model
from toroid.symmetry.canonical import canonicalize


@dataclass(frozen=True)
class Sharpness:
    """max over the ascent iterates of L(w + eps) - L(w), ||eps|| <= rho (||eps / |w| ||
    for the adaptive ball): a lower bound on the true maximum in the ball, found by ascent.

    `value`: that increase (>= 0: eps = 0 is in the ball); `base_loss`: L(w);
    `ascent_loss`: the largest L(w + eps) met (base_loss + value); `losses`: L at w and at
    every iterate; `steps`: ascent steps taken; `samples`: training examples the loss is
    averaged over. A single deterministic search, so it has no standard error."""

    value: float
    base_loss: float
    ascent_loss: float
    rho: float
    steps: int
    adaptive: bool
    samples: int
    losses: tuple[float, ...]


def _loss_and_grad(
    model: nn.Module, params: list[torch.Tensor], data: TensorData, batch_size: int
) -> tuple[float, list[torch.Tensor]]:
    """The mean cross-entropy over all of `data` (accumulated in float64) and its gradient."""
    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    for start in range(0, len(data), batch_size):
        x = inputs_like(data.x[start : start + batch_size], params[0])
        y = data.y[start : start + batch_size].to(params[0].device)
        loss = F.cross_entropy(model(x), y, reduction="sum") / len(data)
        parts = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(grads, parts, strict=True):
            if g is not None:
                acc.add_(g)
        total += float(loss.detach().double())
    return total, grads


def _norm(vector: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(torch.sum(v.double() ** 2)) for v in vector))


def sam_sharpness(
    model: nn.Module,
    data: Split | DataLike,
    *,
    rho: float,
    steps: int = 5,
    step_size: float | None = None,
    adaptive: bool = False,
    samples: int | None = None,
    seed: int = 0,
    canonical: bool = False,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
) -> Sharpness:
    """SAM sharpness of `model` on its training data (`data`: training data, or a Split whose
    `train` is used): max L(w + eps) - L(w) over ||eps||_2 <= rho, L the mean cross-entropy,
    the norm over the whole parameter vector (weights, biases, BatchNorm affine parameters).

    Search: from eps = 0, `steps` steps u <- P(u + step_size g_u / ||g_u||) with g_u the
    gradient at w + eps and P the projection onto the ball; `step_size` defaults to rho, so
    that one step is SAM's own point rho g / ||g||. `adaptive=True` searches the ball
    ||eps / |w| ||_2 <= rho instead (elementwise; ASAM's T_w = |w|, Kwon et al. 2021): eps =
    |w| u with the same steps on u, whose gradient is |w| g; a parameter at exactly 0 is not
    moved. The result is the largest increase over all iterates, a lower bound on the true
    maximum; exact to first order in rho (rho ||g||, or rho || |w| g ||).

    The loss is evaluated in eval mode with the BatchNorm running statistics as they are
    (moving w does not recompute them: the ball is taken around the network as deployed,
    and the ascent needs gradients through fixed statistics; unlike the local energy, whose
    perturbed networks get recomputed statistics). `samples`: None uses every training
    example (full batch); an integer uses a fixed subset of that many drawn with `seed`,
    the same subset for every step. `canonical=True` first puts the model in canonical form
    (`canonicalize(output="keep")`), which removes the dependence on the hidden scale
    symmetries (but not on the output layer's scale, which changes the loss). The input
    model is not modified."""
    if not (isinstance(rho, int | float) and math.isfinite(rho) and rho >= 0):
        raise InvalidArgumentError(f"rho must be a finite number >= 0, got {rho!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive integer, got {steps!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise InvalidArgumentError(
            f"step_size must be a finite number > 0 or None, got {step_size!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    train = as_tensor_data(data.train if isinstance(data, Split) else data)
    if len(train) == 0:
        raise InvalidArgumentError("cannot measure sharpness on an empty dataset")
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InvalidArgumentError(
                f"samples must be a positive integer or None, got {samples!r}"
            )
        if samples < len(train):
            index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
            train = TensorData(train.x[index[:samples]], train.y[index[:samples]])
    check_finite_model(model)
    check_finite_data(train, what="the training data")

    work = canonicalize(model, output="keep") if canonical else copy.deepcopy(model)
    if device is not None:
        work = work.to(device)
    work.eval()
    params: list[torch.Tensor] = list(work.parameters())
    if not params:
        raise InvalidArgumentError(f"{type(model).__name__} has no parameters to perturb")
    for p in params:
        p.requires_grad_(True)
    center = [p.detach().clone() for p in params]
    scale = [c.abs() if adaptive else torch.ones_like(c) for c in center]
    size = rho if step_size is None else float(step_size)

    base, grads = _loss_and_grad(work, params, train, batch_size)
    losses = [base]
    u = [torch.zeros_like(c) for c in center]
    taken = 0
    if rho > 0:
        for _ in range(steps):
            direction = [g * s for g, s in zip(grads, scale, strict=True)]
            norm = _norm(direction)
            if norm == 0.0:  # a stationary point of the scaled loss: no ascent direction
                break
            u = [a + size * d / norm for a, d in zip(u, direction, strict=True)]
            length = _norm(u)
            if length > rho:
                u = [a * (rho / length) for a in u]
            with torch.no_grad():
                for p, c, s, a in zip(params, center, scale, u, strict=True):
                    p.copy_(c + s * a)
            loss, grads = _loss_and_grad(work, params, train, batch_size)
            losses.append(loss)
            taken += 1
    top = max(losses)
    return Sharpness(
        value=top - base,
        base_loss=base,
        ascent_loss=top,
        rho=float(rho),
        steps=taken,
        adaptive=adaptive,
        samples=len(train),
        losses=tuple(losses),
    )
