"""The study trains its networks as populations: which networks train together, that a
network's population is part of its provenance with the vmap engine (and not with the loop
engine), and that re-training one network of a population reproduces a fresh run exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_study_provenance import config_with, copy_of, hashes
from toroid.storage import read_bundle
from toroid.study.config import validate_config
from toroid.study.graph import Task, build_graph
from toroid.study.populations import jobs
from toroid.study.rows import NetworkRow
from toroid.study.run import run_study
from toroid.study.store import Store
from toroid.study.tasks import TrainParams, train_key

SMALL = config_with(seeds=[0, 1], binary=None, training={"epochs": 3, "engine": "vmap"})


def _train_tasks(raw: dict[str, Any]) -> list[Task]:
    return [t for t in build_graph(validate_config(raw)) if isinstance(t.params, TrainParams)]


def test_vmap_populations_are_part_of_each_networks_params() -> None:
    tasks = _train_tasks(SMALL)
    assert {t.params.engine for t in tasks} == {"vmap"}
    names = tuple(t.params.network for t in tasks)
    for task in tasks:
        assert tuple(m.network for m in task.params.mates) == names
        assert all(m.mates == () for m in task.params.mates)
    # One network's settings change every hash of its population under vmap...
    edited = dict(SMALL, optimizers=["sgd", {"name": "adam", "lr": 0.02}])
    before, after = hashes(SMALL), hashes(edited)
    changed = {k for k in before if k.startswith("train/") and before[k] != after[k]}
    assert changed == {train_key(n) for n in names}
    # ... and only its own under loop, where a network's numbers do not depend on its mates.
    loop = config_with(seeds=[0, 1], binary=None, training={"epochs": 3, "engine": "loop"})
    loop_edited = dict(loop, optimizers=["sgd", {"name": "adam", "lr": 0.02}])
    before, after = hashes(loop), hashes(loop_edited)
    changed = {k for k in before if k.startswith("train/") and before[k] != after[k]}
    assert changed == {"train/main/adam/s0", "train/main/adam/s1"}
    assert all(t.params.mates == () for t in _train_tasks(loop))


def test_population_size_splits_a_block_in_config_order() -> None:
    raw = config_with(
        seeds=[0, 1, 2], binary=None, training={"epochs": 3, "engine": "vmap", "population_size": 4}
    )
    tasks = _train_tasks(raw)
    populations = [tuple(m.network for m in t.params.mates) for t in tasks]
    names = [t.params.network for t in tasks]
    assert populations[0] == tuple(names[:4]) and populations[-1] == tuple(names[4:])


def test_jobs_hold_whole_vmap_populations_and_group_loop_networks_per_slot() -> None:
    tasks = _train_tasks(
        config_with(seeds=[0, 1, 2], binary=None, training={"epochs": 3, "engine": "vmap"})
    )
    by_key = {t.key: t for t in tasks}
    # Only one network is left to train: its whole population runs (the others unrecorded).
    (job,) = jobs([tasks[3]], slots=1, population_sizes={}, by_key=by_key)
    assert [t.key for t in job] == [t.key for t in tasks]
    loop = _train_tasks(
        config_with(seeds=[0, 1, 2], binary=None, training={"epochs": 3, "engine": "loop"})
    )
    by_key = {t.key: t for t in loop}
    assert [len(j) for j in jobs(loop, slots=1, population_sizes={}, by_key=by_key)] == [6]
    assert [len(j) for j in jobs(loop, slots=4, population_sizes={}, by_key=by_key)] == [2, 2, 2]
    capped = jobs(loop, slots=1, population_sizes={"main": 4}, by_key=by_key)
    assert [len(j) for j in capped] == [4, 2]
    assert [t.key for j in capped for t in j] == [t.key for t in loop]


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("populations") / "study"
    run_study(validate_config(SMALL), directory, progress=False, report=False)
    return directory


def _network(directory: Path, key: str) -> tuple[NetworkRow, dict[str, torch.Tensor]]:
    with Store(directory, readonly=True) as store:
        (stored,) = store.rows(NetworkRow, task=key)
    tensors, _ = read_bundle(directory / "weights", stored.row.weights)
    return stored.row, tensors


def test_retraining_one_network_of_a_population_equals_the_fresh_run(
    small_study: Path, tmp_path: Path
) -> None:
    key = "train/main/adam/s1"
    row, weights = _network(small_study, key)
    directory = copy_of(small_study, tmp_path / "study")
    with Store(directory) as store:
        store.drop([key])
    result = run_study(validate_config(SMALL), directory, progress=False, report=False)
    assert key in result.ran
    assert not any(k.startswith("train/") and k != key for k in result.ran)
    again, again_weights = _network(directory, key)
    # Trained alone, the network would differ in its last bits (see docs/study.md).
    assert dataclasses.replace(again, wall_time=row.wall_time) == row
    assert all(torch.equal(again_weights[n], weights[n]) for n in weights)


def test_the_engine_defaults_to_loop_on_a_cpu_and_vmap_on_a_gpu() -> None:
    assert {t.params.engine for t in _train_tasks(config_with(binary=None))} == {"loop"}
    cuda = config_with(binary=None, device="cuda")
    assert {t.params.engine for t in _train_tasks(cuda)} == {"vmap"}


def test_a_job_records_only_the_networks_asked_for(tmp_path: Path) -> None:
    from toroid.study.tasks import train_networks

    tasks = _train_tasks(SMALL)
    members = [(t.params, t.key, t.hash) for t in tasks]
    chosen = tasks[1].key
    outcomes = train_networks(members, tmp_path, record=frozenset({chosen}))
    for task, (rows, _, error) in zip(tasks, outcomes, strict=True):
        assert error is None
        assert (rows is not None) is (task.key == chosen)
    saved = sorted(p.name for p in (tmp_path / "weights").glob("*.json"))
    assert len(saved) == 1 and saved[0].startswith(chosen.replace("/", "_"))


def test_the_loop_engine_keeps_one_resumable_state_per_network(tmp_path: Path) -> None:
    from toroid.study.tasks import STATE_DIR, state_dir_name, train_networks

    tasks = _train_tasks(config_with(seeds=[0, 1], binary=None))
    assert {t.params.engine for t in tasks} == {"loop"}
    train_networks([(t.params, t.key, t.hash) for t in tasks], tmp_path)
    folders = sorted(p.name for p in (tmp_path / STATE_DIR).iterdir())
    assert folders == sorted(state_dir_name(t.key, t.hash) for t in tasks)


def test_a_job_that_fails_as_a_whole_is_each_tasks_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toroid.study import executors, tasks

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tasks.Weights, "save", full)
    job = tuple(_train_tasks(SMALL))
    runner = executors.InProcess(tmp_path)
    runner.submit(job, frozenset(t.key for t in job))
    outcomes = runner.wait()
    assert [t.key for t, *_ in outcomes] == [t.key for t in job]
    assert all(isinstance(error, OSError) and rows is None for _, rows, _, error in outcomes)
