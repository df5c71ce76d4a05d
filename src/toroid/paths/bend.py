"""Bends: the middle point of a single-bend chain (or the control point of a quadratic
Bezier curve) between two minimizers, trained so that the whole path has low loss.

`fit_bend` trains the bend on the shared training loop (toroid.train.loop) as a population
of one network: `_BendNetwork`, whose parameters are the bend's weights and whose forward
is the network at the path point w(t) = wa a + wm bend + wb b, with t drawn from the
network's own "t" stream whenever a minibatch becomes the current one. So every registered
optimizer trains bends, and a bend's training is checkpointed and resumed like `fit`'s."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.func import functional_call

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, TensorData, as_tensor_data
from toroid.errors import InvalidArgumentError, TrainingDivergedError
from toroid.evaluate.single import inputs_like
from toroid.manifold.geodesic import slerp_state
from toroid.models.config import CONFIG_ATTRIBUTE
from toroid.models.finite import check_finite_data
from toroid.optim.registry import default_batch_size, make_optimizer, resolve_optimizer
from toroid.paths.path import (
    AffinePath,
    BezierPath,
    Endpoints,
    PolyChainPath,
    bezier_weights,
    endpoints,
    polychain_weights,
)
from toroid.storage import has_bundle
from toroid.symmetry.align import align as align_models
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.slots import State
from toroid.symmetry.transform import transform_state, with_state
from toroid.symmetry.types import SymmetrySpec
from toroid.train import derive_seed, fit
from toroid.train.gradients import LoopGradients
from toroid.train.loop import Checkpoint, Network, NetworkPlan, has_batchnorm, new_state, run_epochs
from toroid.train.records import EpochRecord
from toroid.train.schedules import Schedule, check_schedule
from toroid.train.state import STATE_FORMAT, STATE_STEM, TrainState, restore_states

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


def _train_data(data: Split | DataLike) -> TensorData:
    return as_tensor_data(data.train if isinstance(data, Split) else data)


class _BendNetwork(nn.Module):
    """The network the training loop trains for a bend. Its parameters are the bend's
    weights (those of `net`, a copy of the template holding the initial bend), its buffers
    `net`'s BatchNorm running statistics, which train mode updates and nothing uses (every
    evaluation of a path recomputes them, DESIGN.md's BatchNorm policy). Its forward is
    `net` at the path point w(t) = wa a + wm bend + wb b, with the frozen ends a and b
    (held on the device as plain tensors: neither trained nor saved) and `t` the point
    drawn for the current minibatch."""

    def __init__(
        self,
        net: nn.Module,
        a: State,
        b: State,
        weights: Callable[[float], tuple[float, float, float]],
    ) -> None:
        super().__init__()
        self.net = net
        names = [name for name, _ in net.named_parameters()]
        self._ends = ({n: a[n] for n in names}, {n: b[n] for n in names})
        self._weights = weights
        self.t = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wa, wm, wb = self._weights(self.t)
        a, b = self._ends
        point = {n: wa * a[n] + wm * p + wb * b[n] for n, p in self.net.named_parameters()}
        out: torch.Tensor = functional_call(self.net, point, (x,))
        return out


def _draw_t(state: TrainState) -> None:
    """The loop's `on_take`: a new point t ~ U(0, 1) on the path for each minibatch."""
    cast(_BendNetwork, state.model).t = float(
        torch.rand((), generator=state.generators["t"], dtype=torch.float64)
    )


def _bend_optimizer(
    optimizer: str | Mapping[str, Any],
    lr: float | None,
    momentum: float | None,
    weight_decay: float | None,
) -> dict[str, Any]:
    """The resolved optimizer config: the registry's defaults, then `optimizer`'s own
    values, then lr, momentum and weight_decay where given (a wrapper such as sam takes them
    for its base)."""
    for name, value, least in (
        ("lr", lr, "> 0"),
        ("momentum", momentum, ">= 0"),
        ("weight_decay", weight_decay, ">= 0"),
    ):
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and (value > 0 if least == "> 0" else value >= 0)):
            raise InvalidArgumentError(f"{name} must be a finite number {least}, got {value!r}")
    return resolve_optimizer(optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _ends_digest(ends: Endpoints) -> str:
    """A hash of the frozen ends, so that a bend's training state is resumed only for the
    ends it was trained between."""
    digest = hashlib.sha256()
    for side in (ends.a, ends.b):
        for name in sorted(side):
            value = side[name].detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{value.dtype}:{tuple(side[name].shape)}".encode())
            digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fit_bend(
    a: nn.Module,
    b: nn.Module,
    data: Split | DataLike,
    *,
    kind: BendKind = "polychain",
    init: BendInit = "geodesic_midpoint",
    epochs: int = 10,
    optimizer: str | Mapping[str, Any] = "sgd",
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    batch_size: int | None = None,
    schedule: Schedule = "cosine",
    seed: int = 0,
    spec: SymmetrySpec | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> BendFit:
    """Train the bend of a single-bend chain (`polychain`) or quadratic Bezier curve from a
    to b (Garipov et al. 2018): a is canonicalized and b canonicalized and aligned to it,
    both frozen; the bend starts at the geodesic (or linear) midpoint and is trained to
    minimize the cross-entropy at the point t ~ U(0, 1) drawn per minibatch, BatchNorm in
    train mode, for `epochs` passes over the training data (no stop at zero error).

    Training runs on the shared loop (toroid.train.loop), so `optimizer` is any registered
    name or config (sam, adam, esgd, ...; an optimizer that takes several minibatches per
    step draws a t for each). `lr`, `momentum` and `weight_decay`, when given, override the
    config's values (for a wrapper such as sam, its base's); left at None they are the
    config's, and the default optimizer "sgd" has lr 0.05, momentum 0.9 and weight decay 0:
    the bend of earlier versions, bit for bit. `batch_size` defaults to the preset's (128
    but for sgd-large-batch); the rate follows `schedule` per minibatch (cosine by default).
    With `checkpoint_dir` the training state is saved atomically after every epoch, and
    `resume=True` continues it to the same bend as an uninterrupted run.
    `on_epoch_end(record)` is called after each epoch (after the save). Seeded (minibatch
    order and the t's from `seed`); on `device`. A non-finite loss raises
    `TrainingDivergedError`."""
    if kind not in BEND_KINDS:
        raise InvalidArgumentError(f"kind must be one of {', '.join(BEND_KINDS)}, got {kind!r}")
    if init not in BEND_INITS:
        raise InvalidArgumentError(f"init must be one of {', '.join(BEND_INITS)}, got {init!r}")
    size_given = 1 if batch_size is None else batch_size
    for name, value in (("epochs", epochs), ("batch_size", size_given)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    check_schedule(schedule)
    config = _bend_optimizer(optimizer, lr, momentum, weight_decay)
    size = default_batch_size(config) if batch_size is None else batch_size
    train = _train_data(data)
    if len(train) == 0:
        raise InvalidArgumentError("the training set is empty")
    check_finite_data(train, what="the training data")
    started = time.perf_counter()
    dev = torch.device(device)
    ends = endpoints(a, b, spec=spec, seed=seed)
    initial = _initial_bend(ends, init)
    weights = polychain_weights if kind == "polychain" else bezier_weights
    network = _BendNetwork(
        with_state(a, initial).to(dev),
        {k: v.to(dev) for k, v in ends.a.items()},
        {k: v.to(dev) for k, v in ends.b.items()},
        weights,
    )
    if has_batchnorm(network) and (len(train) == 1 or size == 1):
        raise InvalidArgumentError(
            "BatchNorm cannot train on a minibatch of one: use at least 2 training examples "
            f"and a batch size of at least 2 (got {len(train)} examples, batch size {size})"
        )
    reference = next(network.parameters())
    train = TensorData(inputs_like(train.x, reference), train.y.to(dev))
    plan = NetworkPlan(
        optimizer=config,
        epochs=epochs,
        batch_size=size,
        schedule=schedule,
        seed=seed,
        stop_at_zero_train_error=False,
    )
    settings = {
        "format": STATE_FORMAT,
        "bend": {"kind": kind, "init": init, "ends": _ends_digest(ends)},
        "model": getattr(a, CONFIG_ATTRIBUTE, type(a).__name__),
        "train_size": len(train),
        "train_shape": list(train.x.shape[1:]),
        "optimizer": config,
        "epochs": epochs,
        "batch_size": size,
        "schedule": schedule,
        "seed": seed,
    }
    fingerprint = hashlib.sha256(
        json.dumps(settings, sort_keys=True, default=str).encode()
    ).hexdigest()
    state_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, "global"))
        # The minibatch order and the t's come from the streams earlier versions seeded.
        state = new_state(
            network,
            make_optimizer(config, network.parameters()),
            seed,
            dev,
            streams={"batches": "bend-batches", "t": "bend-t"},
        )
        if state_dir is not None and has_bundle(state_dir, STATE_STEM):
            if not resume:
                raise InvalidArgumentError(
                    f"{state_dir} already holds training state; pass resume=True (CLI: "
                    "--resume) to continue it, or choose another checkpoint_dir"
                )
            restore_states(state_dir, fingerprint=fingerprint, states=[state], device=dev)
        before = state.elapsed
        loop = Network(0, state, plan, train, augment=False, on_take=_draw_t)
        with progress_helper.task(f"{kind} bend", epochs, enabled=progress) as reporter:
            reporter.advance(state.epoch)

            def report(_: object) -> None:
                if state.history and state.diverged is None:
                    reporter.advance(1, loss=f"{state.history[-1].train_loss:.4f}")

            run_epochs(
                [loop],
                LoopGradients([network]),
                eval_batch_size=1000,
                checkpoint=(
                    Checkpoint(state_dir, fingerprint, settings) if state_dir is not None else None
                ),
                cuda=dev.type == "cuda",
                on_epoch_end=None if on_epoch_end is None else lambda _, r: on_epoch_end(r),
                on_population_epoch=report,
            )
    if state.diverged is not None:
        raise TrainingDivergedError(f"bend training diverged: {state.diverged}")
    # The bend network keeps the initial state's buffers: its running statistics, like
    # those of any point of the path, are recomputed wherever it is evaluated.
    final = {k: v.detach().cpu() for k, v in initial.items()}
    final.update({n: p.detach().cpu() for n, p in network.net.named_parameters()})
    bend_model = with_state(a, final).eval()
    path_type = PolyChainPath if kind == "polychain" else BezierPath
    template = with_state(a, ends.a).eval()
    path = path_type(template, [ends.a, bend_model.state_dict(), ends.b])
    return BendFit(
        path=path,
        bend=bend_model,
        method="fit",
        losses=tuple(r.train_loss for r in state.history),
        epochs=len(state.history),
        grad_evals=state.grad_evals,
        # Training time of earlier runs of a resumed bend, and all of this one.
        wall_time=before + time.perf_counter() - started,
        settings={
            "kind": kind,
            "init": init,
            "epochs": epochs,
            "optimizer": dict(config),
            "lr": config.get("lr"),
            "momentum": config.get("momentum"),
            "weight_decay": config.get("weight_decay"),
            "batch_size": size,
            "schedule": schedule,
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
