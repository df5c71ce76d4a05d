"""Symmetry layer, one pair: weight matching from several seeded starts (`align(...,
starts=k)`). The kept result is never less similar than the single start and strictly more
similar on pairs where the single start is stuck; on tiny networks it is compared with the
optimum over all permutations (brute force); planted permutations are still recovered
exactly; the same seed gives the same result. Float64, tiny, seeded."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from tests.symmetry_models import (
    CASES,
    assert_undoes_planted_permutations,
    max_state_difference,
    one_thread,
)
from toroid.errors import InvalidArgumentError
from toroid.models import mlp
from toroid.symmetry import align, canonicalize, random_symmetry, spec_for


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def pair(widths: list[int], seed: int, *, in_features: int = 6) -> tuple[nn.Module, nn.Module]:
    """Two independently initialized float64 MLPs without BatchNorm (ReLU)."""
    a = mlp(in_features, widths, 3, batchnorm=False, seed=2 * seed).double()
    b = mlp(in_features, widths, 3, batchnorm=False, seed=2 * seed + 1).double()
    return a, b


# ---------------------------------------------------------------- never below the single start


@pytest.mark.parametrize(("widths", "activation"), [([6, 6], "relu"), ([5, 5, 5], "tanh")])
def test_multistart_never_below_single_start(widths: list[int], activation: str) -> None:
    """On 25 random pairs (ReLU: permutations; tanh: permutations and sign flips), the total
    similarity with starts=4 and starts=8 is >= the single start's (exactly, no tolerance),
    and more starts are never worse (the first k starts are shared)."""
    improved = 0
    for seed in range(25):
        a = mlp(6, widths, 3, batchnorm=False, activation=activation, seed=2 * seed).double()
        b = mlp(6, widths, 3, batchnorm=False, activation=activation, seed=2 * seed + 1)
        b = b.double()
        spec = spec_for(a)
        single = align(b, a, spec=spec, starts=1, seed=seed)
        four = align(b, a, spec=spec, starts=4, seed=seed)
        eight = align(b, a, spec=spec, starts=8, seed=seed)
        assert single.start == 0
        assert single.total_before <= single.total_after
        assert single.total_after <= four.total_after <= eight.total_after, seed
        assert 0 <= four.start < 4 and 0 <= eight.start < 8
        improved += four.total_after > single.total_after
        if four.start == 0:
            # the single start won: its result is kept as it is
            for name, perm in single.permutations.items():
                assert torch.equal(four.permutations[name], perm)
    assert improved >= 1


def test_multistart_with_batchnorm_never_below_single_start() -> None:
    """The same on a BatchNorm MLP (absorbed cells, running statistics not matched on)."""
    case = CASES["mlp_bn"]
    spec = case.spec()
    for seed in range(5):
        a, b = case.model(seed=2 * seed), case.model(seed=2 * seed + 1)
        single = align(b, a, spec=spec, starts=1, seed=seed)
        multi = align(b, a, spec=spec, starts=4, seed=seed)
        assert multi.total_after >= single.total_after


def first_stuck_pair() -> tuple[int, float, float, int]:
    """Searched with fixed seeds: the first pair of 8-8 ReLU MLPs on which the single start
    ends strictly below the default 4 starts; (seed, single, multi, winning start). Found:
    seed 2, 0.42282 -> 0.43715, won by start 3 (a random start)."""
    for seed in range(40):
        a, b = pair([8, 8], seed)
        single = align(b, a, starts=1)
        multi = align(b, a)
        if multi.total_after > single.total_after + 1e-6:
            return seed, single.total_after, multi.total_after, multi.start
    raise AssertionError("no pair among 40 seeds on which the single start is stuck")


def test_multistart_strictly_higher_where_single_start_is_stuck() -> None:
    seed, single, multi, start = first_stuck_pair()
    assert multi > single + 1e-6
    assert start > 0
    # and the single start, run again with the same seed, ends at the same value
    a, b = pair([8, 8], seed)
    assert align(b, a, starts=1).total_after == single


# ---------------------------------------------------------------- the optimum by brute force


def brute_force_total(a: nn.Module, b: nn.Module, widths: list[int]) -> float:
    """The highest total similarity over every permutation of every hidden layer of B's
    canonical form: an obviously correct loop over (4! * 5!) candidates. The total is the
    cosine over every tensor a permutation touches (all weights and hidden biases; not the
    output bias), as `Alignment.total_after` defines it."""
    sa, sb = canonicalize(a).state_dict(), canonicalize(b).state_dict()
    layers = sorted({int(key.split(".")[0]) for key in sa})
    wa = [sa[f"{i}.weight"].numpy() for i in layers]
    wb = [sb[f"{i}.weight"].numpy() for i in layers]
    ba = [sa[f"{i}.bias"].numpy() for i in layers[:-1]]
    bb = [sb[f"{i}.bias"].numpy() for i in layers[:-1]]
    norm_a = sum(float((w**2).sum()) for w in wa + ba)
    norm_b = sum(float((w**2).sum()) for w in wb + bb)
    best = -np.inf
    for perms in itertools.product(*(list(itertools.permutations(range(w))) for w in widths)):
        dot = 0.0
        for layer in range(len(wa)):
            moved = wb[layer]
            if layer < len(widths):
                rows = list(perms[layer])
                moved = moved[rows]
                dot += float(ba[layer] @ bb[layer][rows])
            if layer > 0:
                moved = moved[:, list(perms[layer - 1])]
            dot += float((wa[layer] * moved).sum())
        best = max(best, dot)
    return best / float(np.sqrt(norm_a * norm_b))


def test_multistart_reaches_brute_force_optimum_in_most_seeds() -> None:
    """3-4-5-3 ReLU MLPs, 20 random pairs: no result exceeds the optimum (1e-12), the
    default 4 starts reach it (within 1e-12) in at least 19 of 20 pairs, and never fewer
    times than the single start (measured: single start 15 of 20, 4 starts 19, 8 starts 20)."""
    widths = [4, 5]
    reached = {1: 0, 4: 0}
    for seed in range(20):
        a, b = pair(widths, seed, in_features=3)
        optimum = brute_force_total(a, b, widths)
        for starts in reached:
            total = align(b, a, starts=starts, seed=seed).total_after
            assert total <= optimum + 1e-12
            reached[starts] += abs(total - optimum) <= 1e-12
    assert reached[4] >= 19, reached
    assert reached[4] >= reached[1], reached


# ---------------------------------------------------------------- planted permutations, determinism


@pytest.mark.parametrize("name", ["mlp_plain", "tanh_bn", "conv_flatten"])
def test_multistart_recovers_planted_transform(name: str) -> None:
    """A planted random group element (scales, signs, permutations) is undone exactly with
    starts=8 in 10 of 10 seeds: the single start already finds the exact match, whose
    similarity no later start can exceed, so start 0 is kept (ties keep the earliest)."""
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    target = canonicalize(model, spec=spec).state_dict()
    for seed in range(10):
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        alignment = align(moved, model, spec=spec, seed=seed, starts=8)
        assert max_state_difference(alignment.model.state_dict(), target) <= 1e-8, seed
        assert_undoes_planted_permutations(
            alignment.permutations,
            {g.name: transform.permutations[g.name] for g in spec.groups},
            seed,
        )
        assert alignment.total_after == pytest.approx(1.0, abs=1e-10)
        assert alignment.start == 0


def test_multistart_is_deterministic_given_the_seed() -> None:
    a, b = pair([8, 8], 3)
    spec = spec_for(a)
    runs = [align(b, a, spec=spec, starts=6, seed=11) for _ in range(2)]
    assert runs[0].total_after == runs[1].total_after
    assert runs[0].start == runs[1].start
    assert runs[0].iterations == runs[1].iterations
    for name, perm in runs[0].permutations.items():
        assert torch.equal(runs[1].permutations[name], perm)
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(runs[1].model.state_dict()[key], value)


@pytest.mark.parametrize("starts", [0, -2, 1.5, True, "4"])
def test_invalid_starts_raises(starts: object) -> None:
    a, b = pair([3], 0)
    with pytest.raises(InvalidArgumentError, match="starts"):
        align(b, a, starts=starts)  # type: ignore[arg-type]
