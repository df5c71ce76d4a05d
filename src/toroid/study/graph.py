"""The study as a graph of keyed tasks, built the same way for every block of networks.

A block (the main networks; the binary networks when configured) trains its networks,
puts each in canonical form, aligns it to the block's first network, and runs its
analyses: per network (local energy) or per pair (distances, path profiles, chains). Each
task carries the frozen `Params` of its kind and a hash over those `Params` and the hashes
of the tasks it reads, nothing more: a change re-runs exactly the tasks whose settings or
inputs changed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from toroid.evaluate import EvalPlan
from toroid.study.config import (
    OptimizerSpec,
    PairScope,
    StudyConfig,
    StudyConfigError,
    TrainingSpec,
    grid_models,
    grid_points,
)
from toroid.study.store import StoreError, TaskRecord, check_key
from toroid.study.tasks import (
    AlignParams,
    BendParams,
    CanonicalParams,
    DataParams,
    DistanceParams,
    EnergyParams,
    FlipChainParams,
    FlipEnergyParams,
    FlipPathParams,
    MeasureParams,
    ProfileParams,
    TaskParams,
    TrainParams,
    canonical_key,
    hash_view,
    train_key,
)

MAIN, BINARY = "main", "binary"


@dataclass(frozen=True)
class Network:
    block: str
    optimizer: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.block}/{self.optimizer}/s{self.seed}"


@dataclass(frozen=True)
class Task:
    """One unit of work: `key` names it (and its results and weights), `kind` says what
    runs, `deps` must finish first, `params` is everything the runner reads besides the
    weights of `deps`, and `hash` covers both."""

    key: str
    kind: str
    block: str
    params: TaskParams
    deps: tuple[str, ...]
    hash: str
    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def stage(self) -> str:
        return self.kind


def task_hash(kind: str, params: TaskParams, inputs: Sequence[tuple[str, str]]) -> str:
    """The hash of a task: its kind, its `Params`, and (key, hash) of every input."""
    text = json.dumps(
        {"kind": kind, "params": hash_view(params), "inputs": [list(i) for i in inputs]},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PerNetwork = Callable[[Network], TaskParams]
PerPair = Callable[[Network, Network], TaskParams]


@dataclass(frozen=True)
class Analysis:
    """One analysis of a block: a task per network (`pairs` None) or per pair of networks
    in `pairs`, keyed `prefix/<network>` or `prefix/<a>/<b>`."""

    kind: str
    prefix: str
    make: PerNetwork | PerPair
    pairs: PairScope | None = None
    heavy: bool = True  # asks for the GPU when the study runs on one
    # Per-network analyses read the canonical network, or the network as trained (measures
    # in the coordinates training left it in).
    reads: Literal["canonical", "trained"] = "canonical"


@dataclass(frozen=True)
class Block:
    """A block of networks: how they are trained, which analyses run on them, and what the
    report reads from them (the flatness level's name and preferred values, the distance
    kind of claim 2, the path kinds of claim 3, the chain of claim 4)."""

    name: str
    model: Mapping[str, Any]
    optimizers: tuple[OptimizerSpec, ...]
    seeds: tuple[int, ...]
    training: TrainingSpec
    analyses: tuple[Analysis, ...]
    configured: frozenset[str]
    level_name: str
    summary_levels: tuple[float, ...]
    distance_kind: str
    barrier_paths: tuple[str, ...]
    chain_path: str
    steps: Mapping[str, str]  # a generic step (energy, path, chain) -> its task kind here
    # Optimizer label -> {"optimizer": base label, "batch_size": ..., "lr": ...}: the
    # hyperparameter axes of the block's networks (a grid's, or one point per entry).
    hyperparameters: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # The label of its architecture in `grid.models` (None without them).
    architecture: str | None = None

    @property
    def networks(self) -> list[Network]:
        return [Network(self.name, o.key, s) for o in self.optimizers for s in self.seeds]


def _data(config: StudyConfig) -> DataParams:
    """The analyses' data: with `data.eval_train_size` / `eval_test_size`, subsets of the
    splits the networks trained on (training reads `_data(config).full`)."""
    d = config.data
    return DataParams(
        d.name, d.train_size, d.test_size, d.seed, d.root, d.eval_train_size, d.eval_test_size
    )


# Parameter sets evaluated together (memory, not results): the measurements' defaults.
MAX_SETS, MAX_FLIP_SETS = 32, 16
# A chain's profile recomputes BatchNorm on this many training inputs (`profile`'s default).
BEND_PROFILE_BN_SAMPLES = 2000


def _planner(config: StudyConfig) -> Callable[[int, int], EvalPlan]:
    """How the study's measurements evaluate: BatchNorm recomputed on `bn_samples` seeded
    training inputs (seed 0), `max_sets` sets at a time, on the config's device."""
    return lambda bn_samples, max_sets: EvalPlan(
        bn_samples=bn_samples, max_sets=max_sets, device=config.device
    )


def main_blocks(config: StudyConfig) -> list[Block]:
    """The main networks: one block, or with `grid.models` one block per architecture (all
    named main: their networks' labels are distinct, and the report pools them), so that
    pairs, alignments and populations are formed within one architecture only."""
    entries, axes = grid_points(config.optimizers, config.grid, config.training.batch_size)
    models = grid_models(config)
    if not models:
        return [_main_block(config, None, config.model, entries, axes)]
    out = []
    for label, model in models.items():
        mine = [e for e in entries if axes[e.key].get("model") == label]
        out.append(_main_block(config, label, model, mine, {e.key: axes[e.key] for e in mine}))
    return out


def main_block(config: StudyConfig) -> Block:
    """The main block of a config with one architecture (without `grid.models`, or with
    one model)."""
    found = main_blocks(config)
    if len(found) != 1:
        raise StudyConfigError(
            f"the main networks form {len(found)} blocks, one per grid model; use main_blocks"
        )
    return found[0]


def _main_block(
    config: StudyConfig,
    architecture: str | None,
    model: Mapping[str, Any],
    entries: Sequence[OptimizerSpec],
    axes: Mapping[str, Mapping[str, Any]],
) -> Block:
    data, device, analyses = _data(config), config.device, config.analyses
    measured = _planner(config)
    found: list[Analysis] = []
    if (energy := analyses.local_energy) is not None:
        found.append(
            Analysis(
                "energy",
                "energy",
                lambda n: EnergyParams(
                    n.name,
                    MAIN,
                    data,
                    tuple(energy.sigmas),
                    energy.samples,
                    energy.noise,
                    energy.split,
                    measured(energy.bn_samples, MAX_SETS),
                ),
            )
        )
    if (distance := analyses.distances) is not None:
        found.append(
            Analysis(
                "distance",
                "distance",
                lambda a, b: DistanceParams(a.name, b.name, MAIN, tuple(distance.kinds)),
                pairs=distance.pairs,
                heavy=False,
            )
        )
    if (paths := analyses.paths) is not None:
        for kind in paths.kinds:
            found.append(
                Analysis(
                    "profile",
                    f"profile/{kind}",
                    lambda a, b, kind=kind: ProfileParams(
                        a.name,
                        b.name,
                        MAIN,
                        kind,
                        data,
                        paths.points,
                        paths.refine,
                        measured(paths.bn_samples, MAX_SETS),
                    ),
                    pairs=paths.pairs,
                )
            )
    if (bends := analyses.bends) is not None:
        found.append(
            Analysis(
                "bend",
                "bend",
                lambda a, b: BendParams(
                    a.name,
                    b.name,
                    MAIN,
                    data,
                    bends.method,
                    # a re-trained midpoint always gives the polychain: kind is not read
                    "polychain" if bends.method == "retrain" else bends.kind,
                    bends.epochs,
                    bends.lr,
                    bends.points,
                    device,
                    measured(BEND_PROFILE_BN_SAMPLES, MAX_SETS),
                ),
                pairs=bends.pairs,
            )
        )
    if (measures := analyses.measures) is not None:
        variants: list[tuple[str, tuple[float, float, int, bool] | None]] = [("measure", None)]
        if (again := measures.reparametrize) is not None:
            low, high = again.scale_range
            variants.append(("measure-reparametrized", (low, high, again.seed, again.permutations)))
        for prefix, reparametrize in variants:
            found.append(
                Analysis(
                    "measure",
                    prefix,
                    lambda n, reparametrize=reparametrize: MeasureParams(
                        n.name,
                        MAIN,
                        data,
                        tuple(measures.kinds),
                        tuple(measures.sigmas),
                        measures.samples,
                        measures.train_samples,
                        measures.probes,
                        measures.iters,
                        measures.rho,
                        measures.sam_steps,
                        measures.deviation,
                        measured(measures.bn_samples, MAX_SETS),
                        reparametrize,
                    ),
                    reads="trained",
                )
            )
    kinds = tuple(distance.kinds) if distance is not None else ()
    path_kinds = tuple(paths.kinds) if paths is not None else ()
    return Block(
        name=MAIN,
        model=model,
        architecture=architecture,
        optimizers=tuple(entries),
        hyperparameters=axes,
        seeds=tuple(config.seeds),
        training=config.training,
        analyses=tuple(found),
        configured=frozenset(
            name
            for name, spec in (
                ("local_energy", energy),
                ("distances", distance),
                ("paths", paths),
                ("bends", bends),
            )
            if spec is not None
        ),
        level_name="sigma",
        summary_levels=tuple(config.report.summary_sigmas),
        distance_kind="geodesic" if "geodesic" in kinds or not kinds else kinds[0],
        barrier_paths=tuple(k for k in ("geodesic", "linear") if k in path_kinds),
        chain_path="polychain" if bends is None or bends.method == "retrain" else bends.kind,
        steps={"energy": "energy", "path": "profile", "chain": "bend"},
    )


def binary_block(config: StudyConfig) -> Block | None:
    binary = config.binary
    if binary is None:
        return None
    data, device, t = _data(config), config.device, binary.training
    measured = _planner(config)
    chain_optimizer = binary.optimizers[0].resolved()
    analyses = (
        Analysis(
            "flip_energy",
            "energy",
            lambda n: FlipEnergyParams(
                n.name,
                BINARY,
                data,
                tuple(binary.flip_probs),
                binary.samples,
                measured(binary.bn_samples, MAX_FLIP_SETS),
            ),
        ),
        Analysis(
            "distance",
            "distance",
            lambda a, b: DistanceParams(a.name, b.name, BINARY, ("overlap",)),
            pairs="all",
            heavy=False,
        ),
        Analysis(
            "flip_path",
            "profile/flip",
            lambda a, b: FlipPathParams(
                a.name,
                b.name,
                BINARY,
                data,
                binary.flip_orders,
                binary.flip_points,
                measured(binary.bn_samples, MAX_FLIP_SETS),
            ),
            pairs=binary.pairs,
        ),
        Analysis(
            "flip_chain",
            "bend",
            lambda a, b: FlipChainParams(
                a.name,
                b.name,
                BINARY,
                data,
                chain_optimizer,
                t.epochs,
                t.batch_size,
                t.schedule,
                binary.flip_orders,
                binary.flip_points,
                device,
                measured(binary.bn_samples, MAX_FLIP_SETS),
            ),
            pairs=binary.chain_pairs,
        ),
    )
    return Block(
        name=BINARY,
        model=binary.model,
        optimizers=tuple(binary.optimizers),
        hyperparameters=grid_points(binary.optimizers, None, binary.training.batch_size)[1],
        seeds=tuple(binary.seeds),
        training=t,
        analyses=analyses,
        configured=frozenset({"local_energy", "distances", "paths", "bends"}),
        level_name="p",
        summary_levels=(),
        distance_kind="overlap",
        barrier_paths=("flip",),
        chain_path="flip-chain",
        steps={"energy": "flip_energy", "path": "flip_path", "chain": "flip_chain"},
    )


def blocks(config: StudyConfig) -> list[Block]:
    """The study's blocks as the task graph forms them: main (one per architecture with
    `grid.models`), then binary when configured."""
    binary = binary_block(config)
    return main_blocks(config) + ([binary] if binary is not None else [])


def pooled(found: Sequence[Block]) -> Block:
    """Blocks of one name (the main block's architectures) as one, as the report reads
    them: their optimizer entries and hyperparameters in order; everything else is the
    first's (the analyses' settings are the same in all)."""
    first = found[0]
    if len(found) == 1:
        return first
    return dataclasses.replace(
        first,
        optimizers=tuple(o for b in found for o in b.optimizers),
        hyperparameters={k: v for b in found for k, v in b.hyperparameters.items()},
        architecture=None,
    )


def report_blocks(config: StudyConfig) -> list[Block]:
    """The study's blocks as the report reads them: one per name (main, then binary), the
    main block's architectures pooled."""
    grouped: dict[str, list[Block]] = {}
    for block in blocks(config):
        grouped.setdefault(block.name, []).append(block)
    return [pooled(group) for group in grouped.values()]


def networks(config: StudyConfig, block: str = MAIN) -> list[Network]:
    return [n for b in blocks(config) if b.name == block for n in b.networks]


def pairs(nets: list[Network], scope: PairScope) -> list[tuple[Network, Network]]:
    """Unordered pairs: `all`; `within` one optimizer; `first-seeds` (the first seed of
    each optimizer against each other); `within+first-seeds` both; `none`."""
    if scope == "none":
        return []
    chosen = []
    first: dict[str, Network] = {}
    for net in nets:
        first.setdefault(net.optimizer, net)
    for a, b in combinations(nets, 2):
        same = a.optimizer == b.optimizer
        firsts = first[a.optimizer] is a and first[b.optimizer] is b
        if (
            scope == "all"
            or (scope in ("within", "within+first-seeds") and same)
            or (scope in ("first-seeds", "within+first-seeds") and firsts and not same)
        ):
            chosen.append((a, b))
    return chosen


def with_mates(trains: dict[str, TrainParams], size: int | None) -> dict[str, TrainParams]:
    """Vectorized training: a network's numbers depend, in their last bits, on the networks
    it trains with, so its population is part of what its task reads. Networks that can
    train together form populations of at most `size` (all, by default), in order."""
    groups: dict[tuple[object, ...], list[TrainParams]] = {}
    for train in trains.values():
        groups.setdefault(train.population(), []).append(train)
    out = {}
    for members in groups.values():
        step = size or len(members)
        for start in range(0, len(members), step):
            chunk = tuple(members[start : start + step])
            for train in chunk:
                out[train.network] = dataclasses.replace(train, mates=chunk)
    return {name: out[name] for name in trains}


def _optimizer(block: Block, label: str) -> OptimizerSpec:
    return next(o for o in block.optimizers if o.key == label)


def build_graph(config: StudyConfig) -> list[Task]:
    """Every task of the study, dependencies before dependents; keys are checked to be safe
    file names and distinct."""
    data = _data(config).full
    gpus = 1.0 if config.device.startswith("cuda") else 0.0
    tasks: list[Task] = []
    hashes: dict[str, str] = {}

    def add(key: str, kind: str, block: str, params: TaskParams, deps: Sequence[str],
            heavy: bool = True) -> None:  # fmt: skip
        value = task_hash(kind, params, [(d, hashes[d]) for d in deps])
        hashes.setdefault(key, value)
        tasks.append(Task(key, kind, block, params, tuple(deps), value, gpus=gpus if heavy else 0))

    for block in blocks(config):
        nets = block.networks
        engine = block.training.engine or ("vmap" if config.device.startswith("cuda") else "loop")
        trains = {}
        for net in nets:
            spec = _optimizer(block, net.optimizer)
            trains[net.name] = TrainParams(
                network=net.name,
                block=block.name,
                optimizer_label=net.optimizer,
                optimizer=spec.resolved(),
                seed=net.seed,
                model=block.model,
                data=data,
                epochs=spec.epochs if spec.epochs is not None else block.training.epochs,
                schedule=block.training.schedule,
                batch_size=spec.batch_size or block.training.batch_size,
                stop_at_zero_train_error=block.training.stop_at_zero_train_error,
                augment=block.training.augment,
                device=config.device,
                engine=engine,
            )
        if engine == "vmap":
            trains = with_mates(trains, block.training.population_size)
        for net in nets:
            train = trains[net.name]
            add(train_key(net.name), "train", block.name, train, ())
            add(
                canonical_key(net.name),
                "canonical",
                block.name,
                CanonicalParams(net.name, block.name),
                (train_key(net.name),),
                heavy=False,
            )
        reference = nets[0]
        for net in nets:
            add(
                f"align/{net.name}",
                "align",
                block.name,
                AlignParams(net.name, reference.name, block.name),
                (canonical_key(net.name), canonical_key(reference.name)),
                heavy=False,
            )
        for analysis in block.analyses:
            if analysis.pairs is None:
                make_one: Any = analysis.make
                for net in nets:
                    add(
                        f"{analysis.prefix}/{net.name}",
                        analysis.kind,
                        block.name,
                        make_one(net),
                        (
                            canonical_key(net.name)
                            if analysis.reads == "canonical"
                            else train_key(net.name),
                        ),
                        analysis.heavy,
                    )
            else:
                make_two: Any = analysis.make
                for a, b in pairs(nets, analysis.pairs):
                    add(
                        f"{analysis.prefix}/{a.name}/{b.name}",
                        analysis.kind,
                        block.name,
                        make_two(a, b),
                        (canonical_key(a.name), canonical_key(b.name)),
                        analysis.heavy,
                    )
    _check_keys(tasks)
    return tasks


def _check_keys(tasks: Sequence[Task]) -> None:
    twice = [key for key, n in Counter(t.key for t in tasks).items() if n > 1]
    if twice:
        raise StudyConfigError(
            f"the study would run {len(twice)} tasks twice under one key (e.g. {twice[0]}): "
            "optimizer labels and seeds must be distinct within a block"
        )
    for task in tasks:
        try:
            check_key(task.key)
        except StoreError as exc:
            raise StudyConfigError(str(exc)) from None


@dataclass(frozen=True)
class Standing:
    """Where each task of the graph stands given the store's records."""

    finished: frozenset[str]
    failed: Mapping[str, TaskRecord]
    blocked: tuple[str, ...]
    pending: tuple[Task, ...]


def standing_of(
    tasks: Sequence[Task], records: Mapping[str, TaskRecord], retry: Callable[[TaskRecord], bool]
) -> Standing:
    """Finished and failed tasks with their current hash; failed tasks are pending again
    when `retry` says so; tasks that depend on a failed or blocked one are blocked."""
    finished, failed, blocked, pending = set(), {}, [], []
    stuck: set[str] = set()
    for task in tasks:  # dependencies come first
        record = records.get(task.key)
        if record is not None and record.hash == task.hash:
            if not record.failed:
                finished.add(task.key)
                continue
            if not retry(record):
                failed[task.key] = record
                stuck.add(task.key)
                continue
        if any(d in stuck for d in task.deps):
            blocked.append(task.key)
            stuck.add(task.key)
        else:
            pending.append(task)
    return Standing(frozenset(finished), failed, tuple(blocked), tuple(pending))
