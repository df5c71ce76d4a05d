"""The study as a graph of idempotent, keyed tasks.

train(i) -> canonical(i) -> align(i, reference) and local energy(i), distance(i, j),
profile(i, j, kind) for every path kind, bend(i, j) (a re-trained or fitted bend and the
chain through it); the binary block likewise with flip energy, overlap distances, flip
paths and the two-segment chain. Every task has a config hash over exactly the settings
it depends on and its dependencies' hashes: changing one analysis re-runs only it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from toroid.study.config import OptimizerSpec, PairScope, StudyConfig, TrainingSpec

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
    """One unit of work: `key` names it (and its results), `kind` says what runs,
    `deps` must finish first, `params` is everything the runner needs besides the data."""

    key: str
    kind: str
    deps: tuple[str, ...]
    params: dict[str, Any] = field(hash=False)
    config_hash: str
    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def stage(self) -> str:
        return self.kind


def _hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def networks(config: StudyConfig, block: str = MAIN) -> list[Network]:
    if block == MAIN:
        return [Network(MAIN, o.key, s) for o in config.optimizers for s in config.seeds]
    assert config.binary is not None
    return [
        Network(BINARY, o.key, s) for o in config.binary.optimizers for s in config.binary.seeds
    ]


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


def build_graph(config: StudyConfig) -> list[Task]:
    """Every task of the study, dependencies before dependents."""
    data = config.data.model_dump(mode="json")
    device = config.device
    gpus = 1.0 if device.startswith("cuda") else 0.0
    tasks: list[Task] = []
    canonical_hash: dict[Network, str] = {}

    def add_block(
        block: str,
        nets: list[Network],
        model: dict[str, Any],
        optimizers: list[OptimizerSpec],
        training: TrainingSpec,
    ) -> None:
        by_label = {o.key: o for o in optimizers}
        for net in nets:
            spec = by_label[net.optimizer]
            optimizer = spec.resolved()
            budget = training.model_dump(mode="json")
            if spec.epochs is not None:
                budget["epochs"] = spec.epochs
            train_params = {
                "network": net.name,
                "block": block,
                "optimizer_label": net.optimizer,
                "optimizer": optimizer,
                "seed": net.seed,
                "model": model,
                "data": data,
                "training": budget,
                "device": device,
            }
            train_hash = _hash("train", train_params)
            tasks.append(
                Task(f"train/{net.name}", "train", (), train_params, train_hash, gpus=gpus)
            )
            canonical = _hash("canonical", train_hash)
            canonical_hash[net] = canonical
            tasks.append(
                Task(
                    f"canonical/{net.name}",
                    "canonical",
                    (f"train/{net.name}",),
                    {"network": net.name, "block": block, "model": model},
                    canonical,
                )
            )
        reference = nets[0]
        for net in nets:
            tasks.append(
                Task(
                    f"align/{net.name}",
                    "align",
                    (f"canonical/{net.name}", f"canonical/{reference.name}"),
                    {"network": net.name, "reference": reference.name, "block": block},
                    _hash("align", canonical_hash[net], canonical_hash[reference]),
                )
            )

    main = networks(config)
    add_block(MAIN, main, config.model, config.optimizers, config.training)
    analyses = config.analyses
    if analyses.local_energy is not None:
        spec = analyses.local_energy.model_dump(mode="json")
        for net in main:
            tasks.append(
                Task(
                    f"energy/{net.name}",
                    "energy",
                    (f"canonical/{net.name}",),
                    {
                        "network": net.name,
                        "block": MAIN,
                        "data": data,
                        "spec": spec,
                        "device": device,
                    },
                    _hash("energy", canonical_hash[net], spec, data),
                    gpus=gpus,
                )
            )
    if analyses.distances is not None:
        kinds = list(analyses.distances.kinds)
        for a, b in pairs(main, "all"):
            tasks.append(
                Task(
                    f"distance/{a.name}/{b.name}",
                    "distance",
                    (f"canonical/{a.name}", f"canonical/{b.name}"),
                    {"a": a.name, "b": b.name, "block": MAIN, "kinds": kinds},
                    _hash("distance", canonical_hash[a], canonical_hash[b], kinds),
                )
            )
    if analyses.paths is not None:
        spec = analyses.paths.model_dump(mode="json")
        for a, b in pairs(main, analyses.paths.pairs):
            for kind in analyses.paths.kinds:
                tasks.append(
                    Task(
                        f"profile/{kind}/{a.name}/{b.name}",
                        "profile",
                        (f"canonical/{a.name}", f"canonical/{b.name}"),
                        {
                            "a": a.name,
                            "b": b.name,
                            "block": MAIN,
                            "path": kind,
                            "data": data,
                            "spec": spec,
                            "device": device,
                        },
                        _hash("profile", canonical_hash[a], canonical_hash[b], kind, spec, data),
                        gpus=gpus,
                    )
                )
    if analyses.bends is not None:
        spec = analyses.bends.model_dump(mode="json")
        for a, b in pairs(main, analyses.bends.pairs):
            tasks.append(
                Task(
                    f"bend/{a.name}/{b.name}",
                    "bend",
                    (f"canonical/{a.name}", f"canonical/{b.name}"),
                    {
                        "a": a.name,
                        "b": b.name,
                        "block": MAIN,
                        "data": data,
                        "spec": spec,
                        "training": config.training.model_dump(mode="json"),
                        "device": device,
                    },
                    _hash("bend", canonical_hash[a], canonical_hash[b], spec, data),
                    gpus=gpus,
                )
            )
    if config.binary is not None:
        binary = config.binary
        nets = networks(config, BINARY)
        add_block(BINARY, nets, binary.model, binary.optimizers, binary.training)
        spec = binary.model_dump(mode="json", exclude={"model", "optimizers", "seeds", "training"})
        for net in nets:
            tasks.append(
                Task(
                    f"energy/{net.name}",
                    "flip_energy",
                    (f"canonical/{net.name}",),
                    {
                        "network": net.name,
                        "block": BINARY,
                        "data": data,
                        "spec": spec,
                        "device": device,
                    },
                    _hash("flip_energy", canonical_hash[net], spec, data),
                    gpus=gpus,
                )
            )
        for a, b in pairs(nets, "all"):
            tasks.append(
                Task(
                    f"distance/{a.name}/{b.name}",
                    "distance",
                    (f"canonical/{a.name}", f"canonical/{b.name}"),
                    {"a": a.name, "b": b.name, "block": BINARY, "kinds": ["overlap"]},
                    _hash("distance", canonical_hash[a], canonical_hash[b], ["overlap"]),
                )
            )
        for a, b in pairs(nets, binary.pairs):
            tasks.append(
                Task(
                    f"profile/flip/{a.name}/{b.name}",
                    "flip_path",
                    (f"canonical/{a.name}", f"canonical/{b.name}"),
                    {
                        "a": a.name,
                        "b": b.name,
                        "block": BINARY,
                        "data": data,
                        "spec": spec,
                        "device": device,
                    },
                    _hash("flip_path", canonical_hash[a], canonical_hash[b], spec, data),
                    gpus=gpus,
                )
            )
        for a, b in pairs(nets, binary.chain_pairs):
            tasks.append(
                Task(
                    f"bend/{a.name}/{b.name}",
                    "flip_chain",
                    (f"canonical/{a.name}", f"canonical/{b.name}"),
                    {
                        "a": a.name,
                        "b": b.name,
                        "block": BINARY,
                        "data": data,
                        "spec": spec,
                        "optimizer": binary.optimizers[0].resolved(),
                        "training": binary.training.model_dump(mode="json"),
                        "device": device,
                    },
                    _hash(
                        "flip_chain",
                        canonical_hash[a],
                        canonical_hash[b],
                        spec,
                        data,
                        binary.training.model_dump(mode="json"),
                    ),
                    gpus=gpus,
                )
            )
    return tasks
