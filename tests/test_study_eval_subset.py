"""Evaluation subsets (data.eval_train_size, data.eval_test_size): the analyses evaluate on
fixed, seeded subsets of the splits the networks trained on, training on the whole splits;
changing the sizes re-runs exactly the analyses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_study_provenance import config_with, hashes
from toroid.data import load
from toroid.data.subsets import balanced_indices
from toroid.models import build
from toroid.study.config import StudyConfigError, validate_config
from toroid.study.graph import build_graph
from toroid.study.rows import EnergyRow, NetworkRow, ProfileRow
from toroid.study.run import run_study
from toroid.study.store import Store, Weights
from toroid.study.tasks import DataParams, TrainParams, canonical_key, data_for, train_key
from toroid.train import derive_seed

SIZES = {"data__eval_train_size": 40, "data__eval_test_size": 24}
# Tasks that read no data: their hashes never depend on the evaluation sizes.
NO_DATA = ("train", "canonical", "align", "distance")


def test_eval_sizes_rehash_exactly_the_analyses() -> None:
    measures = {"kinds": ["log_norm"], "sigmas": [0.1], "reparametrize": None}
    raw = config_with(analyses__measures=measures)
    before, after = hashes(raw), hashes(config_with(**SIZES, analyses__measures=measures))
    assert before.keys() == after.keys()
    kinds = {t.key: t.kind for t in build_graph(validate_config(raw))}
    assert set(kinds.values()) >= {"energy", "profile", "bend", "flip_energy", "flip_path",
                                   "flip_chain", "measure"}  # fmt: skip
    for key, kind in kinds.items():
        assert (before[key] == after[key]) is (kind in NO_DATA), key
    # Another size re-runs the analyses again, still not training.
    other = hashes(config_with(data__eval_train_size=48, analyses__measures=measures))
    assert all((other[k] == before[k]) is (kinds[k] in NO_DATA) for k in kinds)


def test_the_analyses_carry_the_sizes_and_training_does_not() -> None:
    for task in build_graph(validate_config(config_with(**SIZES))):
        data = getattr(task.params, "data", None)
        if isinstance(task.params, TrainParams):
            assert data is not None and data.eval_train_size is None
            assert data.eval_test_size is None
        elif data is not None:
            assert (data.eval_train_size, data.eval_test_size) == (40, 24)


def test_without_the_keys_the_hash_covers_no_new_field() -> None:
    # A hand-written hash of the old DataParams fields equals the new one's: configs
    # without evaluation sizes keep their task hashes (and finished results).
    from toroid.study.tasks import hash_view

    plain = DataParams("synthetic", 128, 64, 0, None)
    assert hash_view(plain) == {
        "name": "synthetic",
        "train_size": 128,
        "test_size": 64,
        "seed": 0,
        "root": None,
    }
    assert hash_view(DataParams("synthetic", 128, 64, 0, None, 40))["eval_train_size"] == 40


def _rows_of(x: torch.Tensor, among: torch.Tensor) -> list[int]:
    """For each row of `x`, the index of the equal row of `among` (a slow scan)."""
    found = []
    for row in x:
        hits = [i for i in range(len(among)) if torch.equal(among[i], row)]
        assert len(hits) == 1
        found.append(hits[0])
    return found


def test_the_subset_lies_inside_the_training_split_and_is_balanced() -> None:
    spec = DataParams("synthetic", 128, 64, 3, None, 40, 24)
    full, subset = data_for(spec.full), data_for(spec)
    assert (len(subset.train), len(subset.test)) == (40, 24)
    train_rows = _rows_of(subset.train.x, full.train.x)
    assert len(set(train_rows)) == 40
    assert torch.equal(subset.train.y, full.train.y[train_rows])
    test_rows = _rows_of(subset.test.x, full.test.x)
    assert torch.equal(subset.test.y, full.test.y[test_rows])
    assert torch.bincount(subset.train.y).tolist() == [10, 10, 10, 10]
    # Normalized with the whole training split's statistics (the same tensors as loaded).
    assert subset.meta["normalization"] == full.meta["normalization"]
    # Deterministic, and seeded from data.seed.
    again = data_for.__wrapped__(spec)
    assert torch.equal(again.train.x, subset.train.x)
    other = data_for(DataParams("synthetic", 128, 64, 3, None, 40, None))
    assert torch.equal(other.train.x, subset.train.x) and len(other.test) == 64


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data__eval_train_size": 129}, "eval_train_size 129 is larger than the training split"),
        ({"data__eval_test_size": 65}, "eval_test_size 65 is larger than the test split"),
        ({"data__eval_train_size": 0}, "greater than 0"),
        (
            {"data": {"name": "fashion-mnist", "eval_train_size": 70000}},
            "eval_train_size 70000 is larger than the training split \\(60000 examples\\)",
        ),
    ],
)
def test_bad_sizes_are_refused_in_one_line(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyConfigError, match=message) as info:
        validate_config(config_with(**changes))
    assert "\n" not in str(info.value)


RUN = config_with(
    **SIZES,
    binary=None,
    optimizers=["sgd"],
    analyses={
        "local_energy": {"sigmas": [0.0, 0.2], "samples": 2, "bn_samples": 64},
        "distances": None,
        "paths": {"kinds": ["linear"], "points": 3, "pairs": "all", "bn_samples": 64},
        "bends": None,
    },
)


def _errors_by_hand(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    wrong = 0
    with torch.no_grad():
        for i in range(len(y)):  # one example at a time
            wrong += int(model(x[i : i + 1]).argmax(dim=1).item() != int(y[i]))
    return wrong / len(y)


def test_an_analysis_evaluates_on_the_subset(tmp_path: Path) -> None:
    directory = tmp_path / "study"
    result = run_study(validate_config(RUN), directory, progress=False, report=False)
    assert result.complete, result.failures
    with Store(directory, readonly=True) as store:
        nets = {s.row.network: s.row for s in store.rows(NetworkRow)}
        energy = [s.row for s in store.rows(EnergyRow)]
        profiles = [s.row for s in store.rows(ProfileRow)]
    # The subsets drawn by hand from the data as loaded.
    full = load("synthetic", train_size=128, test_size=64, seed=0)
    pick = {
        split: balanced_indices(
            data.y,
            size,
            num_classes=4,
            generator=torch.Generator().manual_seed(derive_seed(0, f"eval/{split}")),
        )
        for split, data, size in (("train", full.train, 40), ("test", full.test, 24))
    }
    weights = Weights(directory)

    def model(key: str) -> torch.nn.Module:
        state, meta = weights.load(key)
        net = build(meta["model"])
        net.load_state_dict(state)
        return net.eval()

    differs = []
    for name, row in nets.items():
        trained = model(train_key(name))
        # Training's recorded errors are on the whole splits.
        assert row.train_error == pytest.approx(
            _errors_by_hand(trained, full.train.x, full.train.y)
        )
        assert row.test_error == pytest.approx(_errors_by_hand(trained, full.test.x, full.test.y))
        canonical = model(canonical_key(name))
        for split, data in (("train", full.train), ("test", full.test)):
            by_hand = _errors_by_hand(canonical, data.x[pick[split]], data.y[pick[split]])
            bases = {r.base for r in energy if r.network == name and r.split == split}
            assert bases and all(b == pytest.approx(by_hand) for b in bases)
            differs.append(by_hand != _errors_by_hand(canonical, data.x, data.y))
    assert any(differs)  # the subsets tell apart from the whole splits
    (profile,) = profiles
    start = model(canonical_key(profile.a))
    assert profile.train_error[0] == pytest.approx(
        _errors_by_hand(start, full.train.x[pick["train"]], full.train.y[pick["train"]])
    )
    assert profile.test_error is not None
    assert profile.test_error[0] == pytest.approx(
        _errors_by_hand(start, full.test.x[pick["test"]], full.test.y[pick["test"]])
    )
