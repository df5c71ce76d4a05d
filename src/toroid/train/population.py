"""`fit_population`: many networks of one architecture trained together, their gradients
evaluated in one vectorized pass per round; `fit` is a population of one."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, TensorData, as_tensor_data
from toroid.errors import InvalidArgumentError, TrainingDivergedError
from toroid.evaluate import evaluate
from toroid.evaluate.single import inputs_like
from toroid.models.config import CONFIG_ATTRIBUTE
from toroid.models.finite import check_finite_data, check_finite_model
from toroid.optim.registry import default_batch_size, make_optimizer, resolve_optimizer
from toroid.storage import has_bundle
from toroid.train.gradients import (
    ENGINES,
    Engine,
    LoopGradients,
    check_one_architecture,
    gradients_for,
)
from toroid.train.loop import (
    Checkpoint,
    Network,
    NetworkPlan,
    has_batchnorm,
    new_state,
    refresh_batchnorm,
    run_epochs,
)
from toroid.train.records import EpochRecord, TrainResult, derive_seed
from toroid.train.schedules import Schedule, check_schedule
from toroid.train.state import STATE_FORMAT, STATE_STEM, TrainState, restore_states


@dataclass(frozen=True)
class Member:
    """One network of a population: its initial `model` (a module, or a model config that
    is built with the seed `derive_seed(seed, "init")`, as `toroid train` does), its
    optimizer (a registered name or config), and its seed, which fixes its minibatch order,
    augmentation and optimizer noise exactly as `fit(seed=...)` does. `epochs`,
    `batch_size`, `schedule` and `weight_decay` default to the population's (the batch size
    to the optimizer preset's)."""

    model: nn.Module | Mapping[str, Any]
    optimizer: str | Mapping[str, Any] = "sgd"
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    schedule: Schedule | None = None
    weight_decay: float | None = None


def fit_population(
    members: Sequence[Member],
    split: Split | DataLike,
    *,
    epochs: int,
    schedule: Schedule = "constant",
    device: str | torch.device = "cpu",
    stop_at_zero_train_error: bool = True,
    augment: bool = False,
    engine: Engine = "vmap",
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    eval_batch_size: int = 1000,
    on_epoch_end: Callable[[int, EpochRecord], None] | None = None,
) -> tuple[TrainResult | TrainingDivergedError, ...]:
    """Train every member on `split.train` as `fit` would train it alone, all together.

    Each round, every network still training gets one gradient: with `engine="vmap"` all
    in one `torch.func.vmap` pass over their stacked weights per minibatch size (members of
    different batch sizes form separate passes), with `engine="loop"` one after another,
    which is what `fit` computes: bit for bit, whatever the population. With "vmap" a
    member equals its own `fit` up to floating-point rounding (batched products add in
    another order), and which other networks share its passes can change its last bits too
    (observed with BatchNorm, whose bias gradient rounds differently in a pass of one network
    than of several; not without it); the same population always gives the same bits.
    Every optimizer works, each member with its own hyperparameters, BatchNorm statistics
    and random streams.

    A member stops at its own rule (zero eval-mode training error, or its last epoch) and
    takes no more steps; a member whose loss turns non-finite stops there, and its entry in
    the result is the `TrainingDivergedError` instead of a `TrainResult`; the others go on.
    With `checkpoint_dir`, the whole population's state is saved atomically after every
    epoch, and `resume=True` continues it to the same weights as an uninterrupted run.
    `on_epoch_end(member, record)` is called after each member's epoch (after the save).
    A member's `wall_time` is the time the population took while the member trained.
    """
    if not members:
        raise InvalidArgumentError("fit_population needs at least one member")
    for index, member in enumerate(members):
        if not isinstance(member, Member):
            raise InvalidArgumentError(
                f"population member {index} is a {type(member).__name__}; expected a "
                "toroid.train.Member"
            )
    models = [_initial_model(m) for m in members]
    plans = [
        _plan(
            m,
            epochs=epochs,
            schedule=schedule,
            stop_at_zero_train_error=stop_at_zero_train_error,
        )
        for m in members
    ]
    return train_population(
        models,
        plans,
        split,
        device=device,
        augment=augment,
        engine=engine,
        progress=progress,
        label=f"train population of {len(members)}",
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        eval_batch_size=eval_batch_size,
        on_epoch_end=on_epoch_end,
    )


def _initial_model(member: Member) -> nn.Module:
    if isinstance(member.model, nn.Module):
        return member.model
    if isinstance(member.model, Mapping):
        from toroid.models import build

        return build(dict(member.model), seed=derive_seed(member.seed, "init"))
    raise InvalidArgumentError(
        f"a member's model must be a torch module or a model config, got "
        f"{type(member.model).__name__}"
    )


def _plan(
    member: Member, *, epochs: int, schedule: Schedule, stop_at_zero_train_error: bool
) -> NetworkPlan:
    member_epochs = epochs if member.epochs is None else member.epochs
    if isinstance(member_epochs, bool) or not isinstance(member_epochs, int) or member_epochs <= 0:
        raise InvalidArgumentError(f"epochs must be positive, got {member_epochs}")
    size = member.batch_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise InvalidArgumentError(f"batch_size must be positive, got {size}")
    member_schedule = schedule if member.schedule is None else member.schedule
    check_schedule(member_schedule)
    if member.weight_decay is not None and not member.weight_decay >= 0:
        raise InvalidArgumentError(f"weight_decay must be >= 0, got {member.weight_decay}")
    config = resolve_optimizer(member.optimizer, weight_decay=member.weight_decay)
    return NetworkPlan(
        optimizer=config,
        epochs=member_epochs,
        batch_size=default_batch_size(config) if size is None else size,
        schedule=member_schedule,
        seed=member.seed,
        stop_at_zero_train_error=stop_at_zero_train_error,
    )


def _split_parts(split: Split | DataLike) -> tuple[TensorData, TensorData | None]:
    if isinstance(split, Split):
        return split.train, split.test
    return as_tensor_data(split), None


def _rng_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def _reference_tensor(net: nn.Module, device: torch.device) -> torch.Tensor:
    """A floating tensor of the model's dtype on its device (float32 for a model with no
    floating parameters)."""
    for tensor in (*net.parameters(), *net.buffers()):
        if tensor.is_floating_point():
            return tensor
    return torch.empty(0, device=device)


def train_population(
    models: Sequence[nn.Module],
    plans: Sequence[NetworkPlan],
    split: Split | DataLike,
    *,
    device: str | torch.device,
    augment: bool,
    engine: Engine,
    progress: bool,
    label: str,
    checkpoint_dir: str | Path | None,
    resume: bool,
    eval_batch_size: int,
    on_epoch_end: Callable[[int, EpochRecord], None] | None,
) -> tuple[TrainResult | TrainingDivergedError, ...]:
    """The work of `fit_population` and `fit`, on checked plans."""
    if engine not in ENGINES:
        raise InvalidArgumentError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    train_data, test_data = _split_parts(split)
    if len(train_data) == 0:
        raise InvalidArgumentError("the training set is empty")
    check_one_architecture(models)
    for model in models:
        check_finite_model(model)
    check_finite_data(train_data, what="the training data")
    if augment and train_data.x.dim() != 4:
        raise InvalidArgumentError(
            f"augment=True needs image inputs (N, C, H, W), got shape {tuple(train_data.x.shape)}"
        )
    batchnorm = has_batchnorm(models[0])
    if batchnorm and len(train_data) == 1:
        raise InvalidArgumentError(
            "the training set holds 1 example, but the model has BatchNorm, which cannot "
            "train on a minibatch of one; use at least 2 training examples"
        )
    if batchnorm and any(plan.batch_size == 1 for plan in plans):
        raise InvalidArgumentError(
            "batch_size 1 with a BatchNorm model: BatchNorm cannot train on a minibatch of "
            "one; use a batch size of at least 2"
        )
    dev = torch.device(device)
    state_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    settings = {
        "format": STATE_FORMAT,
        "engine": engine,
        "augment": augment,
        "train_size": len(train_data),
        "train_shape": list(train_data.x.shape[1:]),
        "members": [
            {
                "model": getattr(model, CONFIG_ATTRIBUTE, type(model).__name__),
                "optimizer": plan.optimizer,
                "epochs": plan.epochs,
                "batch_size": plan.batch_size,
                "schedule": plan.schedule,
                "seed": plan.seed,
                "stop_at_zero_train_error": plan.stop_at_zero_train_error,
            }
            for model, plan in zip(models, plans, strict=True)
        ],
    }
    fingerprint = hashlib.sha256(
        json.dumps(settings, sort_keys=True, default=str).encode()
    ).hexdigest()

    networks, gradients = gradients_for(engine, [copy.deepcopy(m).to(dev) for m in models])
    # Inputs in the model's dtype and on its device, as evaluate and the Hessian do.
    reference = _reference_tensor(networks[0], dev)
    train_data = TensorData(inputs_like(train_data.x, reference), train_data.y.to(dev))
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(derive_seed(plans[0].seed, "global"))
        states = [
            new_state(net, make_optimizer(plan.optimizer, net.parameters()), plan.seed, dev)
            for net, plan in zip(networks, plans, strict=True)
        ]
        if isinstance(gradients, LoopGradients):
            gradients.use_generators([state.generators["global"] for state in states])
        if state_dir is not None and has_bundle(state_dir, STATE_STEM):
            if not resume:
                raise InvalidArgumentError(
                    f"{state_dir} already holds training state; pass resume=True (CLI: "
                    "--resume) to continue it, or choose another checkpoint_dir (CLI: --out)"
                )
            restore_states(state_dir, fingerprint=fingerprint, states=states, device=dev)
        loop = [
            Network(k, state, plan, train_data, augment=augment)
            for k, (state, plan) in enumerate(zip(states, plans, strict=True))
        ]
        checkpoint = Checkpoint(state_dir, fingerprint, settings) if state_dir is not None else None
        total = max(plan.epochs for plan in plans)
        with progress_helper.task(label, total, enabled=progress) as reporter:
            reporter.advance(max(state.epoch for state in states))

            def report(active: Sequence[Network]) -> None:
                last = [n.state.history[-1] for n in active if n.state.diverged is None]
                if len(active) == 1 and last:
                    reporter.advance(
                        1, loss=f"{last[0].train_loss:.4f}", error=f"{last[0].train_error:.4f}"
                    )
                else:
                    training = sum(not n.state.finished for n in loop)
                    reporter.advance(1, training=f"{training}/{len(loop)}")

            run_epochs(
                loop,
                gradients,
                eval_batch_size=eval_batch_size,
                checkpoint=checkpoint,
                cuda=dev.type == "cuda",
                on_epoch_end=on_epoch_end,
                on_population_epoch=report,
            )
    return tuple(
        _result(model, state, plan, train_data, test_data, dev, eval_batch_size)
        for model, state, plan in zip(models, states, plans, strict=True)
    )


def _result(
    original: nn.Module,
    state: TrainState,
    plan: NetworkPlan,
    train_data: TensorData,
    test_data: TensorData | None,
    device: torch.device,
    eval_batch_size: int,
) -> TrainResult | TrainingDivergedError:
    if state.diverged is not None:
        return TrainingDivergedError(state.diverged)
    refresh_batchnorm(state.model, state.optimizer, train_data, derive_seed(plan.seed, "batchnorm"))
    # A model of its own: the trained network's weights may be views into the population's
    # stacked storage.
    net = copy.deepcopy(original).to(device)
    net.load_state_dict(state.model.state_dict())
    train_metrics = evaluate(net, train_data, batch_size=eval_batch_size)
    test_metrics = (
        evaluate(net, test_data.to(device), batch_size=eval_batch_size)
        if test_data is not None and len(test_data)
        else None
    )
    net.eval()
    return TrainResult(
        model=net,
        history=tuple(state.history),
        train=train_metrics,
        test=test_metrics,
        epochs=len(state.history),
        reached_zero_train_error=train_metrics.error == 0.0,
        wall_time=state.elapsed,
        grad_evals=state.history[-1].grad_evals if state.history else 0,
        optimizer=plan.optimizer,
        seed=plan.seed,
        stopped_by=state.stopped_by or "epochs",
    )
