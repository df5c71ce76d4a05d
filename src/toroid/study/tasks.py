"""The kinds of study task. Each kind has a frozen `Params` holding exactly what its runner
reads, the `Row` types it writes (`toroid.study.rows`) and `run(params, inputs) -> rows`.
A task's hash is computed from its `Params` and the hashes of the tasks whose weights it
reads (`toroid.study.graph`), so the hash and the runner cannot drift apart: a setting that
is not in `Params` cannot change a result, and one that is re-runs the task.

Runners read upstream weights and write their own through `TaskInputs` (atomically); only
the coordinator writes the database. Runners are deterministic: a task re-run after a crash
gives the same numbers."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from toroid.data import Split, TensorData, load
from toroid.data.subsets import balanced_indices
from toroid.errors import InvalidArgumentError, TrainingDivergedError
from toroid.evaluate import EvalPlan
from toroid.manifold.distance import distances
from toroid.models import build, model_config
from toroid.optim.registry import default_batch_size
from toroid.paths import fit_bend, make_path, profile, retrain_midpoint
from toroid.paths.profile import Profile
from toroid.storage import atomic_write_bytes
from toroid.study.config import (
    BendKind,
    BendMethod,
    DistanceName,
    EnergyNoise,
    EnergySplit,
    MeasureName,
    Schedule,
    TrainEngine,
)
from toroid.study.rows import (
    AlignmentRow,
    BendRow,
    CanonicalRow,
    DistanceRow,
    EnergyRow,
    MeasureRow,
    NetworkRow,
    ProfileRow,
    Row,
)
from toroid.study.store import Weights, stem_of
from toroid.symmetry import spec_for
from toroid.symmetry.align import WEIGHT_MATCHING_VERSION, align
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.transform import transform_state
from toroid.train import TrainResult, derive_seed
from toroid.train.loop import NetworkPlan
from toroid.train.population import train_population

# Parameters --------------------------------------------------------------------------------


# A field with this metadata is left out of the task hash while it is None: a setting added
# later, so that a config without it keeps the hashes (and results) it had.
OMIT_WHEN_NONE = "omit_when_none"


def hash_view(value: Any) -> Any:
    """What a task's hash covers of `value`: `dataclasses.asdict`'s view of it (mappings and
    sequences recursed, tuples as lists), without the fields marked `OMIT_WHEN_NONE` that
    are None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: hash_view(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.metadata.get(OMIT_WHEN_NONE) and getattr(value, f.name) is None)
        }
    if isinstance(value, Mapping):
        return {k: hash_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hash_view(v) for v in value]
    return value


@dataclass(frozen=True)
class DataParams:
    """Which dataset and subset; `toroid.data.load`'s arguments. The analyses (every task
    but training) evaluate on fixed, seeded, class-balanced subsets of `eval_train_size`
    and `eval_test_size` examples of the loaded splits (None: the whole split; the inputs
    stay normalized with the whole training split's statistics); a train task's
    `DataParams` never sets them (`full`)."""

    name: str
    train_size: int | None
    test_size: int | None
    seed: int
    root: str | None
    eval_train_size: int | None = dataclasses.field(default=None, metadata={OMIT_WHEN_NONE: True})
    eval_test_size: int | None = dataclasses.field(default=None, metadata={OMIT_WHEN_NONE: True})

    @property
    def full(self) -> DataParams:
        """The data as loaded, without evaluation subsets (what training reads)."""
        return dataclasses.replace(self, eval_train_size=None, eval_test_size=None)


@dataclass(frozen=True)
class TrainParams:
    network: str
    block: str
    optimizer_label: str  # names the network and seeds its initialization
    optimizer: Mapping[str, Any]  # resolved: every hyperparameter spelled out
    seed: int
    model: Mapping[str, Any]
    data: DataParams
    epochs: int
    schedule: Schedule
    batch_size: int | None
    stop_at_zero_train_error: bool
    augment: bool
    device: str
    engine: TrainEngine
    # With the vmap engine, the networks this one trains with (itself included, in order,
    # each without mates of its own); empty when it trains as it would alone.
    mates: tuple[TrainParams, ...] = ()

    def population(self) -> tuple[object, ...]:
        """What networks must share to train in one population."""
        return (self.block, json.dumps(self.model, sort_keys=True), self.data, self.augment,
                self.device, self.engine)  # fmt: skip


@dataclass(frozen=True)
class CanonicalParams:
    network: str
    block: str


@dataclass(frozen=True)
class AlignParams:
    network: str
    reference: str
    block: str
    # Which weight-matching algorithm aligned the networks: part of the hash, so a study
    # never mixes results of two alignment algorithms.
    alignment: str = WEIGHT_MATCHING_VERSION


@dataclass(frozen=True)
class EnergyParams:
    """Local energy with Gaussian noise (multiplicative or spherical) at `levels` sigmas."""

    network: str
    block: str
    data: DataParams
    levels: tuple[float, ...]
    samples: int
    noise: EnergyNoise
    split: EnergySplit
    plan: EvalPlan


@dataclass(frozen=True)
class FlipEnergyParams:
    """Local energy of a binary network: each weight flipped with probability `levels`."""

    network: str
    block: str
    data: DataParams
    levels: tuple[float, ...]
    samples: int
    plan: EvalPlan


@dataclass(frozen=True)
class DistanceParams:
    a: str
    b: str
    block: str
    kinds: tuple[DistanceName, ...]
    # Which weight-matching algorithm aligned the networks: part of the hash, so a study
    # never mixes results of two alignment algorithms.
    alignment: str = WEIGHT_MATCHING_VERSION


@dataclass(frozen=True)
class ProfileParams:
    a: str
    b: str
    block: str
    path: str
    data: DataParams
    points: int
    refine: int
    plan: EvalPlan
    # Which weight-matching algorithm aligned the networks: part of the hash, so a study
    # never mixes results of two alignment algorithms.
    alignment: str = WEIGHT_MATCHING_VERSION


@dataclass(frozen=True)
class BendParams:
    a: str
    b: str
    block: str
    data: DataParams
    method: BendMethod
    kind: BendKind
    epochs: int
    lr: float
    points: int
    device: str  # where the bend trains
    plan: EvalPlan  # how the chain's profile is evaluated
    # Which weight-matching algorithm aligned the networks: part of the hash, so a study
    # never mixes results of two alignment algorithms.
    alignment: str = WEIGHT_MATCHING_VERSION


@dataclass(frozen=True)
class FlipPathParams:
    a: str
    b: str
    block: str
    data: DataParams
    orders: int
    points: int
    plan: EvalPlan
    # Which weight-matching algorithm aligned the networks: part of the hash, so a study
    # never mixes results of two alignment algorithms.
    alignment: str = WEIGHT_MATCHING_VERSION


@dataclass(frozen=True)
class FlipChainParams:
    a: str
    b: str
    block: str
    data: DataParams
    optimizer: Mapping[str, Any]
    epochs: int
    batch_size: int | None
    schedule: Schedule
    orders: int
    points: int
    device: str  # where the bend trains
    plan: EvalPlan  # how the flip paths are evaluated
    # Which weight-matching algorithm aligned the networks: part of the hash, so a study
    # never mixes results of two alignment algorithms.
    alignment: str = WEIGHT_MATCHING_VERSION


@dataclass(frozen=True)
class MeasureParams:
    """Flatness measures of one trained network (in the coordinates it was trained in),
    or of its copy under a random symmetry when `reparametrize` is (low, high, seed,
    permutations)."""

    network: str
    block: str
    data: DataParams
    kinds: tuple[MeasureName, ...]
    sigmas: tuple[float, ...]
    samples: int
    train_samples: int | None
    probes: int
    iters: int
    rho: float
    sam_steps: int
    deviation: float
    plan: EvalPlan
    reparametrize: tuple[float, float, int, bool] | None


TaskParams = (
    TrainParams
    | CanonicalParams
    | AlignParams
    | EnergyParams
    | FlipEnergyParams
    | DistanceParams
    | ProfileParams
    | BendParams
    | FlipPathParams
    | FlipChainParams
    | MeasureParams
)


# Keys: what a task is called, and so which weights it reads -----------------------------


def train_key(network: str) -> str:
    return f"train/{network}"


def canonical_key(network: str) -> str:
    return f"canonical/{network}"


# Inputs and outputs -------------------------------------------------------------------------


# Resumable training states live under this folder of the study directory.
STATE_DIR = "train-state"
POPULATION_PREFIX = "population-"
POPULATION_MEMBERS = "members.json"


def state_dir_name(key: str, hash: str) -> str:
    """The folder of a training task's resumable state: its key and its hash."""
    return f"{stem_of(key)}-{hash}"


class TaskInputs:
    """What a runner may touch besides its `Params`: the weights of the tasks it reads, and
    a place for its own weights (named after its key) in the study `directory`."""

    def __init__(self, weights: Weights, key: str, hash: str) -> None:
        self._weights = weights
        self.directory = weights.directory
        self.key = key
        self.hash = hash

    def model(self, key: str) -> nn.Module:
        state, meta = self._weights.load(key)
        model = build(meta["model"])
        model.load_state_dict(state)
        return model.eval()

    def canonical(self, network: str) -> nn.Module:
        return self.model(canonical_key(network))

    def save(self, model: nn.Module, **meta: Any) -> str:
        """Write this task's weights; returns their stem."""
        return self._weights.save(
            self.key, model.state_dict(), {"model": model_config(model), **meta}
        )


@functools.lru_cache(maxsize=8)
def data_for(spec: DataParams, device: str = "cpu") -> Split:
    """The study's dataset, loaded once per process; with evaluation sizes, the evaluation
    subsets of it (`evaluation_split`)."""
    if spec.eval_train_size is None and spec.eval_test_size is None:
        split = load(
            spec.name,
            root=spec.root,
            train_size=spec.train_size,
            test_size=spec.test_size,
            seed=spec.seed,
        )
    else:
        split = evaluation_split(data_for(spec.full), spec)
    return split.to(device) if device != "cpu" else split


def evaluation_subset(data: TensorData, size: int | None, *, num_classes: int, seed: int,
                      purpose: str) -> TensorData:  # fmt: skip
    """`size` examples of `data` (all of them when None or at least its size): a
    class-balanced subset drawn with a seed derived from `seed` and `purpose`."""
    if size is None or size >= len(data):
        return data
    generator = torch.Generator().manual_seed(derive_seed(seed, purpose))
    return data.subset(balanced_indices(data.y, size, num_classes=num_classes, generator=generator))


def evaluation_split(full: Split, spec: DataParams) -> Split:
    """The analyses' data: fixed subsets of the training and test splits as loaded
    (`spec.eval_train_size`, `spec.eval_test_size`), drawn from `spec.seed`; the inputs are
    those of `full`, normalized with its whole training split's statistics."""
    classes = full.num_classes
    train = evaluation_subset(
        full.train, spec.eval_train_size, num_classes=classes, seed=spec.seed, purpose="eval/train"
    )
    test = evaluation_subset(
        full.test, spec.eval_test_size, num_classes=classes, seed=spec.seed, purpose="eval/test"
    )
    meta = {
        **full.meta,
        "train_size": len(train),
        "test_size": len(test),
        "evaluation_subset_of": {"train_size": len(full.train), "test_size": len(full.test)},
    }
    return Split(train, test, meta)


# Runners ------------------------------------------------------------------------------------


def run_train(p: TrainParams, inputs: TaskInputs) -> list[Row]:
    """One network alone: a population of one."""
    ((rows, _, error),) = train_networks([(p, inputs.key, inputs.hash)], inputs.directory)
    if error is not None:
        raise error
    assert rows is not None
    return rows


TrainOutcome = tuple[list[Row] | None, float, BaseException | None]


def population_state_dir(directory: Path, members: Sequence[tuple[str, str]]) -> Path:
    """The resumable state of the population of (key, hash) `members`: a network alone
    keeps the folder named after its key and hash; a population gets one named after all
    of them, with a members.json that says whose it is."""
    if len(members) == 1:
        return directory / STATE_DIR / state_dir_name(*members[0])
    names = [state_dir_name(key, hash) for key, hash in members]
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]
    return directory / STATE_DIR / f"{POPULATION_PREFIX}{digest}"


def population_members(state: Path) -> list[str] | None:
    """The state folder names of a population folder's networks (None if unreadable)."""
    try:
        names = json.loads((state / POPULATION_MEMBERS).read_text())
    except (OSError, ValueError):
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def train_networks(
    members: Sequence[tuple[TrainParams, str, str]],
    directory: str | Path,
    *,
    record: Collection[str] | None = None,
) -> list[TrainOutcome]:
    """Train the networks of train tasks (params, key, hash) that share
    `TrainParams.population()`: per task, its rows, seconds and error (a network that
    diverged fails alone; an error of the population fails all). Only the tasks in `record`
    (default: all) save their weights and rows; the others (a vmap population's networks
    already finished) train along, as they must for their mates' numbers, and are left as
    they are. With the vmap engine the networks train as one population with one
    resumable state; with the loop engine one after another, each with its own (its
    numbers do not depend on the others, so a rerun may group them differently)."""
    params = [p for p, _, _ in members]
    if len({p.population() for p in params}) != 1:
        raise InvalidArgumentError(
            "train tasks of one population must share block, model, data, device and engine"
        )
    if params[0].engine == "loop":
        return [
            outcome
            for member in members
            for outcome in _train_population([member], directory, record=record)
        ]
    mates = [m.network for m in params[0].mates]
    if mates and [p.network for p in params] != mates:
        raise InvalidArgumentError(
            f"network {params[0].network} trains with {mates}, not {[p.network for p in params]}"
        )
    return _train_population(members, directory, record=record)


def _train_population(
    members: Sequence[tuple[TrainParams, str, str]],
    directory: str | Path,
    *,
    record: Collection[str] | None,
) -> list[TrainOutcome]:
    params = [p for p, _, _ in members]
    first = params[0]
    started = time.perf_counter()
    try:
        state = population_state_dir(Path(directory), [(key, hash) for _, key, hash in members])
        if len(members) > 1:
            state.mkdir(parents=True, exist_ok=True)
            names = [state_dir_name(key, hash) for _, key, hash in members]
            atomic_write_bytes(state / POPULATION_MEMBERS, json.dumps(names).encode())
        plans = [
            NetworkPlan(
                optimizer=dict(p.optimizer),
                epochs=p.epochs,
                batch_size=p.batch_size or default_batch_size(p.optimizer),
                schedule=p.schedule,
                seed=p.seed,
                stop_at_zero_train_error=p.stop_at_zero_train_error,
            )
            for p in params
        ]
        with torch.random.fork_rng():
            torch.manual_seed(0)
            # Each network starts from its own initialization: with one init per seed,
            # minimizers of different optimizers would share a basin by construction.
            models = [
                build(dict(p.model), seed=derive_seed(p.seed, f"init/{p.optimizer_label}"))
                for p in params
            ]
            results = train_population(
                models,
                plans,
                data_for(first.data),
                device=first.device,
                augment=first.augment,
                engine=first.engine,
                progress=False,
                label=f"train {len(params)} networks",
                checkpoint_dir=state,
                resume=True,
                eval_batch_size=1000,
                on_epoch_end=None,
            )
    except Exception as exc:  # every network of the population fails with it
        return [(None, time.perf_counter() - started, exc) for _ in members]
    weights = Weights(directory)
    outcomes: list[TrainOutcome] = []
    for (p, key, _), result in zip(members, results, strict=True):
        if record is not None and key not in record:
            outcomes.append((None, 0.0, None))
        elif isinstance(result, TrainingDivergedError):
            outcomes.append((None, 0.0, result))
        else:
            try:
                outcomes.append(([_network_row(p, key, result, weights)], result.wall_time, None))
            except Exception as exc:  # this network's weights could not be written
                outcomes.append((None, result.wall_time, exc))
    return outcomes


def _network_row(p: TrainParams, key: str, result: TrainResult, weights: Weights) -> NetworkRow:
    """Save a trained network's weights; its row."""
    stem = weights.save(
        key,
        result.model.cpu().state_dict(),
        {"model": model_config(result.model), "optimizer": dict(p.optimizer), "seed": p.seed},
    )
    test = result.test
    return NetworkRow(
        network=p.network,
        block=p.block,
        optimizer=p.optimizer_label,
        seed=p.seed,
        epochs=result.epochs,
        reached_zero_train_error=result.reached_zero_train_error,
        train_error=result.train.error,
        train_loss=result.train.loss,
        test_error=None if test is None else test.error,
        test_loss=None if test is None else test.loss,
        grad_evals=result.grad_evals,
        wall_time=result.wall_time,
        weights=stem,
    )


def run_canonical(p: CanonicalParams, inputs: TaskInputs) -> list[Row]:
    model = inputs.model(train_key(p.network))
    model.load_state_dict(canonical_state(model.state_dict(), spec_for(model), output="keep"))
    return [CanonicalRow(network=p.network, block=p.block, weights=inputs.save(model))]


def run_align(p: AlignParams, inputs: TaskInputs) -> list[Row]:
    model, reference = inputs.canonical(p.network), inputs.canonical(p.reference)
    spec = spec_for(reference)
    result = align(model, reference, spec=spec)
    aligned = transform_state(
        canonical_state(model.state_dict(), spec, output="keep"), spec, result.transform()
    )
    model.load_state_dict(aligned)
    return [
        AlignmentRow(
            network=p.network,
            block=p.block,
            reference=p.reference,
            similarity_before=result.total_before,
            similarity_after=result.total_after,
            weights=inputs.save(model, reference=p.reference),
        )
    ]


def _energy_rows(network: str, block: str, result: Any) -> list[Row]:
    """One row per split and noise level of a local energy result."""
    return [
        EnergyRow(
            network=network,
            block=block,
            split=split,
            noise=result.noise,
            level=level,
            mean=result.mean[split][i],
            stderr=result.stderr[split][i],
            base=result.base[split],
            raw=tuple(result.raw[split][i]),
        )
        for split in result.mean
        for i, level in enumerate(result.levels)
    ]


def run_energy(p: EnergyParams, inputs: TaskInputs) -> list[Row]:
    from toroid.flatness import local_energy

    result = local_energy(
        inputs.canonical(p.network),
        data_for(p.data),
        sigmas=p.levels,
        samples=p.samples,
        noise=p.noise,
        split=p.split,
        plan=p.plan,
        progress=False,
    )
    return _energy_rows(p.network, p.block, result)


def _training_subset(split: Split, size: int | None) -> TensorData:
    """The training set, or `size` of its examples drawn with seed 0 (the same for every
    network), on which the gradient-based measures are computed."""
    train = split.train
    if size is None or size >= len(train):
        return train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return train.subset(order[:size])


def run_measure(p: MeasureParams, inputs: TaskInputs) -> list[Row]:
    from toroid import flatness
    from toroid.symmetry.transform import apply_symmetry, random_symmetry

    model = inputs.model(train_key(p.network))
    if p.reparametrize is not None:
        low, high, seed, permutations = p.reparametrize
        _, transform = random_symmetry(
            model,
            seed=derive_seed(seed, p.network),
            scale_range=(low, high),
            permutations=permutations,
        )
        # Without the output layer's global factor, which scales the logits: the copy
        # computes the same function, logits and loss included.
        model = apply_symmetry(model, dataclasses.replace(transform, output_scale=1.0))
    split = data_for(p.data)
    subset = _training_subset(split, p.train_samples)
    rows: list[Row] = []

    def add(measure: str, value: float, stderr: float | None, level: float | None = None) -> None:
        rows.append(
            MeasureRow(
                network=p.network,
                block=p.block,
                measure=measure,
                reparametrized=p.reparametrize is not None,
                level=level,
                value=value,
                stderr=stderr,
            )
        )

    for kind in p.kinds:
        if kind in ("local_energy", "raw_energy"):
            raw = kind == "raw_energy"
            energy = flatness.local_energy(
                model,
                split,
                sigmas=p.sigmas,
                samples=p.samples,
                noise="additive" if raw else "multiplicative",
                canonical=not raw,
                split="train",
                plan=p.plan,
                progress=False,
            )
            for i, level in enumerate(energy.levels):
                add(kind, energy.mean["train"][i], energy.stderr["train"][i], level)
        elif kind in ("hessian_trace", "raw_hessian_trace"):
            trace = flatness.hessian_trace(
                model, subset, probes=p.probes, canonical=kind == "hessian_trace"
            )
            add(kind, trace.value, trace.stderr)
        elif kind == "hessian_top":
            top = flatness.hessian_top_eigenvalue(model, subset, iters=p.iters)
            add(kind, top.value, None)
        elif kind == "sam_sharpness":
            sharp = flatness.sam_sharpness(model, subset, rho=p.rho, steps=p.sam_steps)
            add(kind, sharp.value, None, p.rho)
        elif kind == "pac_bayes":
            pac = flatness.pac_bayes_flatness(
                model, subset, deviation=p.deviation, samples=p.samples, plan=p.plan
            )
            add(kind, pac.sigma, None, p.deviation)
        else:
            add(kind, flatness.log_norm_product(model), None)
    return rows


def run_flip_energy(p: FlipEnergyParams, inputs: TaskInputs) -> list[Row]:
    from toroid.flatness.flip_energy import flip_energy

    result = flip_energy(
        inputs.canonical(p.network),
        data_for(p.data),
        ps=p.levels,
        samples=p.samples,
        split="both",
        plan=p.plan,
        progress=False,
    )
    return _energy_rows(p.network, p.block, result)


def run_distance(p: DistanceParams, inputs: TaskInputs) -> list[Row]:
    a, b = inputs.canonical(p.a), inputs.canonical(p.b)
    # One alignment for every kind.
    results = distances(a, b, kinds=list(p.kinds), spec=spec_for(a))
    return [
        DistanceRow(a=p.a, b=p.b, block=p.block, kind=kind, value=r.value, aligned=True)
        for kind, r in results.items()
    ]


def _profile_row(
    a: str, b: str, block: str, path: str, curve: Profile, *, over_orders: bool = False
) -> ProfileRow:
    """The row of a profile. Barriers are `max_minus_mean` of the error: of the (mean)
    curve, or with `over_orders` the mean over orders of each order's barrier; the largest
    training error is taken over every point of every order."""
    of = curve.mean_barrier if over_orders else curve.barrier
    has_test = curve.test_error is not None
    return ProfileRow(
        a=a,
        b=b,
        block=block,
        path=path,
        ts=curve.ts,
        train_error=curve.train_error,
        train_loss=curve.train_loss,
        test_error=curve.test_error,
        test_loss=curve.test_loss,
        barrier_train=of("max_minus_mean", "train_error"),
        barrier_test=of("max_minus_mean", "test_error") if has_test else None,
        max_train_error=curve.max_barrier("max", "train_error"),
    )


def run_profile(p: ProfileParams, inputs: TaskInputs) -> list[Row]:
    curve = profile(
        make_path(p.path, inputs.canonical(p.a), inputs.canonical(p.b)),
        data_for(p.data),
        points=p.points,
        refine=p.refine,
        plan=p.plan,
        progress=False,
    )
    return [_profile_row(p.a, p.b, p.block, p.path, curve)]


def run_bend(p: BendParams, inputs: TaskInputs) -> list[Row]:
    a, b = inputs.canonical(p.a), inputs.canonical(p.b)
    data = data_for(p.data)
    if p.method == "retrain":
        fitted = retrain_midpoint(
            a,
            b,
            data,
            optimizer={"name": "sgd", "lr": p.lr},
            epochs=p.epochs,
            device=p.device,
            progress=False,
        )
    else:
        fitted = fit_bend(
            a,
            b,
            data,
            kind=p.kind,
            epochs=p.epochs,
            lr=p.lr,
            device=p.device,
            progress=False,
        )
    weights = inputs.save(fitted.bend, method=p.method)
    curve = profile(fitted.path, data, points=p.points, plan=p.plan, progress=False)
    path_kind = "polychain" if p.method == "retrain" else p.kind
    return [
        BendRow(
            a=p.a,
            b=p.b,
            block=p.block,
            method=p.method,
            kind=path_kind,
            epochs=fitted.epochs,
            grad_evals=fitted.grad_evals,
            wall_time=fitted.wall_time,
            weights=weights,
        ),
        _profile_row(p.a, p.b, p.block, path_kind, curve),
    ]


def run_flip_path(p: FlipPathParams, inputs: TaskInputs) -> list[Row]:
    from toroid.paths.flip import flip_path

    curve = flip_path(
        inputs.canonical(p.a),
        inputs.canonical(p.b),
        data=data_for(p.data),
        orders=p.orders,
        points=p.points,
        split="both",
        plan=p.plan,
        progress=False,
    )
    return [_profile_row(p.a, p.b, p.block, "flip", curve, over_orders=True)]


def run_flip_chain(p: FlipChainParams, inputs: TaskInputs) -> list[Row]:
    from toroid.paths.flip_chain import flip_chain

    chain = flip_chain(
        inputs.canonical(p.a),
        inputs.canonical(p.b),
        data_for(p.data),
        optimizer=dict(p.optimizer),
        epochs=p.epochs,
        batch_size=p.batch_size,
        schedule=p.schedule,
        orders=p.orders,
        points=p.points,
        device=p.device,
        plan=p.plan,
        progress=False,
    )
    bend = BendRow(
        a=p.a,
        b=p.b,
        block=p.block,
        method="retrain",
        kind="flip-chain",
        epochs=chain.epochs,
        grad_evals=None,
        wall_time=None,
        weights=inputs.save(chain.bend, method="retrain"),
    )
    return [bend, _profile_row(p.a, p.b, p.block, "flip-chain", chain.profile())]


# The registry -------------------------------------------------------------------------------

P = TypeVar("P", bound=TaskParams)


@dataclass(frozen=True)
class TaskKind(Generic[P]):
    """A kind of task: its `Params` type, its runner, and the words the report uses."""

    name: str
    params: type[P]
    run: Callable[[P, TaskInputs], list[Row]]
    words: str


KINDS: dict[str, TaskKind[Any]] = {
    kind.name: kind
    for kind in (
        TaskKind("train", TrainParams, run_train, "training"),
        TaskKind("canonical", CanonicalParams, run_canonical, "canonical form"),
        TaskKind("align", AlignParams, run_align, "alignment"),
        TaskKind("energy", EnergyParams, run_energy, "local energy"),
        TaskKind("flip_energy", FlipEnergyParams, run_flip_energy, "flip local energy"),
        TaskKind("distance", DistanceParams, run_distance, "distances"),
        TaskKind("profile", ProfileParams, run_profile, "path profiles"),
        TaskKind("flip_path", FlipPathParams, run_flip_path, "flip-path profiles"),
        TaskKind("bend", BendParams, run_bend, "single-bend chains"),
        TaskKind("flip_chain", FlipChainParams, run_flip_chain, "two-segment flip chains"),
        TaskKind("measure", MeasureParams, run_measure, "flatness measures"),
    )
}


def execute(
    kind: str, params: TaskParams, key: str, hash: str, directory: str | Path
) -> tuple[list[Row], float]:
    """Run one task against the store in `directory` (any process); its rows and seconds."""
    task_kind = KINDS[kind]
    if not isinstance(params, task_kind.params):
        raise TypeError(f"task {key}: {kind} takes {task_kind.params.__name__}")
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        rows = task_kind.run(params, TaskInputs(Weights(directory), key, hash))
    return rows, time.perf_counter() - started
