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
from toroid.study.graph import BINARY, MAIN, Task, build_graph, networks
from toroid.study.statistics import interpolate, summary_level
from toroid.study.store import Store

# The stages a block's tasks go through, in order, with the words the report uses.
STAGES: dict[str, str] = {
    "train": "training",
    "canonical": "canonical form",
    "align": "alignment",
    "energy": "local energy",
    "flip_energy": "flip local energy",
    "distance": "distances",
    "profile": "path profiles",
    "flip_path": "flip-path profiles",
    "bend": "single-bend chains",
    "flip_chain": "two-segment flip chains",
}


@dataclass(frozen=True)
class NetworkRecord:
    name: str
    optimizer: str
    seed: int
    epochs: int
    reached_zero_train_error: bool
    train_error: float
    train_loss: float
    test_error: float | None
    test_loss: float | None
    grad_evals: int
    wall_time: float


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
class DistanceRecord:
    a: str
    b: str
    kind: str
    value: float
    aligned: bool


@dataclass(frozen=True)
class ProfileRecord:
    a: str
    b: str
    path: str
    ts: tuple[float, ...]
    train_error: tuple[float, ...]
    test_error: tuple[float, ...] | None
    barrier_train: float
    barrier_test: float | None
    max_train_error: float


@dataclass(frozen=True)
class StageProgress:
    done: int
    total: int

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
    progress: Mapping[str, StageProgress] = field(default_factory=dict)

    def stage(self, step: str) -> str:
        """The task kind of a generic step (energy, path, chain) in this block."""
        if self.block == MAIN:
            return {"energy": "energy", "path": "profile", "chain": "bend"}.get(step, step)
        return {"energy": "flip_energy", "path": "flip_path", "chain": "flip_chain"}.get(step, step)

    def why_missing(self, analysis: str | None, steps: Sequence[str]) -> str | None:
        """Why results of `analysis` may be absent or partial: not configured, or the
        first of `steps` (generic steps or task kinds) with unfinished tasks; None when
        everything it needs has finished."""
        if analysis is not None and analysis not in self.configured:
            return f"not configured (analyses.{analysis} is null)"
        for step in steps:
            progress = self.progress.get(self.stage(step))
            if progress is not None and progress.missing:
                return (
                    f"{progress.done} of {progress.total} {STAGES[self.stage(step)]} tasks finished"
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
    name: str
    directory: Path
    config: StudyConfig
    main: BlockEvidence
    binary: BlockEvidence | None

    @property
    def complete(self) -> bool:
        blocks = (self.main,) if self.binary is None else (self.main, self.binary)
        return all(p.missing == 0 for b in blocks for p in b.progress.values())


def current_rows(store: Store, table: str, graph: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows of `table` written by a task of the current graph with its current hash."""
    return [r for r in store.rows(table) if graph.get(r["task"]) == r["config_hash"]]


def _progress(
    tasks: Sequence[Task], finished: Mapping[str, str], block: str
) -> dict[str, StageProgress]:
    out: dict[str, StageProgress] = {}
    for kind in STAGES:
        mine = [t for t in tasks if t.kind == kind and t.params.get("block") == block]
        if mine:
            done = sum(finished.get(t.key) == t.config_hash for t in mine)
            out[kind] = StageProgress(done, len(mine))
    return out


def _network(row: Mapping[str, Any]) -> NetworkRecord:
    return NetworkRecord(
        name=row["network"],
        optimizer=row["optimizer"],
        seed=int(row["seed"]),
        epochs=int(row["epochs"]),
        reached_zero_train_error=bool(row["reached_zero_train_error"]),
        train_error=float(row["train_error"]),
        train_loss=float(row["train_loss"]),
        test_error=None if row["test_error"] is None else float(row["test_error"]),
        test_loss=None if row["test_loss"] is None else float(row["test_loss"]),
        grad_evals=int(row["grad_evals"]),
        wall_time=float(row["wall_time"]),
    )


def energy_curves(rows: Sequence[Mapping[str, Any]]) -> tuple[EnergyCurve, ...]:
    """One curve per (network, split), levels increasing, in the rows' first-seen order."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["network"], row["split"]), []).append(row)
    curves = []
    for (network, split), group in grouped.items():
        group = sorted(group, key=lambda r: float(r["sigma"]))
        raw = group[0]["raw"]
        curves.append(
            EnergyCurve(
                network=network,
                split=split,
                noise=str(group[0]["noise"]),
                levels=tuple(float(r["sigma"]) for r in group),
                mean=tuple(float(r["mean"]) for r in group),
                stderr=tuple(float(r["stderr"]) for r in group),
                base=float(group[0]["base"]),
                samples=len(raw) if isinstance(raw, list) else 0,
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


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _profile(row: Mapping[str, Any]) -> ProfileRecord:
    test = row["test_error"]
    return ProfileRecord(
        a=row["a"],
        b=row["b"],
        path=row["path"],
        ts=tuple(float(t) for t in row["ts"]),
        train_error=tuple(float(v) for v in row["train_error"]),
        test_error=None if test is None else tuple(float(v) for v in test),
        barrier_train=_number(row["barrier_train"]),
        barrier_test=None if row["barrier_test"] is None else float(row["barrier_test"]),
        max_train_error=_number(row["max_train_error"]),
    )


def _in_block(rows: Sequence[Mapping[str, Any]], block: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["block"] == block]


def _block(
    *,
    block: str,
    config: StudyConfig,
    tables: Mapping[str, list[dict[str, Any]]],
    progress: Mapping[str, StageProgress],
) -> BlockEvidence:
    order = {net.name: i for i, net in enumerate(networks(config, block))}
    nets = sorted(
        (_network(r) for r in _in_block(tables["networks"], block) if r["network"] in order),
        key=lambda n: order[n.name],
    )
    curves = energy_curves(_in_block(tables["local_energy"], block))
    if block == MAIN:
        energy = config.analyses.local_energy
        preferred: Sequence[float] = energy.summary_sigmas if energy is not None else ()
        analyses = config.analyses
        configured = {
            name
            for name, spec in (
                ("local_energy", analyses.local_energy),
                ("distances", analyses.distances),
                ("paths", analyses.paths),
                ("bends", analyses.bends),
            )
            if spec is not None
        }
        path_kinds = tuple(analyses.paths.kinds) if analyses.paths is not None else ()
        optimizers = tuple(o.key for o in config.optimizers)
        kinds = tuple(analyses.distances.kinds) if analyses.distances is not None else ()
        distance_kind = "geodesic" if "geodesic" in kinds or not kinds else kinds[0]
        level_name = "sigma"
        barrier_paths: tuple[str, ...] = tuple(k for k in ("geodesic", "linear") if k in path_kinds)
        chain_path: str = (
            "polychain"
            if analyses.bends is None or analyses.bends.method == "retrain"
            else analyses.bends.kind
        )
    else:
        assert config.binary is not None
        preferred = ()
        configured = {"local_energy", "distances", "paths", "bends"}
        optimizers = tuple(o.key for o in config.binary.optimizers)
        distance_kind, level_name = "overlap", "p"
        barrier_paths, chain_path = ("flip",), "flip-chain"
    level, split, flatness = _flatness(curves, preferred)
    return BlockEvidence(
        block=block,
        optimizers=optimizers,
        networks=tuple(nets),
        energy=curves,
        distances=tuple(
            DistanceRecord(r["a"], r["b"], r["kind"], float(r["value"]), bool(r["aligned"]))
            for r in _in_block(tables["distances"], block)
        ),
        profiles=tuple(_profile(r) for r in _in_block(tables["profiles"], block)),
        level=level,
        level_name=level_name,
        flatness_split=split,
        flatness={k: flatness[k] for k in sorted(flatness, key=lambda k: order.get(k, 0))},
        distance_kind=distance_kind,
        barrier_paths=barrier_paths,
        chain_path=chain_path,
        configured=frozenset(configured),
        progress=progress,
    )


def gather(directory: str | Path, config: StudyConfig) -> Evidence:
    """The evidence of the study in `directory` run with `config`, as far as it got."""
    directory = Path(directory)
    tasks = build_graph(config)
    graph = {t.key: t.config_hash for t in tasks}
    with Store(directory) as store:
        finished = store.finished()
        tables = {
            table: current_rows(store, table, graph)
            for table in ("networks", "local_energy", "distances", "profiles")
        }
    main = _block(
        block=MAIN, config=config, tables=tables, progress=_progress(tasks, finished, MAIN)
    )
    binary = None
    if config.binary is not None:
        binary = _block(
            block=BINARY,
            config=config,
            tables=tables,
            progress=_progress(tasks, finished, BINARY),
        )
    return Evidence(config.name, directory, config, main, binary)
