"""The numbers the report rests on, gathered from a study directory into frozen records.

Only rows of tasks that belong to the study's current task graph, with the config hash
that graph gives them, are used: rows left behind by an earlier config (other seeds,
other settings) never mix into the report. What is configured and what has finished is
kept alongside, so the report can say what is missing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toroid.study.config import StudyConfig
from toroid.study.graph import Block, Task, blocks, build_graph, standing_of
from toroid.study.rows import DistanceRow, EnergyRow, NetworkRow, ProfileRow, Row
from toroid.study.statistics import interpolate, summary_level
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
    `progress` counts finished and total tasks per stage."""

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
    )


def gather(directory: str | Path, config: StudyConfig) -> Evidence:
    """The evidence of the study in `directory` run with `config`, as far as it got."""
    directory = Path(directory)
    tasks = build_graph(config)
    graph = {t.key: t.hash for t in tasks}
    records = Store.records(directory)
    tables: dict[type, list[Row]] = {
        t: [] for t in (NetworkRow, EnergyRow, DistanceRow, ProfileRow)
    }
    if records:
        with Store(directory, readonly=True) as store:
            tables = {row_type: current_rows(store, row_type, graph) for row_type in tables}
    found = [_block(b, tables, _progress(tasks, records, b.name)) for b in blocks(config)]
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
