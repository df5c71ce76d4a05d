"""The main block's hyperparameter grid: every optimizer entry at every batch size and
learning-rate factor, each grid point an optimizer label of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_study_provenance import config_with, hashes
from toroid.study.config import StudyConfigError, validate_config
from toroid.study.graph import build_graph, main_block
from toroid.study.rows import NetworkRow
from toroid.study.run import run_study
from toroid.study.store import Store
from toroid.study.tasks import TrainParams

GRID = config_with(
    binary=None,
    seeds=[0],
    optimizers=["sgd", {"name": "adam", "lr": 0.01}],
    grid={"batch_sizes": [32, 64], "lr_factors": [0.5, 2]},
    analyses={"local_energy": None, "distances": None, "paths": None, "bends": None},
)


def test_every_entry_at_every_grid_point() -> None:
    block = main_block(validate_config(GRID))
    labels = [o.key for o in block.optimizers]
    assert labels == [
        f"{name}-b{size}-lr{factor}"
        for name in ("sgd", "adam")
        for size in (32, 64)
        for factor in ("0.5", "2")
    ]
    assert block.hyperparameters["adam-b64-lr0.5"] == {
        "optimizer": "adam",
        "batch_size": 64,
        "lr": pytest.approx(0.005),
    }
    trains = {
        t.params.network: t.params
        for t in build_graph(validate_config(GRID))
        if isinstance(t.params, TrainParams)
    }
    assert len(trains) == 8
    sgd = trains["main/sgd-b32-lr2/s0"]
    assert sgd.batch_size == 32 and sgd.optimizer["lr"] == pytest.approx(0.1)
    assert sgd.optimizer["momentum"] == 0.9  # the rest of the preset stays


def test_without_a_grid_nothing_changes() -> None:
    plain = config_with(binary=None)
    block = main_block(validate_config(plain))
    assert [o.key for o in block.optimizers] == ["sgd", "adam"]
    assert block.hyperparameters["sgd"] == {"optimizer": "sgd", "batch_size": 128, "lr": 0.05}
    assert hashes(plain) == hashes(dict(plain, grid=None))


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({}, "needs batch_sizes, lr_factors or both"),
        ({"batch_sizes": [32, 32]}, "distinct"),
        ({"lr_factors": [0.0]}, "positive"),
        ({"lr_factors": []}, "at least one"),
    ],
)
def test_bad_grids_are_refused_in_one_line(grid: dict, message: str) -> None:
    with pytest.raises(StudyConfigError, match=message) as info:
        validate_config(config_with(grid=grid))
    assert "\n" not in str(info.value)


def test_a_grid_label_too_long_is_refused() -> None:
    raw = config_with(optimizers=[{"name": "sgd", "label": "a" * 36}], grid={"batch_sizes": [1024]})
    with pytest.raises(StudyConfigError, match="grid label"):
        validate_config(raw)


def test_a_grid_study_trains_every_point(tmp_path: Path) -> None:
    result = run_study(validate_config(GRID), tmp_path / "study", progress=False, report=False)
    assert result.complete, result.failures
    with Store(tmp_path / "study", readonly=True) as store:
        rows = [s.row for s in store.rows(NetworkRow)]
    assert sorted(r.optimizer for r in rows) == sorted(
        o.key for o in main_block(validate_config(GRID)).optimizers
    )
    by_label = {r.optimizer: r for r in rows}
    # Half the batch size, twice the gradient evaluations per epoch (up to the last batch).
    small, large = by_label["sgd-b32-lr0.5"], by_label["sgd-b64-lr0.5"]
    assert small.grad_evals / small.epochs == 2 * large.grad_evals / large.epochs


def test_an_entry_can_set_its_own_batch_size() -> None:
    raw = config_with(binary=None, optimizers=["sgd", {"name": "adam", "batch_size": 64}])
    trains = {
        t.params.optimizer_label: t.params.batch_size
        for t in build_graph(validate_config(raw))
        if isinstance(t.params, TrainParams)
    }
    assert trains == {"sgd": None, "adam": 64}
    assert main_block(validate_config(raw)).hyperparameters["adam"]["batch_size"] == 64
