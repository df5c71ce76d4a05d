"""Symmetry layer, bottom rungs: the per-unit slot math (slots.py) against slow explicit
loops, one layer's scale / sign transforms (transform.py) against direct forward
computations, and the models the derivation must refuse."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.symmetry_models import one_thread
from toroid.errors import UnsupportedModelError
from toroid.symmetry import CellFamily, Slot, SymmetrySpec, UnitGroup, symmetry_spec
from toroid.symmetry.slots import permute_units, scale_units, unit_matrix, unit_rows
from toroid.symmetry.transform import flip_units_, scale_cell_


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


# Each case: (tensor shape, slot, number of units).
SLOT_CASES = {
    "rows": ((5, 3), Slot("w", 0), 5),
    "columns": ((4, 6), Slot("w", 1), 6),
    "conv_rows": ((4, 3, 3, 3), Slot("w", 0), 4),
    "conv_columns": ((4, 3, 3, 3), Slot("w", 1), 3),
    "vector": ((7,), Slot("b", 0), 7),
    "block_columns": ((5, 3 * 4), Slot("w", 1, 4), 3),  # flatten consumer, H*W = 4
    "block_vector": ((3 * 9,), Slot("m", 0, 9), 3),  # BatchNorm1d after a flatten
}


def unit_slice(tensor: torch.Tensor, slot: Slot, i: int) -> torch.Tensor:
    return tensor.narrow(slot.axis, i * slot.block, slot.block)


# ---------------------------------------------------------------- slots.py


@pytest.mark.parametrize("case", SLOT_CASES)
def test_unit_rows_holds_each_units_slice(case: str) -> None:
    shape, slot, size = SLOT_CASES[case]
    a, b = randn(*shape, seed=1), randn(*shape, seed=2)
    rows_a, rows_b = unit_rows(a, slot, size), unit_rows(b, slot, size)
    assert rows_a.shape == (size, a.numel() // size)
    for i in range(size):
        # row i holds exactly the entries of unit i's slice (in some fixed order) ...
        expected = unit_slice(a, slot, i).reshape(-1).sort().values
        assert torch.equal(rows_a[i].sort().values, expected)
    # ... in the same order for two tensors of one shape: inner products of units match.
    gram = rows_a @ rows_b.T
    slow_gram = torch.tensor(
        [
            [float((unit_slice(a, slot, i) * unit_slice(b, slot, j)).sum()) for j in range(size)]
            for i in range(size)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(gram, slow_gram, rtol=1e-12, atol=1e-12)


def test_unit_rows_of_rows_is_the_plain_row_layout() -> None:
    w = randn(4, 3, 2, 2, seed=3)
    assert torch.equal(unit_rows(w, Slot("w", 0), 4), w.reshape(4, -1))


def test_unit_matrix_concatenates_slices_per_unit() -> None:
    state = {"w": randn(3, 5, seed=4), "b": randn(3, seed=5), "c": randn(2, 3 * 4, seed=6)}
    slots = (Slot("w", 0), Slot("b", 0), Slot("c", 1, 4))
    matrix = unit_matrix(state, slots, 3)
    assert matrix.shape == (3, 5 + 1 + 2 * 4)
    for i in range(3):
        norm2 = sum(float(unit_slice(state[s.tensor], s, i).pow(2).sum()) for s in slots)
        assert float(matrix[i].pow(2).sum()) == pytest.approx(norm2, rel=1e-13)


@pytest.mark.parametrize("case", SLOT_CASES)
def test_scale_units_matches_a_loop(case: str) -> None:
    shape, slot, size = SLOT_CASES[case]
    t = randn(*shape, seed=7)
    factors = 0.1 + torch.rand(size, generator=gen(8), dtype=torch.float64) * 5
    slow = t.clone()
    for i in range(size):
        for k in range(slot.block):
            index = i * slot.block + k
            slow.select(slot.axis, index).mul_(factors[i])
    out = scale_units(t, slot, factors)
    assert torch.equal(out, slow)
    assert not torch.equal(out, t)
    assert torch.equal(t, randn(*shape, seed=7)), "the input tensor must be untouched"


@pytest.mark.parametrize("case", SLOT_CASES)
def test_permute_units_matches_a_loop_and_inverts(case: str) -> None:
    shape, slot, size = SLOT_CASES[case]
    t = randn(*shape, seed=9)
    perm = torch.randperm(size, generator=gen(10))
    while torch.equal(perm, torch.arange(size)):
        perm = torch.randperm(size, generator=gen(int(perm.sum()) + 11))
    slow = torch.empty_like(t)
    for i in range(size):
        # new unit i is old unit perm[i]
        unit_slice(slow, slot, i).copy_(unit_slice(t, slot, int(perm[i])))
    out = permute_units(t, slot, perm)
    assert torch.equal(out, slow)
    assert not torch.equal(out, t)
    inverse = torch.argsort(perm)
    assert torch.equal(permute_units(out, slot, inverse), t)
    # composition: permuting by p then q is permuting by p[q]
    q = torch.randperm(size, generator=gen(12))
    assert torch.equal(permute_units(out, slot, q), permute_units(t, slot, perm[q]))


# ---------------------------------------------------------------- transform.py, one layer


def bn_random_(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    n = bn.num_features
    with torch.no_grad():
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(randn(n, seed=seed))
        bn.running_var.copy_(0.01 + torch.rand(n, generator=gen(seed + 1)).double() * 0.2)
        bn.weight.copy_(0.5 + torch.rand(n, generator=gen(seed + 2)).double())
        bn.bias.copy_(randn(n, seed=seed + 3))


def eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model.eval()(x)
    return out


def loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    import copy

    new = copy.deepcopy(model)
    new.load_state_dict(state)
    return new.eval()


def factors_for(size: int, seed: int) -> torch.Tensor:
    u = torch.rand(size, generator=gen(seed), dtype=torch.float64)
    return torch.exp(math.log(0.05) + u * math.log(20 / 0.05))


def test_scale_absorbed_cell_keeps_bn_output_and_folds_eps() -> None:
    torch.manual_seed(0)
    # eps large against running_var: forgetting eps in the rescale is visible at 1e-12
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3, eps=0.3)).double()
    bn_random_(model[1], 20)
    cell = CellFamily("c", "g", "absorbed", (Slot("0.weight", 0),), batchnorm=("1",))
    spec = SymmetrySpec(groups=(), cells=(cell,), bn_eps={"1": 0.3})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    factors = factors_for(3, 21)
    scale_cell_(state, spec, cell, factors)

    w, mu, var = state["0.weight"], state["1.running_mean"], state["1.running_var"]
    old = model.state_dict()
    torch.testing.assert_close(w, old["0.weight"] * factors[:, None], rtol=1e-15, atol=0)
    torch.testing.assert_close(mu, old["1.running_mean"] * factors, rtol=1e-15, atol=0)
    expected_var = (old["1.running_var"] + 0.3) * factors**2 - 0.3
    torch.testing.assert_close(var, expected_var, rtol=1e-14, atol=1e-15)
    # gamma and beta are not part of an absorbed cell
    assert torch.equal(state["1.weight"], old["1.weight"])

    x = randn(10, 4, seed=22)
    # the direct computation with the transformed tensors ...
    direct = (x @ w.T - mu) / torch.sqrt(var + 0.3) * state["1.weight"] + state["1.bias"]
    # ... equals the original network in eval mode
    reference = eval_out(model, x)
    torch.testing.assert_close(direct, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eval_out(loaded(model, state), x), reference, rtol=0, atol=1e-12)
    # guard: rescaling running_var without folding eps in would change the output
    naive = dict(state, **{"1.running_var": old["1.running_var"] * factors**2})
    assert float((eval_out(loaded(model, naive), x) - reference).abs().max()) > 1e-3


def test_scale_absorbed_cell_with_bias_and_conv() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, eps=0.1)).double()
    bn_random_(model[1], 30)
    cell = CellFamily(
        "c", "g", "absorbed", (Slot("0.weight", 0), Slot("0.bias", 0)), batchnorm=("1",)
    )
    spec = SymmetrySpec(groups=(), cells=(cell,), bn_eps={"1": 0.1})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scale_cell_(state, spec, cell, factors_for(4, 31))
    x = randn(3, 2, 6, 6, seed=32)
    assert not torch.allclose(state["0.weight"], model.state_dict()["0.weight"])
    torch.testing.assert_close(
        eval_out(loaded(model, state), x), eval_out(model, x), rtol=0, atol=1e-12
    )


def test_scale_homogeneous_bn_pair_compensated_in_consumer() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)
    ).double()
    bn_random_(model[1], 40)
    cell = CellFamily(
        "c",
        "g",
        "homogeneous",
        (Slot("1.weight", 0), Slot("1.bias", 0)),
        compensate=(Slot("3.weight", 1),),
    )
    spec = SymmetrySpec(groups=(), cells=(cell,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    factors = factors_for(5, 41)
    scale_cell_(state, spec, cell, factors)
    old = model.state_dict()
    torch.testing.assert_close(state["1.weight"], old["1.weight"] * factors, rtol=1e-15, atol=0)
    torch.testing.assert_close(state["3.weight"], old["3.weight"] / factors, rtol=1e-15, atol=0)
    assert torch.equal(state["1.running_var"], old["1.running_var"])

    x = randn(12, 4, seed=42)
    h = (x @ state["0.weight"].T - state["1.running_mean"]) / torch.sqrt(
        state["1.running_var"] + 1e-5
    )
    direct = torch.relu(h * state["1.weight"] + state["1.bias"]) @ state["3.weight"].T
    direct = direct + state["3.bias"]
    reference = eval_out(model, x)
    torch.testing.assert_close(direct, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eval_out(loaded(model, state), x), reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.2)])
def test_scale_homogeneous_relu_without_bn(activation: nn.Module) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), activation, nn.Linear(6, 2)).double()
    cell = CellFamily(
        "c",
        "g",
        "homogeneous",
        (Slot("0.weight", 0), Slot("0.bias", 0)),
        compensate=(Slot("2.weight", 1),),
    )
    spec = SymmetrySpec(groups=(), cells=(cell,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    factors = factors_for(6, 51)
    scale_cell_(state, spec, cell, factors)
    x = randn(12, 4, seed=52)
    hidden = activation(x @ state["0.weight"].T + state["0.bias"])
    # the hidden units are scaled by the factors ...
    torch.testing.assert_close(
        hidden, activation(x @ model[0].weight.detach().T + model[0].bias.detach()) * factors
    )
    direct = hidden @ state["2.weight"].T + state["2.bias"]
    # ... and the output is unchanged
    torch.testing.assert_close(direct, eval_out(model, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        eval_out(loaded(model, state), x), eval_out(model, x), rtol=0, atol=1e-12
    )


def test_scale_without_compensation_changes_the_function() -> None:
    """Guard for the tests above: a cell without its compensation does change outputs."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    cell = CellFamily("c", "g", "homogeneous", (Slot("0.weight", 0), Slot("0.bias", 0)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scale_cell_(state, SymmetrySpec(groups=(), cells=(cell,)), cell, factors_for(6, 51))
    x = randn(12, 4, seed=52)
    assert not torch.allclose(eval_out(loaded(model, state), x), eval_out(model, x))


def test_sign_flip_on_tanh_layer() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    slots = (Slot("0.weight", 0), Slot("0.bias", 0), Slot("2.weight", 1))
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flip_units_(state, slots, signs)
    x = randn(9, 4, seed=60)
    old_hidden = torch.tanh(x @ model[0].weight.detach().T + model[0].bias.detach())
    new_hidden = torch.tanh(x @ state["0.weight"].T + state["0.bias"])
    torch.testing.assert_close(new_hidden, old_hidden * signs, rtol=0, atol=1e-15)
    direct = new_hidden @ state["2.weight"].T + state["2.bias"]
    torch.testing.assert_close(direct, eval_out(model, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        eval_out(loaded(model, state), x), eval_out(model, x), rtol=0, atol=1e-12
    )
    # flipping only the producer (no compensation) changes the function
    half = {k: v.clone() for k, v in model.state_dict().items()}
    flip_units_(half, slots[:2], signs)
    assert not torch.allclose(eval_out(loaded(model, half), x), eval_out(model, x))


def test_sign_flip_through_batchnorm_negates_mean_and_beta() -> None:
    """Linear -> BN -> tanh: flipping the row, the running mean and beta negates the BN
    output (gamma and running_var stay)."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)
    ).double()
    bn_random_(model[1], 70)
    slots = (
        Slot("0.weight", 0),
        Slot("1.running_mean", 0),
        Slot("1.bias", 0),
        Slot("3.weight", 1),
    )
    signs = torch.tensor([-1.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flip_units_(state, slots, signs)
    x = randn(9, 4, seed=71)
    torch.testing.assert_close(
        eval_out(loaded(model, state), x), eval_out(model, x), rtol=0, atol=1e-12
    )


# ---------------------------------------------------------------- derivation refuses


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1))
        return out


class FunctionalHardswish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(F.hardswish(self.a(x)))
        return out


UNSUPPORTED = {
    "hardswish": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Hardswish(), nn.Linear(5, 2)),
        (4,),
        ("Hardswish", "'1'"),
    ),
    "layernorm_two_axes": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.LayerNorm((4, 4)), nn.ReLU(), nn.Flatten(),
            nn.Linear(3 * 4 * 4, 2),
        ),
        (2, 6, 6),
        ("LayerNorm", "'1'", "(4, 4)"),
    ),
    "cat": (CatNet, (4,), ("cat",)),
    "functional_hardswish": (FunctionalHardswish, (4,), ("hardswish",)),
    "grouped_conv": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 2 * 2, 2),
        ),
        (2, 6, 6),
        ("groups=2", "'2'"),
    ),
    "asymmetric_hardtanh": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Hardtanh(-1.0, 2.0), nn.Linear(5, 2)),
        (4,),
        ("Hardtanh",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_model_names_the_offender(case: str) -> None:
    build, shape, names = UNSUPPORTED[case]
    torch.manual_seed(0)
    model = build().double().eval()
    x = randn(2, *shape, seed=80)
    with pytest.raises(UnsupportedModelError) as info:
        symmetry_spec(model, x)
    message = str(info.value)
    for name in names:
        assert name in message, message


def test_supported_neighbours_of_the_unsupported_cases_derive() -> None:
    """The same shapes with supported operations do derive (the refusals above are about
    the named operation, not the architecture)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 2 * 2, 2),
    ).double()  # fmt: skip
    spec = symmetry_spec(model, randn(2, 2, 6, 6, seed=81))
    assert [g.size for g in spec.groups] == [4, 4]
    assert Slot("5.weight", 1, 4) in spec.groups[1].slots


def test_unit_group_dataclass_flags() -> None:
    group = UnitGroup("g", 3, (Slot("w", 0),))
    assert not group.odd and not group.stream
    assert UnitGroup("g", 3, (Slot("w", 0),), flip=(Slot("w", 0),)).odd
