"""Which ready tasks run together as one job. With the vmap engine a network's population
is fixed by the study's design (`TrainParams.mates`, part of what its task reads): the job
is that whole population, networks already finished included, so that every network is
computed exactly as a fresh run computes it. With the loop engine a network's numbers do
not depend on its population, so the ready networks that can train together are grouped
here, about one population per executor slot. Every other task runs alone."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from toroid.study.executors import Job
from toroid.study.graph import Task
from toroid.study.tasks import TrainParams, train_key


def jobs(
    ready: Sequence[Task],
    *,
    slots: int,
    population_sizes: Mapping[str, int | None],
    by_key: Mapping[str, Task],
) -> list[Job]:
    """`ready` as jobs, in their order (a population where its first ready network was)."""
    fixed: dict[tuple[str, ...], Job] = {}
    loose: dict[tuple[object, ...], list[Task]] = {}
    order: list[tuple[str, object]] = []
    for task in ready:
        params = task.params
        if not isinstance(params, TrainParams):
            order.append(("task", task))
        elif params.mates:
            names = tuple(m.network for m in params.mates)
            if names not in fixed:
                fixed[names] = tuple(by_key[train_key(name)] for name in names)
                order.append(("fixed", names))
        else:
            key = params.population()
            if key not in loose:
                loose[key] = []
                order.append(("loose", key))
            loose[key].append(task)
    out: list[Job] = []
    for kind, entry in order:
        if kind == "task":
            assert isinstance(entry, Task)
            out.append((entry,))
        elif kind == "fixed":
            assert isinstance(entry, tuple)
            out.append(fixed[entry])
        else:
            members = loose[entry]  # type: ignore[index]
            size = math.ceil(len(members) / max(1, slots))
            cap = population_sizes.get(members[0].block)
            if cap is not None:
                size = min(size, cap)
            out.extend(tuple(members[i : i + size]) for i in range(0, len(members), size))
    return out
