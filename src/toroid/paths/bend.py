"""Bends: the middle point of a single-bend chain (or the control point of a quadratic
Bezier curve) between two minimizers, trained so that the whole path has low loss."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from toroid import progress as progress_helper
from toroid.data import iterate_batches
from toroid.data.batches import batch_count
from toroid.data.tensordata import DataLike, Split, as_tensor_data
from toroid.errors import InvalidArgumentError, TrainingDivergedError
from toroid.manifold.geodesic import slerp_state
from toroid.models.finite import check_finite_data
from toroid.paths.path import (
    AffinePath,
    BezierPath,
    Endpoints,
    PolyChainPath,
    bezier_weights,
    endpoints,
    polychain_weights,
)
from toroid.symmetry.align import align as align_models
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.slots import State
from toroid.symmetry.transform import transform_state, with_state
from toroid.symmetry.types import SymmetrySpec
from toroid.train import derive_seed, fit, lr_factor

BendKind = Literal["polychain", "bezier"]
BEND_KINDS: tuple[str, ...] = ("polychain", "bezier")
BendInit = Literal["geodesic_midpoint", "linear_midpoint"]
BEND_INITS: tuple[str, ...] = ("geodesic_midpoint", "linear_midpoint")


@dataclass(frozen=True)
class BendFit:
    """A fitted bend: the `path` through it (canonical a, bend, b aligned to a), the `bend`
    network itself, and how training went: `losses` is the mean minibatch loss at the
    sampled t per epoch, `grad_evals` the gradient evaluations spent."""

    path: AffinePath
    bend: nn.Module
    method: str
    losses: tuple[float, ...]
    epochs: int
    grad_evals: int
    wall_time: float
    settings: Mapping[str, Any]


def _initial_bend(ends: Endpoints, init: str) -> State:
    if init == "geodesic_midpoint":
        assert ends.spec is not None
        return slerp_state(ends.a, ends.b, 0.5, ends.spec)
    return {
        k: torch.lerp(v, ends.b[k].to(v.dtype), 0.5) if v.is_floating_point() else v.clone()
        for k, v in ends.a.items()
    }


def _train_data(data: Split | DataLike) -> Any:
    return as_tensor_data(data.train if isinstance(data, Split) else data)


def fit_bend(
    a: nn.Module,
    b: nn.Module,
    data: Split | DataLike,
    *,
    kind: BendKind = "polychain",
    init: BendInit = "geodesic_midpoint",
    epochs: int = 10,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    spec: SymmetrySpec | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> BendFit:
    """Train the bend of a single-bend chain (`polychain`) or quadratic Bezier curve from a
    to b (Garipov et al. 2018): a is canonicalized and b canonicalized and aligned to it,
    both frozen; the bend starts at the geodesic (or linear) midpoint and is trained with
    SGD (momentum, cosine rate) to minimize the cross-entropy at the point t ~ U(0, 1) drawn
    per minibatch, BatchNorm in train mode. Seeded; on `device`."""
    if kind not in BEND_KINDS:
        raise InvalidArgumentError(f"kind must be one of {', '.join(BEND_KINDS)}, got {kind!r}")
    if init not in BEND_INITS:
        raise InvalidArgumentError(f"init must be one of {', '.join(BEND_INITS)}, got {init!r}")
    if epochs <= 0 or batch_size <= 0:
        raise InvalidArgumentError(
            f"epochs and batch_size must be positive, got {epochs} and {batch_size}"
        )
    if not (lr > 0 and math.isfinite(lr)):
        raise InvalidArgumentError(f"lr must be a positive number, got {lr}")
    train = _train_data(data)
    if len(train) == 0:
        raise InvalidArgumentError("the training set is empty")
    check_finite_data(train, what="the training data")
    started = time.perf_counter()
    dev = torch.device(device)
    ends = endpoints(a, b, spec=spec, seed=seed)
    names = [name for name, _ in a.named_parameters()]
    state_a = {k: v.to(dev) for k, v in ends.a.items()}
    state_b = {k: v.to(dev) for k, v in ends.b.items()}
    initial = {k: v.to(dev) for k, v in _initial_bend(ends, init).items()}
    bend = {n: initial[n].detach().clone().requires_grad_(True) for n in names}
    # Running statistics are updated in train mode but never used: every evaluation of the
    # path recomputes them (DESIGN.md's BatchNorm policy).
    buffers = {k: v.clone() for k, v in initial.items() if k not in bend}
    model = with_state(a, initial).to(dev).train()
    optimizer = torch.optim.SGD(
        list(bend.values()), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    weights = polychain_weights if kind == "polychain" else bezier_weights
    batch_gen = torch.Generator().manual_seed(derive_seed(seed, "bend-batches"))
    t_gen = torch.Generator().manual_seed(derive_seed(seed, "bend-t"))
    train = train.to(dev)
    # Only BatchNorm cannot train on a last minibatch of one; other models keep theirs.
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    steps_per_epoch = batch_count(len(train), batch_size, merge_single_last=batchnorm)
    total = steps_per_epoch * epochs
    losses: list[float] = []
    step = 0
    with progress_helper.task(f"{kind} bend", total, enabled=progress) as reporter:
        for _ in range(epochs):
            epoch_loss = torch.zeros((), device=dev)
            seen = 0
            for x, y in iterate_batches(
                train, batch_size=batch_size, generator=batch_gen, merge_single_last=batchnorm
            ):
                t = float(torch.rand((), generator=t_gen, dtype=torch.float64))
                wa, wm, wb = weights(t)
                point = {n: wa * state_a[n] + wm * bend[n] + wb * state_b[n] for n in names}
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_factor("cosine", step, total)
                optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    logits = functional_call(model, {**buffers, **point}, (x,))
                    loss = F.cross_entropy(logits, y)
                    loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                epoch_loss += loss.detach() * y.shape[0]
                seen += y.shape[0]
                step += 1
                reporter.advance()
            mean = float(epoch_loss) / seen
            if not math.isfinite(mean):
                raise TrainingDivergedError(
                    f"bend training diverged (loss {mean}) in epoch {len(losses) + 1}; "
                    f"lower lr (now {lr})"
                )
            losses.append(mean)
            reporter.update(loss=f"{mean:.4f}")
    final = dict(initial)
    final.update({n: v.detach() for n, v in bend.items()})
    bend_model = with_state(a, {k: v.cpu() for k, v in final.items()}).eval()
    path_type = PolyChainPath if kind == "polychain" else BezierPath
    template = with_state(a, ends.a).eval()
    path = path_type(template, [ends.a, bend_model.state_dict(), ends.b])
    return BendFit(
        path=path,
        bend=bend_model,
        method="fit",
        losses=tuple(losses),
        epochs=epochs,
        grad_evals=step,
        wall_time=time.perf_counter() - started,
        settings={
            "kind": kind,
            "init": init,
            "epochs": epochs,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "seed": seed,
        },
    )


def retrain_midpoint(
    a: nn.Module,
    b: nn.Module,
    data: Split | DataLike,
    *,
    optimizer: str | Mapping[str, Any] = "sgd",
    epochs: int = 20,
    batch_size: int = 128,
    schedule: Literal["constant", "cosine", "step"] = "cosine",
    seed: int = 0,
    spec: SymmetrySpec | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> BendFit:
    """The cheaper bend: the geodesic midpoint of canonical a and b aligned to it,
    re-trained with `fit` until zero training error (or `epochs`), then put in canonical
    form and aligned to a, so that a, the bend and b share one coordinate system. The
    result's path is the single-bend chain through it."""
    started = time.perf_counter()
    ends = endpoints(a, b, spec=spec, seed=seed)
    assert ends.spec is not None
    midpoint = with_state(a, slerp_state(ends.a, ends.b, 0.5, ends.spec))
    result = fit(
        midpoint,
        data,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        schedule=schedule,
        seed=seed,
        device=device,
        progress=progress,
    )
    trained = result.model.cpu()
    reference = with_state(a, ends.a)
    alignment = align_models(trained, reference, spec=ends.spec, seed=seed)
    canonical = canonical_state(trained.state_dict(), ends.spec, output="keep")
    bend_state = transform_state(canonical, ends.spec, alignment.transform())
    bend_model = with_state(a, bend_state).eval()
    template = with_state(a, ends.a).eval()
    path = PolyChainPath(template, [ends.a, bend_model.state_dict(), ends.b])
    return BendFit(
        path=path,
        bend=bend_model,
        method="retrain",
        losses=tuple(r.train_loss for r in result.history),
        epochs=result.epochs,
        grad_evals=result.grad_evals,
        wall_time=time.perf_counter() - started,
        settings={
            "optimizer": dict(result.optimizer),
            "epochs": epochs,
            "batch_size": batch_size,
            "schedule": schedule,
            "seed": seed,
            "reached_zero_train_error": result.reached_zero_train_error,
        },
    )
