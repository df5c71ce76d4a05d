"""The numbers the report rests on, gathered from a study directory into frozen records.

Only rows of tasks that belong to the study's current task graph, with the config hash
that graph gives them, are used: rows left behind by an earlier config (other seeds,
other settings) never mix into the report. What is configured and what has finished is
kept alongside, so the report can say what is missing."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toroid.study.config import StudyConfig
from toroid.study.graph import Block, Task, build_graph, report_blocks, standing_of
from toroid.study.rows import DistanceRow, EnergyRow, MeasureRow, NetworkRow, ProfileRow, Row
from toroid.study.statistics import (
    GranulatedTau,
    KendallTau,
    bootstrap_kendall,
    granulated_tau,
    interpolate,
    summary_level,
)
from toroid.study.store import Store, TaskRecord
from toroid.study.tasks import KINDS

# The report's words for each stage (task kind), in the order a block goes through them
# (the registry's order).
STAGES: dict[str, str] = {name: kind.words for name, kind in KINDS.items()}

# The report reads rows as the store holds them.
NetworkRecord = NetworkRow
DistanceRecord = DistanceRow
ProfileRecord = ProfileRow


@dataclass(frozen=True)
class EnergyCurve:
    """dE at each level (sigma, or flip probability p) of one network and split."""

    network: str
    split: str
    noise: str
    levels: tuple[float, ...]
    mean: tuple[float, ...]
    stderr: tuple[float, ...]
    base: float
    samples: int


@dataclass(frozen=True)
class MeasureValues:
    """One flatness measure at one level (None: the measure has none) over a block's
    networks: each network's value as trained (`before`) and on its reparametrized copy
    (`after`, empty without copies), in network order."""

    measure: str
    level: float | None
    before: Mapping[str, float]
    after: Mapping[str, float]


@dataclass(frozen=True)
class StageProgress:
    """Tasks of one stage: finished, of which in all, and how many failed."""

    done: int
    total: int
    failed: int = 0

    @property
    def missing(self) -> int:
        return self.total - self.done


@dataclass(frozen=True)
class BlockEvidence:
    """One block (main or binary) of a study: its finished results and their summaries.

    `flatness` maps each network with a local-energy curve on `flatness_split` to its dE
    at `level` (linear interpolation between measured levels); `level` is None when no
    positive level was measured. `configured` names the analyses the config asks for;
    `progress` counts finished and total tasks per stage. `measures` holds the flatness
    measures side by side (analyses.measures), `hyperparameters` each network's
    hyperparameters for the granulated tau (`network_hyperparameters`), `summary_levels`
    the report's preferred summary levels."""

    block: str
    optimizers: tuple[str, ...]
    networks: tuple[NetworkRecord, ...]
    energy: tuple[EnergyCurve, ...]
    distances: tuple[DistanceRecord, ...]
    profiles: tuple[ProfileRecord, ...]
    level: float | None
    level_name: str
    flatness_split: str
    flatness: Mapping[str, float]
    distance_kind: str
    barrier_paths: tuple[str, ...]
    chain_path: str
    configured: frozenset[str]
    steps: Mapping[str, str] = field(default_factory=dict)
    progress: Mapping[str, StageProgress] = field(default_factory=dict)
    measures: tuple[MeasureValues, ...] = ()
    hyperparameters: Mapping[str, Mapping[str, Hashable]] = field(default_factory=dict)
    summary_levels: tuple[float, ...] = ()

    def stage(self, step: str) -> str:
        """The task kind of a generic step (energy, path, chain) in this block."""
        return self.steps.get(step, step)

    def why_missing(self, analysis: str | None, steps: Sequence[str]) -> str | None:
        """Why results of `analysis` may be absent or partial: not configured, or the
        first of `steps` (generic steps or task kinds) with unfinished tasks; None when
        everything it needs has finished."""
        if analysis is not None and analysis not in self.configured:
            return f"not configured (analyses.{analysis} is null)"
        for step in steps:
            progress = self.progress.get(self.stage(step))
            if progress is not None and progress.missing:
                failed = f", {progress.failed} failed" if progress.failed else ""
                return (
                    f"{progress.done} of {progress.total} {STAGES[self.stage(step)]} tasks "
                    f"finished{failed}"
                )
        return None

    def network(self, name: str) -> NetworkRecord | None:
        return next((n for n in self.networks if n.name == name), None)

    def optimizer_of(self, name: str) -> str:
        """The optimizer label of a network name `block/optimizer/sSEED`."""
        return name.split("/")[1]

    def profiles_on(self, path: str) -> tuple[ProfileRecord, ...]:
        return tuple(p for p in self.profiles if p.path == path)

    def distances_of(self, kind: str) -> tuple[DistanceRecord, ...]:
        return tuple(d for d in self.distances if d.kind == kind)

    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.networks)


@dataclass(frozen=True)
class Evidence:
    """A study's evidence; `failures` are the failed tasks of the current config with
    their reasons, `blocked` the tasks skipped because they depend on one."""

    name: str
    directory: Path
    config: StudyConfig
    main: BlockEvidence
    binary: BlockEvidence | None
    failures: tuple[TaskRecord, ...] = ()
    blocked: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        blocks = (self.main,) if self.binary is None else (self.main, self.binary)
        return all(p.missing == 0 for b in blocks for p in b.progress.values())


def current_rows(store: Store, row_type: type[Row], graph: Mapping[str, str]) -> list[Row]:
    """Rows of `row_type` written by a task of the current graph with its current hash."""
    return [s.row for s in store.rows(row_type) if graph.get(s.task) == s.hash]


def _progress(
    tasks: Sequence[Task], records: Mapping[str, TaskRecord], block: str
) -> dict[str, StageProgress]:
    out: dict[str, StageProgress] = {}
    for kind in STAGES:
        mine = [t for t in tasks if t.kind == kind and t.block == block]
        if mine:
            found = [records.get(t.key) for t in mine]
            current = [r for r, t in zip(found, mine, strict=True) if r and r.hash == t.hash]
            done = sum(not r.failed for r in current)
            out[kind] = StageProgress(done, len(mine), sum(r.failed for r in current))
    return out


def energy_curves(rows: Sequence[EnergyRow]) -> tuple[EnergyCurve, ...]:
    """One curve per (network, split), levels increasing, in the rows' first-seen order."""
    grouped: dict[tuple[str, str], list[EnergyRow]] = {}
    for row in rows:
        grouped.setdefault((row.network, row.split), []).append(row)
    curves = []
    for (network, split), group in grouped.items():
        group = sorted(group, key=lambda r: r.level)
        curves.append(
            EnergyCurve(
                network=network,
                split=split,
                noise=group[0].noise,
                levels=tuple(r.level for r in group),
                mean=tuple(r.mean for r in group),
                stderr=tuple(r.stderr for r in group),
                base=group[0].base,
                samples=len(group[0].raw),
            )
        )
    return tuple(curves)


def measure_values(
    rows: Sequence[MeasureRow], order: Mapping[str, int]
) -> tuple[MeasureValues, ...]:
    """One record per (measure, level): measures in the order the rows first name them,
    levels increasing (None first), networks in `order` (others are dropped)."""
    grouped: dict[str, dict[float | None, tuple[dict[str, float], dict[str, float]]]] = {}
    for row in rows:
        if row.network in order:
            levels = grouped.setdefault(row.measure, {})
            before, after = levels.setdefault(row.level, ({}, {}))
            (after if row.reparametrized else before)[row.network] = row.value

    def ordered(values: Mapping[str, float]) -> dict[str, float]:
        return {k: values[k] for k in sorted(values, key=order.__getitem__)}

    return tuple(
        MeasureValues(measure, level, ordered(before), ordered(after))
        for measure, levels in grouped.items()
        for level, (before, after) in sorted(
            levels.items(), key=lambda item: -math.inf if item[0] is None else item[0]
        )
    )


def values_at(found: Sequence[MeasureValues], measure: str, level: float) -> MeasureValues | None:
    """`measure` at `level`: the measured record, or each network's values interpolated
    linearly between its measured levels; None when nothing of `measure` has levels."""
    mine = [v for v in found if v.measure == measure and v.level is not None]
    for values in mine:
        if values.level == level:
            return values
    if not mine:
        return None

    def at(side: str) -> dict[str, float]:
        names = [n for n in getattr(mine[0], side) if all(n in getattr(v, side) for v in mine)]
        levels = [float(v.level) for v in mine if v.level is not None]
        out = {n: interpolate(levels, [getattr(v, side)[n] for v in mine], level) for n in names}
        return {n: x for n, x in out.items() if not math.isnan(x)}

    return MeasureValues(measure, level, at("before"), at("after"))


def block_hyperparameters(block: Block) -> dict[str, Mapping[str, Any]]:
    """Optimizer label -> its hyperparameters ({"optimizer": base label, "batch_size",
    "lr"}) as the block's `hyperparameters` holds them; a label it does not hold (or a
    `Block` without that field) falls back to {"optimizer": label}."""
    known: Mapping[str, Mapping[str, Any]] = getattr(block, "hyperparameters", None) or {}
    return {o.key: dict(known.get(o.key) or {"optimizer": o.key}) for o in block.optimizers}


def _level_index(values: Sequence[Any]) -> dict[Any, int]:
    """Each distinct value's position among the sorted distinct values (None first)."""
    distinct = sorted(set(values), key=lambda v: (v is not None, v if v is not None else 0))
    return {v: i for i, v in enumerate(distinct)}


def network_hyperparameters(
    by_label: Mapping[str, Mapping[str, Any]], networks: Sequence[tuple[str, str, int]]
) -> dict[str, dict[str, Hashable]]:
    """Per network (name, optimizer label, seed): the hyperparameters the granulated tau
    reads: "optimizer" (the base label), every other hyperparameter that takes more than
    one value within one optimizer, as its level within that optimizer (the k-th smallest
    learning rate of each optimizer is level k: a grid scales every optimizer's own
    learning rate by the same factors), and "seed". A hyperparameter that never varies
    within an optimizer is a property of the optimizer, not an axis (docs/study.md)."""
    base = {label: str(h.get("optimizer", label)) for label, h in by_label.items()}
    keys = sorted({k for h in by_label.values() for k in h} - {"optimizer", "seed"})
    levels: dict[tuple[str, str], dict[Any, int]] = {}
    for key in keys:
        for optimizer in set(base.values()):
            mine = [h.get(key) for label, h in by_label.items() if base[label] == optimizer]
            levels[(key, optimizer)] = _level_index(mine)
    varying = [k for k in keys if any(len(levels[(k, o)]) > 1 for o in set(base.values()))]
    out: dict[str, dict[str, Hashable]] = {}
    for name, label, seed in networks:
        optimizer = base.get(label, label)
        row: dict[str, Hashable] = {"optimizer": optimizer, "seed": seed}
        for key in varying:
            row[key] = levels[(key, optimizer)].get(by_label.get(label, {}).get(key), 0)
        out[name] = row
    return out


def hyperparameter_axes(hyperparameters: Mapping[str, Mapping[str, Hashable]]) -> tuple[str, ...]:
    """The granulated tau's axes: every key but the seed that takes two or more values
    ("optimizer" first)."""
    rows = list(hyperparameters.values())
    keys = sorted({k for row in rows for k in row} - {"seed"}, key=lambda k: (k != "optimizer", k))
    return tuple(k for k in keys if len({row[k] for row in rows}) > 1)


# Flatness measures against generalization ---------------------------------------------------

# Invariance under the reparametrization: every network's value after equals its value
# before to math.isclose(rel_tol=INVARIANCE_RTOL, abs_tol=INVARIANCE_ATOL); two NaNs are
# equal. docs/study.md ("Claim 6 and the flatness measures") gives the reasons.
INVARIANCE_RTOL = 1e-4
INVARIANCE_ATOL = 1e-9
# Measures computed in raw coordinates (those a reparametrization may change).
RAW_MEASURES = ("raw_energy", "raw_hessian_trace", "sam_sharpness", "log_norm")


def same_value(a: float, b: float) -> bool:
    """Whether a value after the reparametrization equals the one before (the rule above)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=INVARIANCE_RTOL, abs_tol=INVARIANCE_ATOL)


def relative_change(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|) (0 for two zeros, NaN unless both are finite)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


@dataclass(frozen=True)
class Invariance:
    """A measure before and after the reparametrization, over the `compared` networks
    measured both ways: `invariant` is None when there are none; `largest_change` is the
    largest relative change (NaN when none is finite)."""

    compared: int
    invariant: bool | None
    largest_change: float


def invariance(values: MeasureValues) -> Invariance:
    pairs = [(values.before[n], values.after[n]) for n in values.before if n in values.after]
    if not pairs:
        return Invariance(0, None, math.nan)
    changes = [c for c in (relative_change(a, b) for a, b in pairs) if not math.isnan(c)]
    return Invariance(
        len(pairs),
        all(same_value(a, b) for a, b in pairs),
        max(changes) if changes else math.nan,
    )


@dataclass(frozen=True)
class MeasureSummary:
    """One measure at one level against generalization over a block's networks: Kendall's
    tau-b with its bootstrap interval against test error (`test`) and against the gap
    test error - train error (`gap`), Jiang's granulated tau against each (None without
    an axis), the invariance under the reparametrization, and tau against test error
    after it (`after`; None without reparametrized copies)."""

    measure: str
    level: float | None
    test: KendallTau
    gap: KendallTau
    granulated_test: GranulatedTau | None
    granulated_gap: GranulatedTau | None
    invariance: Invariance
    after: KendallTau | None
    axes: tuple[str, ...]

    @property
    def n(self) -> int:
        return self.test.n

    @property
    def raw(self) -> bool:
        return self.measure in RAW_MEASURES


def _points(
    block: BlockEvidence, values: Mapping[str, float], target: str
) -> tuple[list[str], list[float], list[float]]:
    names, x, y = [], [], []
    for net in block.networks:
        value = values.get(net.name)
        if value is None or not math.isfinite(value) or net.test_error is None:
            continue
        goal = net.test_error if target == "test" else net.test_error - net.train_error
        names.append(net.name)
        x.append(value)
        y.append(goal)
    return names, x, y


def summarize_measure(
    block: BlockEvidence, values: MeasureValues, *, reps: int, seed: int, level: float
) -> MeasureSummary:
    """`values` against test error and the generalization gap (`level`: the bootstrap
    interval's confidence level)."""
    taus: dict[str, KendallTau] = {}
    granulated: dict[str, GranulatedTau | None] = {}
    axes: tuple[str, ...] = ()
    for target in ("test", "gap"):
        names, x, y = _points(block, values.before, target)
        taus[target] = bootstrap_kendall(x, y, reps=reps, seed=seed, level=level)
        rows = [block.hyperparameters[n] for n in names if n in block.hyperparameters]
        axes = hyperparameter_axes(dict(zip(names, rows, strict=False)))
        complete = len(rows) == len(names) and bool(axes) and bool(names)
        granulated[target] = granulated_tau(rows, x, y, axes=axes) if complete else None
    after = None
    if values.after:
        _, x, y = _points(block, values.after, "test")
        after = bootstrap_kendall(x, y, reps=reps, seed=seed, level=level)
    return MeasureSummary(
        values.measure,
        values.level,
        taus["test"],
        taus["gap"],
        granulated["test"],
        granulated["gap"],
        invariance(values),
        after,
        axes,
    )


def _flatness(
    curves: Sequence[EnergyCurve], preferred: Sequence[float]
) -> tuple[float | None, str, dict[str, float]]:
    splits = {c.split for c in curves}
    split = "train" if "train" in splits or not splits else sorted(splits)[0]
    chosen = [c for c in curves if c.split == split]
    measured = sorted({level for c in chosen for level in c.levels})
    level = summary_level(preferred, measured)
    if level is None:
        return None, split, {}
    values = {c.network: interpolate(c.levels, c.mean, level) for c in chosen}
    return level, split, {k: v for k, v in values.items() if not math.isnan(v)}


def _block(
    block: Block, tables: Mapping[Any, Sequence[Row]], progress: Mapping[str, StageProgress]
) -> BlockEvidence:
    order = {net.name: i for i, net in enumerate(block.networks)}

    def mine(row_type: type[Row]) -> list[Row]:
        return [r for r in tables[row_type] if r.block == block.name]

    nets = sorted(
        (r for r in mine(NetworkRow) if isinstance(r, NetworkRow) and r.network in order),
        key=lambda n: order[n.network],
    )
    curves = energy_curves([r for r in mine(EnergyRow) if isinstance(r, EnergyRow)])
    level, split, flatness = _flatness(curves, block.summary_levels)
    measures = measure_values([r for r in mine(MeasureRow) if isinstance(r, MeasureRow)], order)
    hyperparameters = network_hyperparameters(
        block_hyperparameters(block),
        [(net.name, net.optimizer, net.seed) for net in block.networks],
    )
    return BlockEvidence(
        block=block.name,
        optimizers=tuple(o.key for o in block.optimizers),
        networks=tuple(nets),
        energy=curves,
        distances=tuple(r for r in mine(DistanceRow) if isinstance(r, DistanceRow)),
        profiles=tuple(r for r in mine(ProfileRow) if isinstance(r, ProfileRow)),
        level=level,
        level_name=block.level_name,
        flatness_split=split,
        flatness={k: flatness[k] for k in sorted(flatness, key=lambda k: order.get(k, 0))},
        distance_kind=block.distance_kind,
        barrier_paths=block.barrier_paths,
        chain_path=block.chain_path,
        configured=block.configured,
        steps=block.steps,
        progress=progress,
        measures=measures,
        hyperparameters=hyperparameters,
        summary_levels=tuple(block.summary_levels),
    )


def gather(directory: str | Path, config: StudyConfig) -> Evidence:
    """The evidence of the study in `directory` run with `config`, as far as it got."""
    directory = Path(directory)
    tasks = build_graph(config)
    graph = {t.key: t.hash for t in tasks}
    records = Store.records(directory)
    tables: dict[type, list[Row]] = {
        t: [] for t in (NetworkRow, EnergyRow, DistanceRow, ProfileRow, MeasureRow)
    }
    if records:
        with Store(directory, readonly=True) as store:
            tables = {row_type: current_rows(store, row_type, graph) for row_type in tables}
    # With grid.models the main block's architectures are pooled into one (report_blocks).
    found = [_block(b, tables, _progress(tasks, records, b.name)) for b in report_blocks(config)]
    standing = standing_of(tasks, records, lambda record: False)
    return Evidence(
        config.name,
        directory,
        config,
        found[0],
        found[1] if len(found) > 1 else None,
        tuple(standing.failed.values()),
        standing.blocked,
    )


def measure_summaries(
    block: BlockEvidence, *, reps: int, seed: int, level: float = 0.95
) -> tuple[MeasureSummary, ...]:
    """Every measured (measure, level) of the block against generalization."""
    return tuple(
        summarize_measure(block, values, reps=reps, seed=seed, level=level)
        for values in block.measures
        if values.before
    )
