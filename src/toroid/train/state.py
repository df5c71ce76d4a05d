"""`TrainState`: everything that changes while one network trains (weights, optimizer
state, random generators, epoch and counters, history), and the atomic save and checked
restore of the states of a population in one bundle (safetensors + JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toroid.errors import CheckpointError, ResumeMismatchError
from toroid.storage import flatten_state, read_bundle, unflatten_state, write_bundle
from toroid.train.records import EpochRecord, StopReason

STATE_STEM = "train-state"
STATE_FORMAT = "toroid.train-state/2"
_STOP_REASONS: tuple[str, ...] = ("zero-train-error", "epochs")


@dataclass(eq=False)
class TrainState:
    """One network's training state. `finished` once it stopped (by its stopping rule, or
    `diverged`, which then holds the message); a finished network takes no more steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    base_lrs: list[float]
    epoch: int = 0
    step: int = 0
    grad_evals: int = 0
    elapsed: float = 0.0
    finished: bool = False
    stopped_by: StopReason | None = None
    diverged: str | None = None
    history: list[EpochRecord] = field(default_factory=list)


def save_states(
    directory: Path,
    *,
    fingerprint: str,
    settings: Any,
    states: Sequence[TrainState],
    cuda: bool,
) -> None:
    """Write every state, and the global generator, as one bundle (atomically: a reader
    sees the previous bundle or this one). A diverged network keeps only its record."""
    tensors: dict[str, torch.Tensor] = {"rng/cpu": torch.get_rng_state()}
    if cuda:
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    members = []
    for k, state in enumerate(states):
        skeleton = None
        if state.diverged is None:
            for name, value in state.model.state_dict().items():
                tensors[f"{k}/model/{name}"] = value
            skeleton = flatten_state(state.optimizer.state_dict(), f"{k}/optimizer", tensors)
            for name, generator in state.generators.items():
                tensors[f"{k}/rng/{name}"] = generator.get_state()
        members.append(
            {
                "epoch": state.epoch,
                "step": state.step,
                "grad_evals": state.grad_evals,
                "elapsed": state.elapsed,
                "finished": state.finished,
                "stopped_by": state.stopped_by,
                "diverged": state.diverged,
                "history": [asdict(r) for r in state.history],
                "optimizer": skeleton,
            }
        )
    meta = {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "settings": settings,
        "members": members,
    }
    write_bundle(directory, STATE_STEM, tensors, meta)


def restore_states(
    directory: Path,
    *,
    fingerprint: str,
    states: Sequence[TrainState],
    device: torch.device,
) -> None:
    """Load the bundle in `directory` into `states` (in place), checking every field: a
    bundle written for other settings or edited by hand is refused in one line."""
    tensors, meta = read_bundle(directory, STATE_STEM)
    source = directory / f"{STATE_STEM}.json"
    if meta.get("format") != STATE_FORMAT:
        written = meta.get("format")
        by = "an older toroid" if written is None else f"format {json.dumps(written)[:40]}"
        raise ResumeMismatchError(
            f"{source} was written by {by}, which this version cannot resume (it reads "
            f"{STATE_FORMAT}); remove {directory} to train afresh, or finish the run with "
            "the toroid version that started it"
        )
    if meta.get("fingerprint") != fingerprint:
        settings = json.dumps(meta.get("settings"), default=str)
        if len(settings) > 300:
            settings = settings[:297] + "..."
        raise ResumeMismatchError(
            f"{directory} holds training state for other settings ({settings}); resume "
            "with the same models, data size, optimizers, epochs, batch sizes, schedules "
            "and seeds, or use another checkpoint_dir"
        )

    def bad(name: str, value: object, expected: str) -> CheckpointError:
        shown = json.dumps(value, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return CheckpointError(
            f"{source}: field {name!r} is {shown}; expected {expected} "
            "(the file was edited or is corrupt; remove the directory to start afresh)"
        )

    members = meta.get("members")
    if not isinstance(members, list) or len(members) != len(states):
        raise bad("members", members, f"a list of {len(states)} network states")
    for k, (entry, state) in enumerate(zip(members, states, strict=True)):
        if not isinstance(entry, dict):
            raise bad(f"members[{k}]", entry, "a network state")
        _restore_member(entry, state, tensors, f"members[{k}].", f"{k}/", source, bad)
    epochs = {s.epoch for s in states if not s.finished}
    if len(epochs) > 1:
        raise bad("members", sorted(epochs), "one epoch for every network still training")

    try:
        torch.set_rng_state(_tensor(tensors, "rng/cpu", source))
        if "rng/cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: its global generator state is not valid") from exc


Bad = Callable[[str, object, str], CheckpointError]


def _tensor(tensors: dict[str, torch.Tensor], key: str, source: Path) -> torch.Tensor:
    if key not in tensors:
        raise CheckpointError(f"{source}: its tensor file holds no {key!r}; it is corrupt")
    return tensors[key]


def _restore_member(
    entry: dict[str, Any],
    state: TrainState,
    tensors: dict[str, torch.Tensor],
    field_prefix: str,
    key_prefix: str,
    source: Path,
    bad: Bad,
) -> None:
    def count(name: str) -> int:
        value = entry.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(field_prefix + name, value, "a non-negative integer")
        return value

    epoch, step, grad_evals = count("epoch"), count("step"), count("grad_evals")
    elapsed = entry.get("elapsed")
    if (
        isinstance(elapsed, bool)
        or not isinstance(elapsed, int | float)
        or not math.isfinite(elapsed)
        or elapsed < 0
    ):
        raise bad(field_prefix + "elapsed", elapsed, "a non-negative number of seconds")
    finished = entry.get("finished")
    if not isinstance(finished, bool):
        raise bad(field_prefix + "finished", finished, "true or false")
    stopped_by = entry.get("stopped_by")
    if stopped_by is not None and stopped_by not in _STOP_REASONS:
        raise bad(field_prefix + "stopped_by", stopped_by, f"null or one of {_STOP_REASONS}")
    diverged = entry.get("diverged")
    if diverged is not None and not isinstance(diverged, str):
        raise bad(field_prefix + "diverged", diverged, "null or a message")
    if diverged is not None and not finished:
        raise bad(field_prefix + "diverged", diverged, "null for a network still training")
    history = _history(entry.get("history"), epoch, field_prefix, bad)
    state.epoch, state.step, state.grad_evals = epoch, step, grad_evals
    state.elapsed, state.finished, state.history = float(elapsed), finished, history
    state.stopped_by, state.diverged = stopped_by, diverged
    if diverged is not None:
        return  # nothing of it trains again, and its weights were not kept

    model_prefix = f"{key_prefix}model/"
    try:
        state.model.load_state_dict(
            {k[len(model_prefix) :]: v for k, v in tensors.items() if k.startswith(model_prefix)}
        )
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{source}: its model weights do not fit the model being trained: {first}"
        ) from exc
    opt = state.optimizer
    expected_groups = opt.state_dict()["param_groups"]
    skeleton = entry.get("optimizer")
    try:
        loaded = unflatten_state(skeleton, tensors)
        _check_param_groups(loaded, expected_groups, field_prefix, bad)
        _check_param_state(loaded, list(state.model.parameters()), field_prefix, bad)
        opt.load_state_dict(loaded)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise bad(
            field_prefix + "optimizer", skeleton, "the optimizer state this file was written with"
        ) from exc
    for name, generator in state.generators.items():
        key = f"{key_prefix}rng/{name}"
        try:
            generator.set_state(_tensor(tensors, key, source))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: generator state {key!r} is not a valid {generator.device.type} "
                "generator state (corrupt, or saved by a run on another device: resume on "
                "the device the run started on)"
            ) from exc


def _check_param_state(
    loaded: dict[str, Any], params: list[torch.Tensor], field_prefix: str, bad: Bad
) -> None:
    """Each entry of the restored optimizer state belongs to a parameter, and each of its
    values is a finite tensor: a scalar (a step count) or one whose trailing dimensions are
    the parameter's shape, in its dtype (a momentum buffer; replicated SGD's stacked
    replicas)."""
    for index, entry in loaded["state"].items():
        where = f"{field_prefix}optimizer.state[{index}]"
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
    loaded: object, expected: list[dict[str, Any]], field_prefix: str, bad: Bad
) -> None:
    """The restored optimizer state has the fresh optimizer's parameter groups, with
    hyperparameters of the same kinds (a number stays a number, a flag a flag)."""
    where = f"{field_prefix}optimizer"
    if not isinstance(loaded, dict) or not isinstance(loaded.get("state"), dict):
        raise bad(where, loaded, "a state dict with 'state' and 'param_groups'")
    groups = loaded.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(expected):
        raise bad(f"{where}.param_groups", groups, f"a list of {len(expected)} groups")
    for i, (group, reference) in enumerate(zip(groups, expected, strict=True)):
        if not isinstance(group, dict) or set(group) != set(reference):
            raise bad(f"{where}.param_groups[{i}]", group, f"keys {', '.join(reference)}")
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
                raise bad(f"{where}.param_groups[{i}].{key}", value, f"like {ref!r}")


_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "epoch": (int,),
    "lr": (int, float),
    "train_loss": (int, float),
    "train_error": (int, float),
    "eval_train_error": (int, float, type(None)),
    "seconds": (int, float),
    "grad_evals": (int,),
}


def _history(value: object, epoch: int, field_prefix: str, bad: Bad) -> list[EpochRecord]:
    """The saved per-epoch records, each field of the right type, one per epoch done."""
    if not isinstance(value, list) or len(value) != epoch:
        raise bad(
            f"{field_prefix}history", value, f"a list of {epoch} epoch records (one per epoch done)"
        )
    records = []
    for i, entry in enumerate(value):
        where = f"{field_prefix}history[{i}]"
        if not isinstance(entry, dict) or set(entry) != set(_RECORD_FIELDS):
            raise bad(where, entry, f"a record with keys {', '.join(_RECORD_FIELDS)}")
        for key, types in _RECORD_FIELDS.items():
            item = entry[key]
            if isinstance(item, bool) or not isinstance(item, types):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise bad(f"{where}.{key}", item, names)
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
