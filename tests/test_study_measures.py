"""The study's flatness measures side by side (analyses.measures): one task per network and
one per reparametrized copy, reading the trained network; which measures a
function-preserving reparametrization leaves unchanged."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest

from tests.test_study_provenance import config_with
from toroid.study.config import MEASURES, validate_config
from toroid.study.graph import build_graph
from toroid.study.rows import MeasureRow
from toroid.study.run import run_study
from toroid.study.store import Store
from toroid.study.tasks import MeasureParams, train_key

MEASURED = config_with(
    binary=None,
    seeds=[0],
    analyses={
        "local_energy": None,
        "distances": None,
        "paths": None,
        "bends": None,
        "measures": {
            "sigmas": [0.1, 0.3],
            "samples": 2,
            "bn_samples": 64,
            "train_samples": 64,
            "probes": 2,
            "iters": 3,
            "sam_steps": 2,
            "reparametrize": {"scale_range": [0.1, 10.0], "seed": 3},
        },
    },
)


def test_presets_measure_nothing_unless_asked() -> None:
    graph = build_graph(validate_config(config_with()))
    assert not any(isinstance(t.params, MeasureParams) for t in graph)


def test_a_measure_task_per_network_and_copy_reading_the_trained_network() -> None:
    tasks = [t for t in build_graph(validate_config(MEASURED)) if t.kind == "measure"]
    assert sorted(t.key for t in tasks) == [
        "measure-reparametrized/main/adam/s0",
        "measure-reparametrized/main/sgd/s0",
        "measure/main/adam/s0",
        "measure/main/sgd/s0",
    ]
    for task in tasks:
        assert isinstance(task.params, MeasureParams)
        assert task.deps == (train_key(task.params.network),)
        reparametrized = task.key.startswith("measure-reparametrized/")
        assert (task.params.reparametrize == (0.1, 10.0, 3, False)) is reparametrized


def test_bad_measure_settings_are_refused() -> None:
    from toroid.study.config import StudyConfigError

    for bad in (
        {"kinds": ["sharpness"]},
        {"kinds": []},
        {"reparametrize": {"scale_range": [2, 1]}},
    ):
        raw = config_with(analyses={"measures": bad})
        with pytest.raises(StudyConfigError):
            validate_config(raw)


@pytest.fixture(scope="module")
def measured(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str, bool, float | None], MeasureRow]:
    directory: Path = tmp_path_factory.mktemp("measures") / "study"
    result = run_study(validate_config(MEASURED), directory, progress=False, report=False)
    assert result.complete, result.failures
    with Store(directory, readonly=True) as store:
        rows = [s.row for s in store.rows(MeasureRow)]
    out = {}
    for row in rows:
        out[(row.network, row.measure, row.reparametrized, row.level)] = row
    return out


def test_every_measure_of_every_network_before_and_after(measured: dict) -> None:
    seen: dict[tuple[str, bool], set[str]] = defaultdict(set)
    for network, measure, reparametrized, _ in measured:
        seen[(network, reparametrized)].add(measure)
    assert len(seen) == 4 and all(kinds == set(MEASURES) for kinds in seen.values())
    for key, row in measured.items():
        assert math.isfinite(row.value), key
    levels = {k[3] for k in measured if k[1] == "local_energy"}
    assert levels == {0.1, 0.3}


def test_what_a_reparametrization_changes(measured: dict) -> None:
    for network in ("main/sgd/s0", "main/adam/s0"):

        def pair(
            measure: str, level: float | None = None, network: str = network
        ) -> tuple[float, float]:
            return (
                measured[(network, measure, False, level)].value,
                measured[(network, measure, True, level)].value,
            )

        # In canonical coordinates the reparametrization is undone: the same numbers up to
        # rounding (the copy computes the same function, logits and loss included).
        for level in (0.1, 0.3):
            before, after = pair("local_energy", level)
            assert after == pytest.approx(before, abs=1e-9)
        for measure in ("hessian_trace", "hessian_top"):
            before, after = pair(measure)
            assert after == pytest.approx(before, rel=1e-3), measure
        # Raw coordinates and norms see the rescaling.
        before, after = pair("log_norm")
        assert abs(after - before) > 0.1
        before, after = pair("raw_hessian_trace")
        assert after != pytest.approx(before, rel=1e-3)
