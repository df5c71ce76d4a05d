"""An architecture axis in the grid (grid.models): the main networks of several
architectures in one study, one block per architecture for the task graph (pairs,
alignments and populations never mix architectures), pooled into one main block for the
report, with the model as a hyperparameter axis of the granulated tau."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_study_provenance import config_with, hashes
from toroid.errors import InvalidArgumentError
from toroid.study.config import StudyConfigError, validate_config
from toroid.study.evidence import gather, hyperparameter_axes, measure_summaries
from toroid.study.graph import Task, blocks, build_graph, main_block, main_blocks
from toroid.study.populations import jobs
from toroid.study.tasks import TrainParams, train_networks

SMALL = {"name": "mlp", "in_features": 16, "widths": [8], "num_classes": 4}
DEEP = {"name": "mlp", "in_features": 16, "widths": [6, 6], "num_classes": 4}
MODELS = config_with(
    binary=None,
    seeds=[0, 1],
    training__epochs=2,
    optimizers=["sgd", {"name": "adam", "lr": 0.01}],
    grid={"batch_sizes": [32], "models": {"small": SMALL, "deep": DEEP}},
    analyses={
        "local_energy": {"sigmas": [0.0, 0.2], "samples": 2, "bn_samples": 64},
        "distances": {"kinds": ["geodesic"]},
        "paths": {"kinds": ["linear"], "points": 3, "pairs": "all", "bn_samples": 64},
        "bends": {"pairs": "first-seeds", "epochs": 1, "points": 3},
        "measures": {"kinds": ["log_norm"], "sigmas": [0.1], "reparametrize": None},
    },
)


def _model_of(config: Any) -> dict[str, str]:
    """Network name -> its model label."""
    return {n.name: b.architecture for b in main_blocks(config) for n in b.networks}


def test_one_block_per_model_with_the_model_in_every_label() -> None:
    config = validate_config(MODELS)
    found = main_blocks(config)
    assert [b.architecture for b in found] == ["small", "deep"]
    assert [b.name for b in found] == ["main", "main"]
    assert [dict(b.model) for b in found] == [SMALL, DEEP]
    assert [o.key for o in found[0].optimizers] == ["sgd-small-b32", "adam-small-b32"]
    assert [o.key for o in found[1].optimizers] == ["sgd-deep-b32", "adam-deep-b32"]
    assert found[1].hyperparameters["adam-deep-b32"] == {
        "optimizer": "adam",
        "batch_size": 32,
        "lr": 0.01,
        "model": "deep",
    }
    trains = [t.params for t in build_graph(config) if isinstance(t.params, TrainParams)]
    assert {p.network: dict(p.model) for p in trains} == {
        name: SMALL if model == "small" else DEEP for name, model in _model_of(config).items()
    }
    with pytest.raises(StudyConfigError, match="main_blocks"):
        main_block(config)


def test_models_alone_make_a_grid() -> None:
    raw = config_with(binary=None, grid={"models": {"s": SMALL}})
    (block,) = main_blocks(validate_config(raw))
    assert [o.key for o in block.optimizers] == ["sgd-s", "adam-s"]


def test_no_pair_or_alignment_crosses_architectures() -> None:
    config = validate_config(MODELS)
    model = _model_of(config)
    pairs = [t for t in build_graph(config) if hasattr(t.params, "a")]
    assert {t.kind for t in pairs} == {"distance", "profile", "bend"}
    for task in pairs:
        ends: Any = task.params
        assert model[ends.a] == model[ends.b], task.key
    # Every pair within one architecture is there (pairs: all).
    assert sum(t.kind == "distance" for t in pairs) == 2 * 6
    for task in build_graph(config):
        if task.kind == "align":
            align: Any = task.params
            assert model[align.network] == model[align.reference]


def _trains(config: Any) -> tuple[list[Task], dict[str, Task]]:
    graph = build_graph(config)
    ready = [t for t in graph if t.kind == "train"]
    return ready, {t.key: t for t in graph}


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_populations_never_mix_architectures(engine: str) -> None:
    raw = dict(MODELS, training=dict(MODELS["training"], engine=engine))
    config = validate_config(raw)
    model = _model_of(config)
    ready, by_key = _trains(config)
    params = {t.key: _train(t) for t in ready}
    for slots in (1, 2):
        grouped = jobs(ready, slots=slots, population_sizes={}, by_key=by_key)
        assert sorted(t.key for job in grouped for t in job) == sorted(params)
        for job in grouped:
            assert len({model[params[t.key].network] for t in job}) == 1
    if engine == "vmap":
        for p in params.values():
            assert len(p.mates) == 4
            assert {model[m.network] for m in p.mates} == {model[p.network]}
    # And training refuses a population of two architectures outright.
    small, deep = (
        next(t for t in ready if model[params[t.key].network] == m) for m in ("small", "deep")
    )
    with pytest.raises(InvalidArgumentError, match="share block, model"):
        train_networks(
            [(params[t.key], t.key, t.hash) for t in (small, deep)],
            "/nonexistent",
        )


def _train(task: Task) -> TrainParams:
    assert isinstance(task.params, TrainParams)
    return task.params


def test_without_models_no_hash_changes() -> None:
    plain = config_with(binary=None)
    assert hashes(plain) == hashes(dict(plain, grid=None))
    sized = config_with(grid={"batch_sizes": [32, 64]})
    assert hashes(sized) == hashes(config_with(grid={"batch_sizes": [32, 64], "models": None}))
    block = main_block(validate_config(sized))
    assert block.architecture is None
    assert all("model" not in h for h in block.hyperparameters.values())
    # One grid model: as many tasks, under labels that name it.
    one = config_with(grid={"batch_sizes": [32, 64], "models": {"m": BASE_MODEL}})
    assert len(hashes(one)) == len(hashes(sized))


BASE_MODEL = config_with()["model"]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"models": {}}, "at least one model"),
        ({"models": {"-x": SMALL}}, "model label '-x'"),
        ({"models": {"a" * 17: SMALL}}, "1-16 letters"),
        ({"models": {"bad": {"name": "nope"}}}, "grid.models.bad"),
        ({"models": {"wide": dict(SMALL, widths=[10**6] * 4)}}, "grid.models.wide"),
    ],
)
def test_bad_models_are_refused_in_one_line(grid: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyConfigError, match=message) as info:
        validate_config(config_with(binary=None, grid=grid))
    assert "\n" not in str(info.value)


def test_a_label_too_long_with_its_model_is_refused() -> None:
    raw = config_with(
        binary=None,
        optimizers=[{"name": "sgd", "label": "s" * 30}],
        grid={"models": {"a" * 12: SMALL}},
    )
    with pytest.raises(
        StudyConfigError, match="shorten the optimizer's label \\(or the model's\\)"
    ):
        validate_config(raw)


def test_a_two_model_study_runs_and_pools_its_evidence(tmp_path: Path) -> None:
    from toroid.study.run import run_study

    config = validate_config(MODELS)
    directory = tmp_path / "study"
    result = run_study(config, directory, progress=False, report=True)
    assert result.complete, result.failures
    evidence = gather(directory, config)
    main = evidence.main
    names = [n.name for b in main_blocks(config) for n in b.networks]
    assert list(main.names()) == names and len(names) == 8
    assert main.optimizers == tuple(o.key for b in main_blocks(config) for o in b.optimizers)
    assert set(main.flatness) == set(names)
    model = _model_of(config)
    assert {main.hyperparameters[n]["model"] for n in names} == {0, 1}
    assert len({(model[n], main.hyperparameters[n]["model"]) for n in names}) == 2
    assert "model" in hyperparameter_axes(main.hyperparameters)
    assert len(main.distances) == 12 and len(main.profiles_on("linear")) == 12
    for record in (*main.distances, *main.profiles):
        assert model[record.a] == model[record.b]
    (summary,) = measure_summaries(main, reps=50, seed=0)
    assert "model" in summary.axes and summary.n == 8
    assert [b.name for b in blocks(config)] == ["main", "main"]
    html = (directory / "report.html").read_text()
    assert "models small (mlp), deep (mlp)" in html
    assert (directory / "summary.md").is_file()
