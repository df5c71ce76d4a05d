"""`fit`: train a copy of a model on in-memory data, deterministically and resumably."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from toroid import progress as progress_helper
from toroid.data.batches import batch_count, iterate_batches, random_crop_flip
from toroid.data.tensordata import DataLike, Split, TensorData, as_tensor_data
from toroid.errors import (
    CheckpointError,
    InvalidArgumentError,
    ResumeMismatchError,
    TrainingDivergedError,
)
from toroid.evaluate import Metrics, evaluate, recompute_bn
from toroid.evaluate.single import inputs_like
from toroid.models.config import CONFIG_ATTRIBUTE
from toroid.models.finite import check_finite_data, check_finite_model
from toroid.optim.protocol import ProgressAware, RecomputesBatchNorm
from toroid.optim.registry import default_batch_size, make_optimizer, resolve_optimizer
from toroid.storage import flatten_state, has_bundle, read_bundle, unflatten_state, write_bundle
from toroid.train.closure import Batch, BatchClosure
from toroid.train.schedules import Schedule, check_schedule, lr_factor

_STATE_STEM = "train-state"
# Eval-mode training error is checked for zero only once the running error is this low.
_ZERO_CHECK_BELOW = 0.01
# Training inputs on which BatchNorm statistics are re-estimated for optimizers whose
# parameters are not where the statistics were gathered (RecomputesBatchNorm).
_BN_SAMPLES = 2000


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: running (train-mode, as the minibatches were seen) loss and error, the
    eval-mode training error when it was checked, time, and cumulative gradient evaluations."""

    epoch: int
    lr: float
    train_loss: float
    train_error: float
    eval_train_error: float | None
    seconds: float
    grad_evals: int


@dataclass(frozen=True)
class TrainResult:
    """A trained model (a new object; the input model is untouched) and how it got there.
    Final metrics are eval-mode, on the un-augmented training and test sets."""

    model: nn.Module
    history: tuple[EpochRecord, ...]
    train: Metrics
    test: Metrics | None
    epochs: int
    reached_zero_train_error: bool
    wall_time: float
    grad_evals: int
    optimizer: Mapping[str, Any]
    seed: int

    @property
    def train_error(self) -> float:
        return self.train.error

    @property
    def test_error(self) -> float | None:
        return None if self.test is None else self.test.error


def derive_seed(seed: int, purpose: str) -> int:
    """Independent seeds for independent random streams of one run."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _split_parts(split: Split | DataLike) -> tuple[TensorData, TensorData | None]:
    if isinstance(split, Split):
        return split.train, split.test
    return as_tensor_data(split), None


def _fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _rng_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def fit(
    model: nn.Module,
    split: Split | DataLike,
    *,
    optimizer: str | Mapping[str, Any] = "sgd",
    epochs: int,
    batch_size: int | None = None,
    schedule: Schedule = "constant",
    weight_decay: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    stop_at_zero_train_error: bool = True,
    augment: bool = False,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    eval_batch_size: int = 1000,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train a copy of `model` with cross-entropy on `split.train` (a `Split`, or training
    data alone as a `TensorData` or `(x, y)`).

    `optimizer` is a registered name (a preset, see toroid.optim.presets) or a config such
    as `{"name": "sgd", "lr": 0.05}`; `weight_decay`, when given, overrides the config's.
    `batch_size` defaults to the preset's (1024 for sgd-large-batch, else 128). The
    learning rate follows `schedule` per minibatch consumed (optimizers that take several
    minibatches per step advance it by that many); an epoch is one pass over the data.
    Optimizers that follow training progress (ProgressAware) are told it before every step;
    those that leave parameters in the model that its BatchNorm statistics were not gathered
    at (RecomputesBatchNorm) get the statistics re-estimated before every evaluation. With
    `stop_at_zero_train_error`, training stops at the end of the first epoch whose
    eval-mode error on the whole (un-augmented) training set is zero.
    With `checkpoint_dir`, the full training state is saved atomically after every epoch;
    `resume=True` continues from it and ends with the same weights as an uninterrupted
    run. Same seed, same machine: bit-identical weights. Progress goes through
    `toroid.progress` (shown when the CLI or the user enabled it).
    """
    if epochs <= 0:
        raise InvalidArgumentError(f"epochs must be positive, got {epochs}")
    if batch_size is not None and batch_size <= 0:
        raise InvalidArgumentError(f"batch_size must be positive, got {batch_size}")
    check_schedule(schedule)
    if weight_decay is not None and weight_decay < 0:
        raise InvalidArgumentError(f"weight_decay must be >= 0, got {weight_decay}")
    train_data, test_data = _split_parts(split)
    if len(train_data) == 0:
        raise InvalidArgumentError("the training set is empty")
    check_finite_model(model)
    check_finite_data(train_data, what="the training data")
    if augment and train_data.x.dim() != 4:
        raise InvalidArgumentError(
            f"augment=True needs image inputs (N, C, H, W), got shape {tuple(train_data.x.shape)}"
        )
    dev = torch.device(device)
    opt_config = resolve_optimizer(optimizer, weight_decay=weight_decay)
    size = default_batch_size(opt_config) if batch_size is None else batch_size
    state_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    settings = {
        "model": getattr(model, CONFIG_ATTRIBUTE, type(model).__name__),
        "optimizer": opt_config,
        "epochs": epochs,
        "batch_size": size,
        "schedule": schedule,
        "seed": seed,
        "augment": augment,
        "stop_at_zero_train_error": stop_at_zero_train_error,
        "train_size": len(train_data),
        "train_shape": list(train_data.x.shape[1:]),
    }
    fingerprint = _fingerprint(settings)

    net = copy.deepcopy(model).to(dev)
    batchnorm = _has_batchnorm(net)
    if len(train_data) == 1 and batchnorm:
        raise InvalidArgumentError(
            "the training set holds 1 example, but the model has BatchNorm, which cannot "
            "train on a minibatch of one; use at least 2 training examples"
        )
    if size == 1 and batchnorm:
        raise InvalidArgumentError(
            "batch_size 1 with a BatchNorm model: BatchNorm cannot train on a minibatch of "
            "one; use a batch size of at least 2"
        )
    # Inputs in the model's dtype and on its device, as evaluate and the Hessian do.
    reference = _reference_tensor(net, dev)
    train_data = TensorData(inputs_like(train_data.x, reference), train_data.y.to(dev))
    opt = make_optimizer(opt_config, net.parameters())
    batch_gen = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    augment_gen = torch.Generator().manual_seed(derive_seed(seed, "augment"))
    # Only BatchNorm cannot train on a last minibatch of one; other models keep theirs.
    batches_per_epoch = batch_count(len(train_data), size, merge_single_last=batchnorm)
    total_batches = batches_per_epoch * epochs
    bn_seed = derive_seed(seed, "batchnorm")

    # Captured before any restore: a restored optimizer carries the last scheduled rate.
    base_lrs = [group["lr"] for group in opt.param_groups]
    history: list[EpochRecord] = []
    start_epoch, step, grad_evals_before, elapsed_before = 0, 0, 0, 0.0
    finished = False
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(derive_seed(seed, "global"))
        if state_dir is not None and has_bundle(state_dir, _STATE_STEM):
            if not resume:
                raise InvalidArgumentError(
                    f"{state_dir} already holds training state; pass resume=True (CLI: "
                    "--resume) to continue it, or choose another checkpoint_dir (CLI: --out)"
                )
            restored = _restore(state_dir, fingerprint, net, opt, batch_gen, augment_gen, dev)
            start_epoch, step, grad_evals_before, elapsed_before, finished, history = restored

        def epoch_batches() -> Iterator[Batch]:
            for x, y in iterate_batches(
                train_data, batch_size=size, generator=batch_gen, merge_single_last=batchnorm
            ):
                if augment:
                    x = random_crop_flip(x, generator=augment_gen)
                yield x, y

        closure = BatchClosure(net, iter(()), epoch_batches)
        started = time.perf_counter()
        with progress_helper.task(
            f"train {opt_config['name']}", epochs, enabled=progress
        ) as reporter:
            reporter.advance(start_epoch)
            for epoch in range(start_epoch, epochs):
                if finished:
                    break
                epoch_started = time.perf_counter()
                net.train()
                closure.start_epoch(epoch_batches())
                epoch_start = closure.batches
                lr = base_lrs[0]
                while closure.has_next():
                    # Progress counts minibatches, in whole epochs so far plus this one's
                    # (a step that runs into a fresh pass ends the epoch, see BatchClosure).
                    done = epoch * batches_per_epoch + closure.batches - epoch_start
                    if isinstance(opt, ProgressAware):
                        opt.set_progress(min(done / total_batches, 1.0))
                    if schedule != "constant":
                        factor = lr_factor(schedule, done, total_batches)
                        for group, base in zip(opt.param_groups, base_lrs, strict=True):
                            group["lr"] = base * factor
                        lr = base_lrs[0] * factor
                    closure.next_batch()
                    # Torch types step's closure as returning float; ours returns the loss tensor.
                    loss = cast(torch.Tensor | None, opt.step(cast(Any, closure)))
                    if loss is None or not bool(torch.isfinite(loss)):
                        # Name the directory only where a saved state is there to go back to.
                        where = (
                            f" (last good state in {state_dir})"
                            if state_dir is not None and has_bundle(state_dir, _STATE_STEM)
                            else ""
                        )
                        raise TrainingDivergedError(
                            f"training loss became {float(loss) if loss is not None else None} "
                            f"at epoch {epoch + 1}, step {step + 1}, lr {lr:g}{where}; "
                            "lower the learning rate"
                        )
                    step += 1
                running_error = int(closure.wrong) / closure.seen
                eval_error = None
                if stop_at_zero_train_error and running_error <= _ZERO_CHECK_BELOW:
                    _refresh_batchnorm(net, opt, train_data, bn_seed)
                    eval_error = evaluate(net, train_data, batch_size=eval_batch_size).error
                    finished = eval_error == 0.0
                record = EpochRecord(
                    epoch=epoch + 1,
                    lr=lr,
                    train_loss=float(closure.loss_sum) / closure.seen,
                    train_error=running_error,
                    eval_train_error=eval_error,
                    seconds=time.perf_counter() - epoch_started,
                    grad_evals=grad_evals_before + closure.grad_evals,
                )
                history.append(record)
                finished = finished or epoch + 1 == epochs
                if state_dir is not None:
                    _save_state(
                        state_dir,
                        fingerprint,
                        settings,
                        net,
                        opt,
                        batch_gen,
                        augment_gen,
                        epoch + 1,
                        step,
                        record.grad_evals,
                        elapsed_before + time.perf_counter() - started,
                        finished,
                        history,
                    )
                reporter.advance(
                    1, loss=f"{record.train_loss:.4f}", error=f"{record.train_error:.4f}"
                )
                if on_epoch_end is not None:
                    on_epoch_end(record)
        wall_time = elapsed_before + time.perf_counter() - started

    _refresh_batchnorm(net, opt, train_data, bn_seed)
    train_metrics = evaluate(net, train_data, batch_size=eval_batch_size)
    test_metrics = (
        evaluate(net, test_data.to(dev), batch_size=eval_batch_size)
        if test_data is not None and len(test_data)
        else None
    )
    net.eval()
    return TrainResult(
        model=net,
        history=tuple(history),
        train=train_metrics,
        test=test_metrics,
        epochs=len(history),
        reached_zero_train_error=train_metrics.error == 0.0,
        wall_time=wall_time,
        grad_evals=history[-1].grad_evals if history else 0,
        optimizer=opt_config,
        seed=seed,
    )


def _has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _reference_tensor(net: nn.Module, device: torch.device) -> torch.Tensor:
    """A floating tensor of the model's dtype on its device (float32 for a model with no
    floating parameters)."""
    for tensor in (*net.parameters(), *net.buffers()):
        if tensor.is_floating_point():
            return tensor
    return torch.empty(0, device=device)


def _refresh_batchnorm(
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


def _save_state(
    state_dir: Path,
    fingerprint: str,
    settings: Mapping[str, Any],
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batch_gen: torch.Generator,
    augment_gen: torch.Generator,
    epoch: int,
    step: int,
    grad_evals: int,
    elapsed: float,
    finished: bool,
    history: list[EpochRecord],
) -> None:
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in net.state_dict().items()}
    optimizer_skeleton = flatten_state(opt.state_dict(), "optimizer", tensors)
    tensors["rng/batches"] = batch_gen.get_state()
    tensors["rng/augment"] = augment_gen.get_state()
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and any(t.is_cuda for t in net.parameters()):
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    meta = {
        "fingerprint": fingerprint,
        "settings": settings,
        "epoch": epoch,
        "step": step,
        "grad_evals": grad_evals,
        "elapsed": elapsed,
        "finished": finished,
        "history": [asdict(r) for r in history],
        "optimizer": optimizer_skeleton,
    }
    write_bundle(state_dir, _STATE_STEM, tensors, meta)


def _restore(
    state_dir: Path,
    fingerprint: str,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batch_gen: torch.Generator,
    augment_gen: torch.Generator,
    device: torch.device,
) -> tuple[int, int, int, float, bool, list[EpochRecord]]:
    tensors, meta = read_bundle(state_dir, _STATE_STEM)
    source = state_dir / f"{_STATE_STEM}.json"
    if meta.get("fingerprint") != fingerprint:
        settings = meta.get("settings")
        raise ResumeMismatchError(
            f"{state_dir} holds training state for other settings "
            f"({json.dumps(settings, default=str)}); "
            "resume with the same model, data size, optimizer, epochs, batch size, schedule "
            "and seed, or use another checkpoint_dir"
        )

    def bad(field: str, value: object, expected: str) -> CheckpointError:
        shown = json.dumps(value, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return CheckpointError(
            f"{source}: field {field!r} is {shown}; expected {expected} "
            "(the file was edited or is corrupt; remove the directory to start afresh)"
        )

    def count(field: str) -> int:
        value = meta.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(field, value, "a non-negative integer")
        return value

    epoch, step, grad_evals = count("epoch"), count("step"), count("grad_evals")
    elapsed = meta.get("elapsed")
    if (
        isinstance(elapsed, bool)
        or not isinstance(elapsed, int | float)
        or not math.isfinite(elapsed)
        or elapsed < 0
    ):
        raise bad("elapsed", elapsed, "a non-negative number of seconds")
    finished = meta.get("finished")
    if not isinstance(finished, bool):
        raise bad("finished", finished, "true or false")
    history = _history(meta.get("history"), epoch, bad)

    def tensor(key: str) -> torch.Tensor:
        if key not in tensors:
            raise CheckpointError(f"{source}: its tensor file holds no {key!r}; it is corrupt")
        return tensors[key]

    try:
        net.load_state_dict(
            {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        )
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{source}: its model weights do not fit the model being trained: {first}"
        ) from exc
    expected_groups = opt.state_dict()["param_groups"]
    try:
        loaded = unflatten_state(meta.get("optimizer"), tensors)
        _check_param_groups(loaded, expected_groups, bad)
        _check_param_state(loaded, list(net.parameters()), bad)
        opt.load_state_dict(loaded)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise bad(
            "optimizer", meta.get("optimizer"), "the optimizer state this file was written with"
        ) from exc
    for key, generator in (("rng/batches", batch_gen), ("rng/augment", augment_gen)):
        try:
            generator.set_state(tensor(key))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: generator state {key!r} is not a valid generator state"
            ) from exc
    try:
        torch.set_rng_state(tensor("rng/cpu"))
        if "rng/cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: its global generator state is not valid") from exc
    return epoch, step, grad_evals, float(elapsed), finished, history


def _check_param_state(
    loaded: dict[str, Any],
    params: list[torch.Tensor],
    bad: Callable[[str, object, str], CheckpointError],
) -> None:
    """Each entry of the restored optimizer state belongs to a parameter, and each of its
    values is a finite tensor: a scalar (a step count) or one whose trailing dimensions are
    the parameter's shape, in its dtype (a momentum buffer; replicated SGD's stacked
    replicas)."""
    for index, entry in loaded["state"].items():
        where = f"optimizer.state[{index}]"
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise bad(where, index, f"a parameter index in 0..{len(params) - 1}")
        if not isinstance(entry, dict):
            raise bad(where, entry, "a mapping of state tensors")
        param = params[index]
        for key, value in entry.items():
            if value is None:
                continue
            ok = isinstance(value, torch.Tensor)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                trailing = tuple(value.shape[value.dim() - param.dim() :])
                ok = value.dim() >= param.dim() and trailing == tuple(param.shape)
                ok = ok and value.dtype == param.dtype
            if ok and isinstance(value, torch.Tensor) and value.is_floating_point():
                ok = bool(torch.isfinite(value).all())
            if not ok:
                shown = tuple(value.shape) if isinstance(value, torch.Tensor) else value
                raise bad(
                    f"{where}.{key}",
                    shown,
                    f"a finite tensor: a scalar or one ending in the parameter's shape "
                    f"{tuple(param.shape)}",
                )


def _check_param_groups(
    loaded: object,
    expected: list[dict[str, Any]],
    bad: Callable[[str, object, str], CheckpointError],
) -> None:
    """The restored optimizer state has the fresh optimizer's parameter groups, with
    hyperparameters of the same kinds (a number stays a number, a flag a flag)."""
    if not isinstance(loaded, dict) or not isinstance(loaded.get("state"), dict):
        raise bad("optimizer", loaded, "a state dict with 'state' and 'param_groups'")
    groups = loaded.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(expected):
        raise bad("optimizer.param_groups", groups, f"a list of {len(expected)} groups")
    for i, (group, reference) in enumerate(zip(groups, expected, strict=True)):
        if not isinstance(group, dict) or set(group) != set(reference):
            raise bad(f"optimizer.param_groups[{i}]", group, f"keys {', '.join(reference)}")
        for key, ref in reference.items():
            value = group[key]
            if key == "params":
                ok = isinstance(value, list) and len(value) == len(ref)
            elif isinstance(ref, bool) or ref is None:
                ok = isinstance(value, bool) or value is None or type(value) is type(ref)
            elif isinstance(ref, int | float):
                ok = not isinstance(value, bool) and isinstance(value, int | float)
                ok = ok and math.isfinite(value)
            elif isinstance(ref, tuple | list):
                ok = isinstance(value, tuple | list) and len(value) == len(ref)
                ok = ok and all(isinstance(v, int | float) for v in value)
            else:
                ok = True
            if not ok:
                raise bad(f"optimizer.param_groups[{i}].{key}", value, f"like {ref!r}")


_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "epoch": (int,),
    "lr": (int, float),
    "train_loss": (int, float),
    "train_error": (int, float),
    "eval_train_error": (int, float, type(None)),
    "seconds": (int, float),
    "grad_evals": (int,),
}


def _history(
    value: object, epoch: int, bad: Callable[[str, object, str], CheckpointError]
) -> list[EpochRecord]:
    """The saved per-epoch records, each field of the right type, one per epoch done."""
    if not isinstance(value, list) or len(value) != epoch:
        raise bad("history", value, f"a list of {epoch} epoch records (one per epoch done)")
    records = []
    for i, entry in enumerate(value):
        field = f"history[{i}]"
        if not isinstance(entry, dict) or set(entry) != set(_RECORD_FIELDS):
            raise bad(field, entry, f"a record with keys {', '.join(_RECORD_FIELDS)}")
        for key, types in _RECORD_FIELDS.items():
            item = entry[key]
            if isinstance(item, bool) or not isinstance(item, types):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise bad(f"{field}.{key}", item, names)
        records.append(
            EpochRecord(
                epoch=int(entry["epoch"]),
                lr=float(entry["lr"]),
                train_loss=float(entry["train_loss"]),
                train_error=float(entry["train_error"]),
                eval_train_error=(
                    None if entry["eval_train_error"] is None else float(entry["eval_train_error"])
                ),
                seconds=float(entry["seconds"]),
                grad_evals=int(entry["grad_evals"]),
            )
        )
    return records
