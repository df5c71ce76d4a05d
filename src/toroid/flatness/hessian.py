"""Hessian flatness measures of the cross-entropy: Hutchinson trace, top eigenvalue, and
the Hessian-vector product they are built on.

All work on the Hessian H of the mean cross-entropy over all of the data with respect to
every parameter of the model (weights and BatchNorm affine parameters; running statistics
are buffers and stay fixed), in eval mode; the trace and the top eigenvalue by default at
the canonical point (every hidden cell unit-norm, see `toroid.symmetry.canonicalize`), the
Hessian-vector product at the model as it is. Hessian-vector products are exact
(double backward), accumulated over minibatches weighted by their size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toroid.data.tensordata import DataLike, TensorData, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate.single import inputs_like
from toroid.models.finite import check_finite_data, check_finite_model
from toroid.progress import task
from toroid.symmetry.canonical import canonicalize

Vector = list[torch.Tensor]


@dataclass(frozen=True)
class HessianEstimate:
    """A Hessian measure with its uncertainty.

    `value`: the estimate; `stderr`: its error bar (see the function that made it);
    `samples`: the raw values it was computed from (per-probe v^T H v for the trace, the
    Rayleigh quotient of every iteration for the top eigenvalue); `method`: how it was made.
    """

    value: float
    stderr: float
    samples: tuple[float, ...]
    method: str


def _check_positive(label: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{label} must be a positive integer, got {value!r}")


def _prepare(
    model: nn.Module,
    data: DataLike,
    batch_size: int,
    canonical: bool,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Vector, TensorData]:
    """An eval-mode copy of `model` (canonical when asked, moved to `device` when given),
    its parameters, and the data."""
    _check_positive("batch_size", batch_size)
    data = as_tensor_data(data)
    if len(data) == 0:
        raise InvalidArgumentError("cannot compute a Hessian on an empty dataset")
    check_finite_model(model)
    check_finite_data(data)
    work = canonicalize(model, output="keep") if canonical else copy.deepcopy(model)
    if device is not None:
        work = work.to(device)
    work.eval()
    params: Vector = list(work.parameters())
    if not params:
        raise InvalidArgumentError(
            f"{type(model).__name__} has no parameters, so it has no Hessian"
        )
    for p in params:
        p.requires_grad_(True)
    return work, params, data


def _batches(
    data: TensorData, batch_size: int, reference: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive minibatches, each moved to the parameters' device (and floating inputs
    to their dtype) only when it is used."""
    for s in range(0, len(data), batch_size):
        x = inputs_like(data.x[s : s + batch_size], reference)
        yield x, data.y[s : s + batch_size].to(reference.device)


def _dot(a: Vector, b: Vector) -> torch.Tensor:
    return torch.stack([torch.sum(x * y) for x, y in zip(a, b, strict=True)]).sum()


def _batch_grads(
    model: nn.Module, params: Vector, batch: tuple[torch.Tensor, torch.Tensor], n: int
) -> Vector:
    """The gradient of this batch's share of the mean cross-entropy over all `n` examples
    (summed loss / n), with its graph kept for double backward."""
    x, y = batch
    loss = F.cross_entropy(model(x), y, reduction="sum") / n
    return list(torch.autograd.grad(loss, params, create_graph=True))


def _hvp(grads: Vector, params: Vector, v: Vector, *, retain: bool) -> Vector:
    """H_b v for the batch whose gradient (with graph) is `grads`: d(grads . v)/d params."""
    gv = _dot(grads, v)
    if not gv.requires_grad:  # the gradient does not depend on the parameters: H_b = 0
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(gv, params, retain_graph=retain, allow_unused=True)
    return [
        torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params, strict=True)
    ]


def _full_hvp(
    model: nn.Module, params: Vector, data: TensorData, batch_size: int, v: Vector
) -> Vector:
    """H v for H the Hessian of the mean cross-entropy over all of `data`."""
    out = [torch.zeros_like(p) for p in params]
    for batch in _batches(data, batch_size, params[0]):
        grads = _batch_grads(model, params, batch, len(data))
        for acc, h in zip(out, _hvp(grads, params, v, retain=False), strict=True):
            acc.add_(h)
    return out


def _rademacher(params: Vector, generator: torch.Generator) -> Vector:
    return [
        (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(
            dtype=p.dtype, device=p.device
        )
        for p in params
    ]


def _as_vector(work: nn.Module, params: Vector, vector: Mapping[str, torch.Tensor]) -> Vector:
    """A user vector keyed by parameter name, as one tensor per parameter of `work` in its
    order, on the parameters' device and dtype."""
    names = [name for name, _ in work.named_parameters()]
    if set(vector) != set(names):
        raise InvalidArgumentError(
            f"a vector must have exactly the parameter names {names}, got {sorted(vector)}"
        )
    out = []
    for name, p in zip(names, params, strict=True):
        v = vector[name]
        if tuple(v.shape) != tuple(p.shape):
            raise InvalidArgumentError(
                f"vector[{name!r}] has shape {tuple(v.shape)}; the parameter has {tuple(p.shape)}"
            )
        out.append(v.detach().to(dtype=p.dtype, device=p.device))
    return out


def hessian_vector_product(
    model: nn.Module,
    data: DataLike,
    vector: Mapping[str, torch.Tensor],
    *,
    batch_size: int = 1000,
    canonical: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """H v, H the Hessian of the mean cross-entropy over all of `data` with respect to every
    parameter (eval mode, running statistics fixed), exact by double backward and summed
    over minibatches. `vector` and the result map parameter names (`model.named_parameters`)
    to tensors of the parameters' shapes. `canonical=False` (the default) takes H at the
    model as it is; `canonical=True` at its canonical form, whose coordinates `vector` is
    then in. The input model is not modified."""
    work, params, data = _prepare(model, data, batch_size, canonical, device)
    v = _as_vector(work, params, vector)
    hv = _full_hvp(work, params, data, batch_size, v)
    names = [name for name, _ in work.named_parameters()]
    return dict(zip(names, hv, strict=True))


def hessian_trace(
    model: nn.Module,
    data: DataLike,
    *,
    probes: int | Sequence[Mapping[str, torch.Tensor]] = 32,
    seed: int = 0,
    batch_size: int = 1000,
    canonical: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> HessianEstimate:
    """Hutchinson's estimate of tr(H): the mean of v^T H v over `probes` Rademacher vectors
    v (entries +-1, drawn on the CPU from a generator seeded with `seed`), H the Hessian of
    the mean cross-entropy over all of `data` with respect to all parameters, eval mode.

    With `canonical=True` the model is first put in canonical form
    (`canonicalize(model, output="keep")`, which leaves the loss unchanged); a model that
    cannot be canonicalized raises `UnsupportedModelError` then. `canonical=False` uses the
    model as it is. `stderr` is the sample standard deviation of the per-probe values over
    sqrt(probes) (NaN for a single probe). The input model is not modified.

    `probes` may instead be the caller's own vectors (each a mapping from parameter name
    to tensor, as in `hessian_vector_product`; canonical coordinates when
    `canonical=True`): the result is then the mean of v^T H v over them, a trace estimate
    only when E[v v^T] = I (e.g. Gaussian or Rademacher probes), and `seed` is unused.
    """
    given: list[Vector] | None = None
    if isinstance(probes, int) and not isinstance(probes, bool):
        _check_positive("probes", probes)
        count = probes
    elif isinstance(probes, Sequence) and probes and not isinstance(probes, str):
        count = len(probes)
    else:
        raise InvalidArgumentError(
            f"probes must be a positive integer or a non-empty sequence of vectors, got {probes!r}"
        )
    work, params, data = _prepare(model, data, batch_size, canonical, device)
    if not isinstance(probes, int):
        given = [_as_vector(work, params, v) for v in probes]
    device = params[0].device
    sums = torch.zeros(count, dtype=torch.float64, device=device)
    total = -(-len(data) // batch_size)
    with task("Hessian trace", total, enabled=progress) as reporter:
        for batch in _batches(data, batch_size, params[0]):
            grads = _batch_grads(work, params, batch, len(data))
            # The same probes for every batch: v^T H v = sum over batches of v^T H_b v, and
            # regenerating them keeps one probe in memory at a time.
            generator = torch.Generator().manual_seed(seed)
            for k in range(count):
                v = _rademacher(params, generator) if given is None else given[k]
                hv = _hvp(grads, params, v, retain=k < count - 1)
                sums[k] += _dot(v, hv).double()
            reporter.advance()
    samples = sums.cpu()
    value = float(samples.mean())
    stderr = float(samples.std(unbiased=True)) / math.sqrt(count) if count > 1 else math.nan
    method = (
        f"hutchinson-rademacher(probes={count}, seed={seed})"
        if given is None
        else f"quadratic-form-mean(probes={count}, given)"
    )
    return HessianEstimate(
        value=value, stderr=stderr, samples=tuple(float(s) for s in samples), method=method
    )


def hessian_top_eigenvalue(
    model: nn.Module,
    data: DataLike,
    *,
    iters: int = 50,
    seed: int = 0,
    batch_size: int = 1000,
    canonical: bool = True,
    tol: float = 1e-6,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> HessianEstimate:
    """The eigenvalue of H of largest magnitude, by power iteration: H as in
    `hessian_trace`, a standard-normal start vector drawn on the CPU from a generator
    seeded with `seed`, at most `iters` Hessian-vector products, stopping early once the
    Rayleigh quotient changes by less than `tol` relative to its value.

    Power iteration converges to the eigenvalue of largest absolute value, which is the
    largest eigenvalue only when H has no negative eigenvalue of larger magnitude (e.g. at a
    minimum); convergence is slow when the two largest magnitudes are close. `value` is the
    Rayleigh quotient lambda = v^T H v of the last unit iterate v; `stderr` is the residual
    norm ||H v - lambda v||: since H is symmetric, some eigenvalue of H lies within that
    distance of lambda. `samples` holds the Rayleigh quotient of every iteration.
    `canonical` as in `hessian_trace`; the input model is not modified.
    """
    _check_positive("iters", iters)
    if not (isinstance(tol, int | float) and tol >= 0 and math.isfinite(tol)):
        raise InvalidArgumentError(f"tol must be a finite number >= 0, got {tol!r}")
    work, params, data = _prepare(model, data, batch_size, canonical, device)
    device = params[0].device
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(device) for p in params]
    norm = torch.sqrt(_dot(v, v))
    v = [u / norm for u in v]
    quotients: list[float] = []
    residual = math.nan
    with task("Hessian top eigenvalue", iters, enabled=progress) as reporter:
        for _ in range(iters):
            hv = _full_hvp(work, params, data, batch_size, v)
            rayleigh = float(_dot(v, hv))
            diff = [h - rayleigh * u for h, u in zip(hv, v, strict=True)]
            residual = float(torch.sqrt(_dot(diff, diff)))
            previous = quotients[-1] if quotients else None
            quotients.append(rayleigh)
            reporter.advance(eigenvalue=f"{rayleigh:.6g}")
            hv_norm = float(torch.sqrt(_dot(hv, hv)))
            if hv_norm == 0.0:  # v lies in the null space; lambda = 0 is exact
                break
            if previous is not None and abs(rayleigh - previous) <= tol * abs(rayleigh):
                break
            v = [h / hv_norm for h in hv]
    return HessianEstimate(
        value=quotients[-1],
        stderr=residual,
        samples=tuple(quotients),
        method=f"power-iteration(iters={len(quotients)}, seed={seed}, tol={tol:g})",
    )
