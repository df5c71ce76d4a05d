"""Affine families of parameter sets and input-layer reuse in `evaluate_sets`: the fast
path against the same sets materialized and stacked (the checked slow path), in float64."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.evaluate import (
    AffineFamily,
    EvalPlan,
    evaluate_sets,
    multiplicative_family,
)
from toroid.evaluate.input_layer import input_layer
from toroid.manifold.perturb import draw_noise, perturbed_state
from toroid.models import build


class InputBatchNorm(nn.Module):
    """A BatchNorm before the first Linear: the input layer's input depends on buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(6)
        self.body = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU())
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(self.norm(x)))
        return out


class TiedInput(nn.Module):
    """The input layer is called twice: its output is not one function of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.first(torch.relu(self.first(x)))))
        return out


class BiasedConv1d(nn.Module):
    """Conv1d with a bias as the input layer, no BatchNorm anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.conv(x)).flatten(1))
        return out


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str | None]] = {
    "mlp-bn": (
        lambda: build(
            {"name": "mlp", "in_features": 6, "widths": [7, 5], "num_classes": 3}, seed=0
        ),
        (6,),
        "1",
    ),
    "mlp-no-bn": (
        lambda: build(
            {"name": "mlp", "in_features": 6, "widths": [7], "num_classes": 3, "batchnorm": False},
            seed=0,
        ),
        (6,),
        "1",
    ),
    "lenet5": (lambda: build({"name": "lenet5", "num_classes": 3}, seed=0), (1, 28, 28), "0"),
    "conv1d-bias": (BiasedConv1d, (1, 6), "conv"),
    "input-batchnorm": (InputBatchNorm, (6,), None),
    "tied-input": (TiedInput, (6,), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_input_layer_is_found_only_where_reuse_is_exact(name: str) -> None:
    make, _, expected = CASES[name]
    assert input_layer(make()) == expected


def _family(model: nn.Module, samples: int, sigmas: list[float]) -> tuple[AffineFamily, list]:
    state = model.state_dict()
    names = [n for n, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(3)
    noise = [draw_noise(state, names, generator) for _ in range(samples)]
    sets: list[tuple[float, int] | None] = [None] + [
        (sigma, s) for s in range(samples) for sigma in sigmas
    ]
    return multiplicative_family({n: state[n] for n in names}, noise, sets), [
        None if entry is None else (entry[0], noise[entry[1]]) for entry in sets
    ]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("bn", ["recompute", "keep"])
def test_family_equals_the_stacked_sets(name: str, bn: str, input_layer_reuses: list[int]) -> None:
    make, shape, layer = CASES[name]
    model = make().double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(60, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=gen)
    family, sets = _family(model, samples=3, sigmas=[0.1, 0.4])
    state = model.state_dict()
    # The slow path: every set materialized with `perturbed_state`, then stacked.
    stacked = {
        n: torch.stack(
            [
                state[n]
                if entry is None
                else perturbed_state(state, entry[0], entry[1], kind="multiplicative", spec=None)[n]
                for entry in sets
            ]
        )
        for n in family.directions
    }
    plan = EvalPlan(
        bn=bn,  # type: ignore[arg-type]
        bn_samples=40,
        bn_batch_size=16,
        batch_size=16,
        seed=1,
        max_sets=3,  # chunks that cut through the sets of one noise draw
    )
    fast = evaluate_sets(model, family, {"data": (x, y)}, bn_data=(x, y), plan=plan)["data"]
    slow = evaluate_sets(model, stacked, {"data": (x, y)}, bn_data=(x, y), plan=plan)["data"]
    assert len(fast) == len(sets) == 7
    assert torch.equal(fast.error, slow.error)
    torch.testing.assert_close(fast.loss, slow.loss, rtol=1e-10, atol=1e-12)
    assert fast.loss.unique().numel() > 1  # the sets really differ
    assert bool(input_layer_reuses) == (layer is not None)  # the fast path ran where it applies


def test_family_rows_keep_only_the_directions_they_use() -> None:
    base = {"w": torch.ones(2, 2, dtype=torch.float64)}
    directions = {"w": torch.arange(12, dtype=torch.float64).view(3, 2, 2)}
    coefficients = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 0, 2.0]], dtype=torch.float64)
    family = AffineFamily(base, directions, coefficients)
    rows = family.rows(1, 3)
    assert rows.coefficients.tolist() == [[0.5, 0.0], [0.0, 2.0]]
    stacked = rows.stacked()["w"]
    torch.testing.assert_close(stacked[0], base["w"] + 0.5 * directions["w"][0])
    torch.testing.assert_close(stacked[1], base["w"] + 2.0 * directions["w"][2])
    assert family.rows(0, 1).directions["w"].shape == (0, 2, 2)
    assert torch.equal(family.rows(0, 1).stacked()["w"][0], base["w"])


def test_family_validates_its_shapes() -> None:
    base = {"w": torch.ones(2, 2)}
    with pytest.raises(InvalidArgumentError, match=r"\(K, D\)"):
        AffineFamily(base, {"w": torch.ones(1, 2, 2)}, torch.ones(3))
    with pytest.raises(InvalidArgumentError, match="expected"):
        AffineFamily(base, {"w": torch.ones(2, 2, 2)}, torch.ones(3, 1))
    with pytest.raises(InvalidArgumentError, match="no base"):
        AffineFamily(base, {"v": torch.ones(1, 2)}, torch.ones(3, 1))
    model = build({"name": "mlp", "in_features": 6, "widths": [5], "num_classes": 3}, seed=0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    wrong = AffineFamily({"1.weight": torch.ones(2, 2)}, {}, torch.zeros(1, 0))
    with pytest.raises(InvalidArgumentError, match="shape"):
        evaluate_sets(model, wrong, {"data": (x, y)}, plan=EvalPlan(bn="keep"))
    empty = AffineFamily({}, {}, torch.zeros(0, 0))
    with pytest.raises(InvalidArgumentError, match="no parameter sets"):
        evaluate_sets(model, empty, {"data": (x, y)}, plan=EvalPlan(bn="keep"))


def _unit_family(
    model: nn.Module, *, zero_base: bool, along_inputs: str | None
) -> tuple[AffineFamily, dict[str, torch.Tensor]]:
    """K = 5 sets over D = 2 directions whose weights differ per output unit (dim 0) of
    every tensor, like the geodesic's per-cell weights; `along_inputs` names a tensor whose
    weights vary along its other axes too. Returns the family and the same sets built one
    by one, element by element (the slow path), stacked."""
    state = model.state_dict()
    names = [n for n, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(5)
    base = {n: torch.zeros_like(state[n]) if zero_base else state[n] for n in names}
    directions = {
        n: torch.stack(
            [
                state[n] + 0.3 * torch.randn(state[n].shape, generator=gen, dtype=state[n].dtype)
                for _ in range(2)
            ]
        )
        for n in names
    }
    sets = 5
    coefficients = torch.rand(sets, 2, generator=gen, dtype=torch.float64)
    units = {}
    for n in names:
        shape = [sets, 2, state[n].shape[0]] + [1] * (state[n].dim() - 1)
        if n == along_inputs:
            shape = [sets, 2, *state[n].shape]
        units[n] = torch.rand(shape, generator=gen, dtype=torch.float64)
    units.pop(names[-1])  # the last tensor keeps the scalar coefficients
    family = AffineFamily(base, directions, coefficients, units)
    slow = {}
    for n in names:
        per_set = []
        for k in range(sets):
            value = base[n].clone()
            for d in range(2):
                w = units[n][k, d] if n in units else coefficients[k, d]
                value = value + w * directions[n][d]
            per_set.append(value)
        slow[n] = torch.stack(per_set)
    return family, slow


@pytest.mark.parametrize("name", ["mlp-bn", "mlp-no-bn", "lenet5", "conv1d-bias"])
@pytest.mark.parametrize("zero_base", [False, True])
def test_a_family_weighed_per_unit_equals_the_stacked_sets(
    name: str, zero_base: bool, input_layer_reuses: list[int]
) -> None:
    make, shape, layer = CASES[name]
    assert layer is not None
    model = make().double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(48, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=gen)
    plan = EvalPlan(bn_samples=32, bn_batch_size=16, batch_size=16, seed=1, max_sets=2)
    family, slow = _unit_family(model, zero_base=zero_base, along_inputs=None)
    torch.testing.assert_close(family.stacked(), slow, rtol=0, atol=1e-13)
    fast = evaluate_sets(model, family, {"data": (x, y)}, bn_data=(x, y), plan=plan)["data"]
    reference = evaluate_sets(model, slow, {"data": (x, y)}, bn_data=(x, y), plan=plan)["data"]
    assert torch.equal(fast.error, reference.error)
    torch.testing.assert_close(fast.loss, reference.loss, rtol=1e-10, atol=1e-12)
    assert fast.loss.unique().numel() > 1
    assert input_layer_reuses  # per-unit weights keep the input layer's reuse

    input_layer_reuses.clear()
    family, slow = _unit_family(model, zero_base=zero_base, along_inputs=f"{layer}.weight")
    fast = evaluate_sets(model, family, {"data": (x, y)}, bn_data=(x, y), plan=plan)["data"]
    reference = evaluate_sets(model, slow, {"data": (x, y)}, bn_data=(x, y), plan=plan)["data"]
    torch.testing.assert_close(fast.loss, reference.loss, rtol=1e-10, atol=1e-12)
    assert not input_layer_reuses  # weights that vary along the inputs rule reuse out


def test_unit_coefficients_are_validated() -> None:
    base = {"w": torch.ones(3, 2)}
    directions = {"w": torch.ones(1, 3, 2)}
    with pytest.raises(InvalidArgumentError, match="broadcastable"):
        AffineFamily(base, directions, torch.ones(4, 1), {"w": torch.ones(4, 1, 2, 1)})
    with pytest.raises(InvalidArgumentError, match="no direction"):
        AffineFamily(base, {}, torch.ones(4, 0), {"w": torch.ones(4, 0, 3, 1)})
