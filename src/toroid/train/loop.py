"""The one training loop, shared by `fit`, `fit_population` and `fit_bend`.

Each network's epoch is a generator (`Network.epoch`) that walks its own minibatch stream,
runs its optimizer's step plans (toroid.optim.protocol) and yields a `GradientRequest`
whenever it needs a gradient. `run_epochs` advances all networks of a population together:
each round it collects one request from every network still in its epoch, answers them in
one call (one vectorized pass, or one network after another) and sends each its loss.
Networks are synchronized at epoch ends, where their stopping rules are checked and the
population's state is saved, so that a resumed run makes exactly the rounds an
uninterrupted run makes. A network that has stopped, or diverged, takes part in no more
rounds; the others do not notice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toroid.data.batches import batch_count, iterate_batches, random_crop_flip
from toroid.data.tensordata import TensorData
from toroid.evaluate import evaluate, recompute_bn
from toroid.optim.protocol import DrawsNoise, ProgressAware, RecomputesBatchNorm, plan_of
from toroid.storage import has_bundle
from toroid.train.closure import Batch, BatchClosure
from toroid.train.gradients import GradientRequest, Gradients
from toroid.train.records import EpochRecord, derive_seed
from toroid.train.schedules import Schedule, lr_factor
from toroid.train.state import STATE_STEM, TrainState, save_states

# Eval-mode training error is checked for zero only once the running error is this low.
ZERO_CHECK_BELOW = 0.01
# Training inputs on which BatchNorm statistics are re-estimated for optimizers whose
# parameters are not where the statistics were gathered (RecomputesBatchNorm).
_BN_SAMPLES = 2000


@dataclass(frozen=True)
class NetworkPlan:
    """How one network trains: a resolved optimizer config, its epochs, minibatch size,
    learning-rate schedule, seed and stopping rule."""

    optimizer: dict[str, Any]
    epochs: int
    batch_size: int
    schedule: Schedule
    seed: int
    stop_at_zero_train_error: bool


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def refresh_batchnorm(
    net: nn.Module, opt: torch.optim.Optimizer, train_data: TensorData, seed: int
) -> None:
    """Re-estimate the BatchNorm statistics of `net` in place when the optimizer left
    parameters in it that the statistics were not gathered at (replicated SGD's center)."""
    if not (isinstance(opt, RecomputesBatchNorm) and opt.recomputes_batchnorm):
        return
    samples = min(_BN_SAMPLES, len(train_data))
    # recompute_bn refuses a last minibatch of one input; 400 avoids it where 500 would not.
    batch = 500 if samples % 500 != 1 else 400
    fresh = recompute_bn(net, train_data, samples=samples, batch_size=batch, seed=seed)
    with torch.no_grad():
        for own, new in zip(net.buffers(), fresh.buffers(), strict=True):
            own.copy_(new)


def new_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    seed: int,
    device: torch.device,
    *,
    streams: dict[str, str] | None = None,
) -> TrainState:
    """A fresh state: each random stream (minibatch order, augmentation, optimizer noise,
    what the model draws in its forward, and any in `streams`, name -> purpose) seeded
    from `seed`."""
    purposes = {
        "batches": "batches",
        "augment": "augment",
        "noise": "noise",
        "global": "global",
        **(streams or {}),
    }
    # Only an optimizer's noise is drawn on the training device, and only for one that
    # draws noise: the other states load on any device, so a run can resume elsewhere.
    noise_device = device if isinstance(optimizer, DrawsNoise) else torch.device("cpu")
    generators = {
        name: torch.Generator(device=noise_device if name == "noise" else "cpu").manual_seed(
            derive_seed(seed, purpose)
        )
        for name, purpose in purposes.items()
    }
    if isinstance(optimizer, DrawsNoise):
        optimizer.use_generator(generators["noise"])
    # Captured before any restore: a restored optimizer carries the last scheduled rate.
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    return TrainState(model, optimizer, generators, base_lrs)


@dataclass
class _Diverged:
    message: str


# An epoch of one network: yields gradient requests, is sent (loss, wrong predictions),
# returns the running (loss, error) or how it diverged.
EpochRun = Generator[
    GradientRequest, tuple[torch.Tensor, torch.Tensor], "tuple[float, float] | _Diverged"
]


class Network:
    """One network of a population as the loop drives it."""

    def __init__(
        self,
        index: int,
        state: TrainState,
        plan: NetworkPlan,
        train: TensorData,
        *,
        augment: bool,
        on_take: Callable[[TrainState], None] | None = None,
    ) -> None:
        self.index, self.state, self.plan, self.train = index, state, plan, train
        self.augment = augment
        self.batchnorm = has_batchnorm(state.model)
        self.batches_per_epoch = batch_count(
            len(train), plan.batch_size, merge_single_last=self.batchnorm
        )
        self.cursor = _Cursor(state, self._stream(), self._stream, on_take)
        self.lr = state.base_lrs[0]
        self._counted = 0  # the cursor's gradient evaluations already in state.grad_evals

    def _stream(self) -> Iterator[Batch]:
        generators = self.state.generators
        for x, y in iterate_batches(
            self.train,
            batch_size=self.plan.batch_size,
            generator=generators["batches"],
            merge_single_last=self.batchnorm,
        ):
            if self.augment:
                x = random_crop_flip(x, generator=generators["augment"])
            yield x, y

    def count_grad_evals(self) -> int:
        """Move the gradient evaluations made since the last call into the state's total,
        and return that total."""
        self.state.grad_evals += self.cursor.grad_evals - self._counted
        self._counted = self.cursor.grad_evals
        return self.state.grad_evals

    def epoch(
        self,
    ) -> EpochRun:
        """One epoch: yields gradient requests, is sent (loss, wrong); returns the running
        (loss, error) over the epoch's minibatches, or how it diverged."""
        state, plan, cursor = self.state, self.plan, self.cursor
        opt = state.optimizer
        total = self.batches_per_epoch * plan.epochs
        state.model.train()
        cursor.start_epoch(self._stream())
        epoch_start = cursor.batches
        self.lr = state.base_lrs[0]
        while cursor.has_next():
            # Progress counts minibatches, in whole epochs so far plus this one's (a step
            # that runs into a fresh pass ends the epoch, see BatchCursor).
            done = state.epoch * self.batches_per_epoch + cursor.batches - epoch_start
            if isinstance(opt, ProgressAware):
                opt.set_progress(min(done / total, 1.0))
            if plan.schedule != "constant":
                factor = lr_factor(plan.schedule, done, total)
                for group, base in zip(opt.param_groups, state.base_lrs, strict=True):
                    group["lr"] = base * factor
                self.lr = state.base_lrs[0] * factor
            cursor.next_batch()
            step = plan_of(opt, cursor, cursor)
            try:
                update_bn_stats = next(step)
                while True:
                    loss, wrong = yield GradientRequest(self.index, cursor.batch, update_bn_stats)
                    cursor.record(loss, wrong)
                    update_bn_stats = step.send(loss)
            except StopIteration as finished:
                loss = finished.value
            if loss is None or not bool(torch.isfinite(loss)):
                shown = float(loss) if loss is not None else None
                return _Diverged(
                    f"training loss became {shown} at epoch {state.epoch + 1}, "
                    f"step {state.step + 1}, lr {self.lr:g}"
                )
            state.step += 1
        return float(cursor.loss_sum) / cursor.seen, int(cursor.wrong) / cursor.seen


class _Cursor(BatchClosure):
    """The network's minibatch stream, and its step closure when it runs alone (for
    optimizers without a step plan that evaluate more than once per step). Tells the
    network (through `on_take`) when a minibatch becomes the current one: a bend draws its
    point on the path there."""

    def __init__(
        self,
        state: TrainState,
        batches: Iterator[Batch],
        refill: Callable[[], Iterator[Batch]],
        on_take: Callable[[TrainState], None] | None,
    ) -> None:
        super().__init__(state.model, batches, refill)
        self._on_take, self._state = on_take, state

    def next_batch(self) -> None:
        super().next_batch()
        if self._on_take is not None:
            self._on_take(self._state)


@dataclass(frozen=True)
class Checkpoint:
    """Where and as what a population's state is saved after every epoch."""

    directory: Path
    fingerprint: str
    settings: Any


def run_epochs(
    networks: Sequence[Network],
    gradients: Gradients,
    *,
    eval_batch_size: int,
    checkpoint: Checkpoint | None = None,
    cuda: bool = False,
    on_epoch_end: Callable[[int, EpochRecord], None] | None = None,
    on_population_epoch: Callable[[Sequence[Network]], None] | None = None,
) -> None:
    """Train `networks` until each has finished (stopped by its rule, run its epochs, or
    diverged), updating their states in place."""
    states = [n.state for n in networks]
    while True:
        active = [n for n in networks if not n.state.finished]
        if not active:
            return
        started = time.perf_counter()
        epochs = {n.index: n.epoch() for n in active}
        pending: dict[int, GradientRequest] = {}
        outcomes: dict[int, tuple[float, float] | _Diverged] = {}
        for index, epoch in epochs.items():
            _advance(index, epoch, None, pending, outcomes)
        while pending:
            requests = [pending[i] for i in sorted(pending)]
            answers = gradients(requests)
            pending = {}
            for request, answer in zip(requests, answers, strict=True):
                _advance(request.member, epochs[request.member], answer, pending, outcomes)
        seconds = time.perf_counter() - started
        done = []
        for network in active:
            outcome = outcomes[network.index]
            state = network.state
            state.elapsed += seconds
            if isinstance(outcome, _Diverged):
                where = ""
                # A population's next bundle keeps no weights of a diverged network.
                saved = checkpoint is not None and has_bundle(checkpoint.directory, STATE_STEM)
                if saved and len(networks) == 1:
                    assert checkpoint is not None
                    where = f" (last good state in {checkpoint.directory})"
                state.diverged = f"{outcome.message}{where}; lower the learning rate"
                state.finished = True
                continue
            done.append((network.index, _end_epoch(network, outcome, seconds, eval_batch_size)))
        # Nothing to save when every network diverged: the last bundle stays the last good one.
        if done and checkpoint is not None:
            save_states(
                checkpoint.directory,
                fingerprint=checkpoint.fingerprint,
                settings=checkpoint.settings,
                states=states,
                cuda=cuda,
            )
        if on_epoch_end is not None:
            for index, record in done:
                on_epoch_end(index, record)
        if on_population_epoch is not None:
            on_population_epoch(active)


def _advance(
    index: int,
    epoch: EpochRun,
    answer: tuple[torch.Tensor, torch.Tensor] | None,
    pending: dict[int, GradientRequest],
    outcomes: dict[int, tuple[float, float] | _Diverged],
) -> None:
    try:
        pending[index] = next(epoch) if answer is None else epoch.send(answer)
    except StopIteration as done:
        outcomes[index] = done.value


def _end_epoch(
    network: Network, running: tuple[float, float], seconds: float, eval_batch_size: int
) -> EpochRecord:
    """The network's epoch record, and its stopping rule."""
    state, plan = network.state, network.plan
    train_loss, train_error = running
    eval_error = None
    if plan.stop_at_zero_train_error and train_error <= ZERO_CHECK_BELOW:
        refresh_batchnorm(
            state.model, state.optimizer, network.train, derive_seed(plan.seed, "batchnorm")
        )
        eval_error = evaluate(state.model, network.train, batch_size=eval_batch_size).error
        if eval_error == 0.0:
            state.finished, state.stopped_by = True, "zero-train-error"
    record = EpochRecord(
        epoch=state.epoch + 1,
        lr=network.lr,
        train_loss=train_loss,
        train_error=train_error,
        eval_train_error=eval_error,
        seconds=seconds,
        grad_evals=network.count_grad_evals(),
    )
    state.history.append(record)
    state.epoch += 1
    if not state.finished and state.epoch >= plan.epochs:
        state.finished, state.stopped_by = True, "epochs"
    return record
