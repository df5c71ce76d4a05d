"""Manifold layer: distances on the toroid and the geodesic path (slerp). Hand-computed
cases and slow per-row baselines for the math of one cell; zero distance on a symmetry
orbit for whole models; the geodesic's defining properties (exact endpoints, unit cells,
distance t * d from a) for one aligned pair."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from functools import cache

import pytest
import torch
from torch import nn

from tests.symmetry_models import CASES, CONTINUOUS, one_thread
from toroid.errors import InvalidArgumentError
from toroid.manifold import (
    Distance,
    cell_families,
    cell_matrix,
    cell_tensors,
    distance,
    geodesic_midpoint,
    set_cell_matrix_,
    slerp,
    slerp_coefficients,
    slerp_state,
    slerp_weights,
)
from toroid.manifold.distance import DistanceKind, cell_angles, distances
from toroid.models import mlp
from toroid.symmetry import (
    SymmetrySpec,
    SymmetryTransform,
    align,
    apply_symmetry,
    canonicalize,
    random_symmetry,
    spec_for,
)

KINDS: tuple[DistanceKind, ...] = ("geodesic", "mean_angle", "overlap")


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@cache
def aligned_pair(name: str) -> tuple[nn.Module, nn.Module, SymmetrySpec]:
    """(canonical a, b aligned to a, spec) for two seeds of a catalogue model."""
    case = CASES[name]
    spec = case.spec(case.model(0))
    result = align(case.model(1), case.model(0), spec=spec)
    return result.reference, result.model, spec


def with_cells(model: nn.Module, spec: SymmetrySpec, rows: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` whose cell families named in `rows` hold the given matrices."""
    state = dict(model.state_dict())
    for cell, size in cell_families(spec):
        if cell.name in rows:
            set_cell_matrix_(state, cell, size, rows[cell.name])
    new = copy.deepcopy(model)
    new.load_state_dict(state)
    return new


def random_unit_rows(size: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(size, dim, generator=gen(seed), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def plain_mlp() -> tuple[nn.Module, SymmetrySpec]:
    """ReLU MLP without BatchNorm: cells are whole rows (weights and bias) of each layer,
    plus the output layer; no sign symmetry."""
    model = mlp(5, [4, 3], 2, batchnorm=False).double().eval()
    return model, spec_for(model)


def unit_cell_model(seed: int) -> tuple[nn.Module, SymmetrySpec]:
    """plain_mlp with every cell a random unit vector (already canonical)."""
    model, spec = plain_mlp()
    rows = {
        c.name: random_unit_rows(n, cell_matrix(model.state_dict(), c, n).shape[1], seed + i)
        for i, (c, n) in enumerate(cell_families(spec))
    }
    return with_cells(model, spec, rows), spec


# ================================================================ distance: one cell


def toy(hidden: tuple[float, float, float], output: tuple[float, float]) -> nn.Module:
    """Linear(2, 1) -> ReLU -> Linear(1, 1): exactly two cells, the hidden unit's
    (w1, w2, bias) of dimension 3 and the output layer's (w, bias) of dimension 2."""
    model = mlp(2, [1], 1, batchnorm=False).double().eval()
    state = {
        "1.weight": torch.tensor([[hidden[0], hidden[1]]], dtype=torch.float64),
        "1.bias": torch.tensor([hidden[2]], dtype=torch.float64),
        "3.weight": torch.tensor([[output[0]]], dtype=torch.float64),
        "3.bias": torch.tensor([output[1]], dtype=torch.float64),
    }
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("align_first", [True, False])
def test_two_cell_toy_matches_hand_computation(align_first: bool) -> None:
    alpha, beta = 0.7, 2.0  # hidden cell turned by alpha, output cell by beta (obtuse)
    a = toy((1.0, 0.0, 0.0), (1.0, 0.0))
    b = toy((math.cos(alpha), math.sin(alpha), 0.0), (math.cos(beta), -math.sin(beta)))
    expected = {
        "geodesic": math.sqrt(alpha**2 + beta**2),
        "mean_angle": (3 * alpha + 2 * beta) / 5,
        "overlap": (3 * (1 - math.cos(alpha)) + 2 * (1 - math.cos(beta))) / 2 / 5,
    }
    for kind in KINDS:
        value = expected[kind]
        d = distance(a, b, kind=kind, align=align_first)
        assert d.cells == 2
        assert d.kind == kind and d.aligned is align_first
        assert d.value == pytest.approx(value, abs=1e-12), kind


def test_two_cell_toy_cells_of_any_norm_measure_their_angle() -> None:
    """Canonicalization inside distance: scaling the hidden cell by 3 (compensated in the
    output weight) and the output layer by 0.2 moves neither angle."""
    a = toy((1.0, 0.0, 0.0), (1.0, 0.0))
    b = toy((0.0, 3.0, 0.0), (0.2 / 3 * 1.0, 0.0))  # hidden orthogonal, output parallel
    assert distance(a, b).value == pytest.approx(math.pi / 2, abs=1e-12)


def test_tiny_angles_are_accurate() -> None:
    """1e-9 rad between the hidden cells: arccos of the inner product would give 0 or
    ~2e-8; the atan2 form is accurate to a few ulps."""
    delta = 1e-9
    a = toy((1.0, 0.0, 0.0), (1.0, 0.0))
    b = toy((math.cos(delta), math.sin(delta), 0.0), (1.0, 0.0))
    assert distance(a, b).value == pytest.approx(delta, rel=1e-6)
    assert distance(a, b, kind="mean_angle").value == pytest.approx(3 * delta / 5, rel=1e-6)
    assert distance(a, b, kind="overlap").value == pytest.approx(3 * (delta**2 / 4) / 5, rel=1e-6)


def test_overlap_is_normalized_hamming_distance_for_sign_cells() -> None:
    """Cells with entries +-1/sqrt(n_c): overlap = (differing entries) / (all entries)."""
    model, spec = plain_mlp()
    state = model.state_dict()
    signs_a, signs_b, rows_a, rows_b = {}, {}, {}, {}
    for i, (cell, size) in enumerate(cell_families(spec)):
        dim = cell_matrix(state, cell, size).shape[1]
        for signs, rows, seed in ((signs_a, rows_a, i), (signs_b, rows_b, 100 + i)):
            s = torch.randint(0, 2, (size, dim), generator=gen(seed)).double() * 2 - 1
            signs[cell.name], rows[cell.name] = s, s / math.sqrt(dim)
    a, b = with_cells(model, spec, rows_a), with_cells(model, spec, rows_b)
    differing = sum(int((signs_a[k] != signs_b[k]).sum()) for k in signs_a)
    total = sum(s.numel() for s in signs_a.values())
    assert 0 < differing < total
    d = distance(a, b, kind="overlap", align=False)
    assert d.value == pytest.approx(differing / total, abs=1e-12)


def test_mean_angle_of_orthogonal_cells_is_half_pi() -> None:
    a, spec = unit_cell_model(seed=0)
    state = a.state_dict()
    rows = {}
    for i, (cell, size) in enumerate(cell_families(spec)):
        ra = cell_matrix(state, cell, size)
        v = torch.randn(ra.shape, generator=gen(50 + i), dtype=torch.float64)
        v = v - (v * ra).sum(dim=1, keepdim=True) * ra
        rows[cell.name] = v / v.norm(dim=1, keepdim=True)
    b = with_cells(a, spec, rows)
    cells = distance(a, b, align=False).cells
    assert cells == 4 + 3 + 1
    assert distance(a, b, kind="mean_angle", align=False).value == pytest.approx(
        math.pi / 2, abs=1e-12
    )
    assert distance(a, b, kind="overlap", align=False).value == pytest.approx(0.5, abs=1e-12)
    assert distance(a, b, align=False).value == pytest.approx(
        math.pi / 2 * math.sqrt(cells), abs=1e-12
    )


def slow_distances(a: nn.Module, b: nn.Module, spec: SymmetrySpec) -> dict[str, float]:
    """Baseline: canonicalize, then one row at a time, theta = arccos(a . b)."""
    sa, sb = canonicalize(a, spec=spec).state_dict(), canonicalize(b, spec=spec).state_dict()
    squares = weighted_angle = weighted_overlap = total = 0.0
    for cell, size in cell_families(spec):
        ma, mb = cell_matrix(sa, cell, size), cell_matrix(sb, cell, size)
        for i in range(size):
            cos = float(torch.dot(ma[i], mb[i]) / (ma[i].norm() * mb[i].norm()))
            theta = math.acos(max(-1.0, min(1.0, cos)))
            n = ma.shape[1]
            squares += theta**2
            weighted_angle += n * theta
            weighted_overlap += n * (1 - cos) / 2
            total += n
    return {
        "geodesic": math.sqrt(squares),
        "mean_angle": weighted_angle / total,
        "overlap": weighted_overlap / total,
    }


@pytest.mark.parametrize("name", ["mlp_bn", "lenet5"])
def test_distance_matches_slow_baseline(name: str) -> None:
    case = CASES[name]
    a, b, spec = case.model(0), case.model(1), case.spec()
    slow = slow_distances(a, b, spec)
    for kind in KINDS:
        d = distance(a, b, kind=kind, align=False, spec=spec)
        assert d.value == pytest.approx(slow[kind], abs=1e-9), kind
        assert d.value > 0.01


@pytest.mark.parametrize("name", ["mlp_bn", "tanh_bn"])
def test_distances_with_one_alignment_equal_each_kind_alone(name: str) -> None:
    case = CASES[name]
    a, b, spec = case.model(0), case.model(1), case.spec()
    together = distances(a, b, spec=spec, per_layer=True)
    assert list(together) == list(KINDS)
    for kind in KINDS:
        alone = distance(a, b, kind=kind, spec=spec, per_layer=True)  # type: ignore[arg-type]
        assert together[kind] == alone
    with pytest.raises(InvalidArgumentError, match="at least one"):
        distances(a, b, kinds=(), spec=spec)


# ================================================================ distance: one model, one pair


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mlp_bn", "tanh_plain", "lenet5"])
def test_distance_to_itself_is_exactly_zero(name: str, kind: DistanceKind) -> None:
    case = CASES[name]
    a = case.model(0)
    d = distance(a, a, kind=kind, per_layer=True, spec=case.spec())
    assert d.value == 0.0
    assert d.per_layer is not None and all(v == 0.0 for v in d.per_layer.values())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mlp_bn", "tanh_plain", "tanh_bn", "lenet5"])
def test_distance_to_symmetry_orbit_is_zero(name: str, kind: DistanceKind) -> None:
    """random_symmetry: scales of every cell and the output, signs, permutations."""
    case = CASES[name]
    a, spec = case.model(0), case.spec()
    for seed in (1, 2):
        moved, transform = random_symmetry(a, seed=seed, spec=spec)
        assert any(
            not torch.equal(p, torch.arange(len(p))) for p in transform.permutations.values()
        )
        d = distance(a, moved, kind=kind, spec=spec)
        assert d.value == pytest.approx(0.0, abs=1e-6)
        assert d.aligned
    assert distance(a, case.model(1), kind=kind, spec=spec).value > 0.01


def test_resnet20_distance_to_symmetry_orbit_is_zero() -> None:
    case = CASES["resnet20"]
    a, spec = case.model(0), case.spec()
    moved, _ = random_symmetry(a, seed=4, spec=spec)
    assert distance(a, moved, spec=spec).value == pytest.approx(0.0, abs=1e-6)
    assert distance(a, moved, spec=spec, align=False).value > 1.0


def test_float32_models_are_measured_in_float64_and_left_untouched() -> None:
    case = CASES["mlp_bn"]
    a = copy.deepcopy(case.model(0)).float()
    moved, _ = random_symmetry(a, seed=3, spec=case.spec())
    before = {k: v.clone() for k, v in moved.state_dict().items()}
    d = distance(a, moved, spec=case.spec())
    assert d.value == pytest.approx(0.0, abs=1e-5)
    assert all(
        v.dtype == torch.float32 for v in moved.state_dict().values() if v.is_floating_point()
    )
    assert all(torch.equal(before[k], v) for k, v in moved.state_dict().items())


def test_align_false_keeps_the_permutation() -> None:
    """A permuted copy: far apart unaligned, on top of each other aligned."""
    case = CASES["mlp_bn"]
    a, spec = case.model(0), case.spec()
    perms = {g.name: torch.randperm(g.size, generator=gen(i)) for i, g in enumerate(spec.groups)}
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    b = apply_symmetry(a, SymmetryTransform(permutations=perms), spec)
    for kind in KINDS:
        unaligned = distance(a, b, kind=kind, align=False, spec=spec)
        aligned = distance(a, b, kind=kind, spec=spec)
        assert unaligned.value > 0.05 and not unaligned.aligned
        assert aligned.value == pytest.approx(0.0, abs=1e-6) and aligned.aligned


@pytest.mark.parametrize("name", ["mlp_bn", "lenet5"])
def test_per_layer_breaks_the_total_down(name: str) -> None:
    case = CASES[name]
    a, b, spec = case.model(0), case.model(1), case.spec()
    families = [
        (c.name, n, cell_matrix(a.state_dict(), c, n).shape[1]) for c, n in cell_families(spec)
    ]
    geodesic = distance(a, b, per_layer=True, spec=spec)
    assert geodesic.per_layer is not None
    assert list(geodesic.per_layer) == [name for name, _, _ in families]
    assert all(v > 0 for v in geodesic.per_layer.values())
    squares = sum(v**2 for v in geodesic.per_layer.values())
    assert squares == pytest.approx(geodesic.value**2, rel=1e-12)
    assert geodesic.cells == sum(n for _, n, _ in families)
    # mean_angle and overlap: the total is the (size * dim)-weighted mean of the families
    weights = {name: n * dim for name, n, dim in families}
    for kind in KINDS[1:]:
        d = distance(a, b, kind=kind, per_layer=True, spec=spec)
        assert d.per_layer is not None
        mean = sum(weights[k] * v for k, v in d.per_layer.items()) / sum(weights.values())
        assert mean == pytest.approx(d.value, rel=1e-12)
    assert distance(a, b, spec=spec).per_layer is None


def test_str_reports_the_kind() -> None:
    a, b = CASES["mlp_bn"].model(0), CASES["mlp_bn"].model(1)
    for kind in KINDS:
        d = distance(a, b, kind=kind)
        assert isinstance(d, Distance)
        text = str(d)
        assert text.startswith(f"{kind} distance ")
        assert f"{d.value:.6g}" in text and "aligned" in text
    text = str(distance(a, b, per_layer=True, align=False))
    assert "not aligned" in text and len(text.splitlines()) == 1 + 5


def test_bad_kind_and_mismatched_architectures_raise() -> None:
    a = CASES["mlp_bn"].model(0)
    with pytest.raises(InvalidArgumentError) as info:
        distance(a, a, kind="euclid")
    assert "'euclid'" in str(info.value) and "'mean_angle'" in str(info.value)
    with pytest.raises(InvalidArgumentError, match="different architectures"):
        distance(a, CASES["mlp_plain"].model(0))
    with pytest.raises(InvalidArgumentError, match="different architectures"):
        distance(a, CASES["mlp_plain"].model(0), align=False)


# ================================================================ slerp


def states_equal(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def with_counter(model: nn.Module, value: int) -> nn.Module:
    """A copy whose BatchNorms' num_batches_tracked is `value` (to tell a's from b's)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.num_batches_tracked is not None
            module.num_batches_tracked.fill_(value)
    return model


@pytest.mark.parametrize("name", ["mlp_bn", "tanh_plain", "lenet5"])
def test_slerp_endpoints_are_exact(name: str) -> None:
    a, b, spec = aligned_pair(name)
    a, b = with_counter(a, 5), with_counter(b, 7)
    assert states_equal(slerp(a, b, 0.0, spec=spec).state_dict(), a.state_dict())
    assert states_equal(slerp(a, b, 1.0, spec=spec).state_dict(), b.state_dict())
    assert not states_equal(a.state_dict(), b.state_dict())


@pytest.mark.parametrize("name", ["mlp_bn", "tanh_bn", "lenet5", "resnet20"])
def test_slerp_keeps_every_cell_unit_norm(name: str) -> None:
    a, b, spec = aligned_pair(name)
    for t in (0.1, 0.5, 0.9):
        state = slerp(a, b, t, spec=spec).state_dict()
        for cell, size in cell_families(spec):
            norms = cell_matrix(state, cell, size).norm(dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-12, rtol=0), cell.name


def test_slerp_matches_slow_baseline() -> None:
    """Per row, (sin((1-t) theta) a + sin(t theta) b) / sin(theta), theta = arccos(a . b)."""
    a, b, spec = aligned_pair("mlp_bn")
    t = 0.3
    out = slerp(a, b, t, spec=spec).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    for cell, size in cell_families(spec):
        ma, mb, mo = (cell_matrix(s, cell, size) for s in (sa, sb, out))
        for i in range(size):
            theta = math.acos(float(torch.dot(ma[i], mb[i])))
            assert theta > 1e-4
            expected = (math.sin((1 - t) * theta) * ma[i] + math.sin(t * theta) * mb[i]) / math.sin(
                theta
            )
            assert torch.allclose(mo[i], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["mlp_bn", "lenet5"])
def test_geodesic_distance_along_slerp_is_proportional_to_t(name: str) -> None:
    a, b, spec = aligned_pair(name)
    total = distance(a, b, align=False, spec=spec).value
    assert total > 1.0
    for t in (0.25, 0.5, 0.8):
        point = slerp(a, b, t, spec=spec)
        assert distance(a, point, align=False, spec=spec).value == pytest.approx(
            t * total, abs=1e-9
        )
        assert distance(point, b, align=False, spec=spec).value == pytest.approx(
            (1 - t) * total, abs=1e-9
        )


def test_slerp_of_identical_models_returns_the_same_tensors() -> None:
    a, _, spec = aligned_pair("mlp_bn")
    for t in (0.1, 0.5, 0.9):
        state = slerp(a, a, t, spec=spec).state_dict()
        assert not any(torch.isnan(v).any() for v in state.values() if v.is_floating_point())
        assert states_equal(state, a.state_dict())


def test_slerp_with_some_identical_cells_has_no_nan() -> None:
    """b equals a except in one cell family: the identical cells stay exactly a's, the
    changed ones move."""
    a, spec = unit_cell_model(seed=0)
    first, size = next(iter(cell_families(spec)))
    dim = cell_matrix(a.state_dict(), first, size).shape[1]
    b = with_cells(a, spec, {first.name: random_unit_rows(size, dim, seed=99)})
    state = slerp(a, b, 0.5, spec=spec).state_dict()
    assert not any(torch.isnan(v).any() for v in state.values())
    for cell, n in cell_families(spec):
        same = torch.equal(cell_matrix(state, cell, n), cell_matrix(a.state_dict(), cell, n))
        assert same is (cell.name != first.name), cell.name


def test_slerp_of_tiny_angles_is_accurate() -> None:
    """Cells 1e-10 rad apart go through the linear fallback: unit norm, angle t * delta."""
    delta = 1e-10
    a = toy((1.0, 0.0, 0.0), (1.0, 0.0))
    b = toy((math.cos(delta), math.sin(delta), 0.0), (math.cos(delta), math.sin(delta)))
    spec = spec_for(a)
    point = slerp(a, b, 0.3, spec=spec)
    state = point.state_dict()
    assert not any(torch.isnan(v).any() for v in state.values())
    for cell, n in cell_families(spec):
        assert float(cell_matrix(state, cell, n).norm()) == pytest.approx(1.0, abs=1e-15)
    assert distance(a, point, align=False).value == pytest.approx(
        0.3 * math.sqrt(2) * delta, rel=1e-6
    )


def test_slerp_interpolates_non_cell_tensors_linearly() -> None:
    """tanh without BatchNorm: hidden weights and biases are outside cells; BatchNorm
    running statistics too; integer buffers come from a."""
    for name, t in (("tanh_plain", 0.3), ("mlp_bn", 0.6)):
        a, b, spec = aligned_pair(name)
        a, b = with_counter(a, 5), with_counter(b, 7)
        sa, sb = a.state_dict(), b.state_dict()
        out = slerp_state(sa, sb, t, spec)
        outside = [k for k in sa if k not in cell_tensors(spec)]
        floating = [k for k in outside if sa[k].is_floating_point()]
        assert floating, name
        for key in floating:
            assert not torch.equal(sa[key], sb[key]), key
            assert torch.allclose(out[key], (1 - t) * sa[key] + t * sb[key], atol=1e-14, rtol=0)
        for key in outside:
            if not sa[key].is_floating_point():
                assert torch.equal(out[key], sa[key]), key
        assert states_equal(slerp(a, b, t, spec=spec).state_dict(), out)


def test_slerp_returns_a_new_model_and_keeps_a_dtype() -> None:
    a, b, spec = aligned_pair("mlp_bn")
    before = {k: v.clone() for k, v in a.state_dict().items()}
    point = slerp(a, b, 0.5, spec=spec)
    assert point is not a and states_equal(a.state_dict(), before)
    assert not states_equal(point.state_dict(), before)
    assert states_equal(geodesic_midpoint(a, b, spec=spec).state_dict(), point.state_dict())
    a32, b32 = copy.deepcopy(a).float(), copy.deepcopy(b).float()
    point32 = slerp(a32, b32, 0.5, spec=spec)
    for key, value in point32.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            assert torch.allclose(value.double(), point.state_dict()[key], atol=1e-6), key


def test_slerp_rejects_bad_t_and_mismatched_architectures() -> None:
    a, b, spec = aligned_pair("mlp_bn")
    for t in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match="t must be"):
            slerp(a, b, t, spec=spec)
    with pytest.raises(InvalidArgumentError, match="different architectures"):
        slerp(a, CASES["mlp_plain"].model(0), 0.5)


def test_slerp_of_parallel_cells_of_different_norms_has_no_nan() -> None:
    """Parallel rows that are not equal (angle exactly 0): the linear fallback keeps the
    direction and interpolates the norm, where the arc formula would divide 0 by 0."""
    a = toy((0.6, 0.8, 0.0), (1.0, 0.0))
    b = toy((1.2, 1.6, 0.0), (1.0, 0.0))
    state = slerp_state(a.state_dict(), b.state_dict(), 0.25, spec_for(a))
    assert not any(torch.isnan(v).any() for v in state.values())
    expected = torch.tensor([[0.75, 1.0]], dtype=torch.float64)  # 1.25 * (0.6, 0.8)
    assert torch.allclose(state["1.weight"], expected, atol=1e-15, rtol=0)


def test_cell_angles_of_zero_rows() -> None:
    """A zero cell (canonicalization leaves it) has no direction: 0 from another zero cell,
    pi/2 from any other cell, as arccos(a . b) says."""
    zero = torch.zeros(1, 3, dtype=torch.float64)
    unit = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert float(cell_angles(zero, zero)[0]) == 0.0
    assert float(cell_angles(zero, unit)[0]) == pytest.approx(math.pi / 2, abs=1e-15)
    assert float(cell_angles(unit, -unit)[0]) == pytest.approx(math.pi, abs=1e-15)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_slerp_weights_reproduce_slerp_state(name: str) -> None:
    """The geodesic as weights of its ends, w[k, 0] a + w[k, 1] b per tensor, equals
    slerp_state at every t; exactly at the ends; tensors outside cells are left to the
    caller's linear weights."""
    a, b, spec = aligned_pair(name)
    sa, sb = a.state_dict(), b.state_dict()
    ts = (0.0, 0.2, 0.5, 0.9, 1.0)
    weights = slerp_weights(sa, sb, ts, spec)
    assert weights is not None
    assert set(weights) == cell_tensors(spec)
    for k, t in enumerate(ts):
        expected = slerp_state(sa, sb, t, spec)
        for tensor, w in weights.items():
            combined = w[k, 0] * sa[tensor] + w[k, 1] * sb[tensor]
            if t in (0.0, 1.0):
                assert torch.equal(combined, expected[tensor]), (tensor, t)
            else:
                torch.testing.assert_close(combined, expected[tensor], rtol=0, atol=1e-12)
    if spec.cells:  # hidden cells: their units move by different angles, so weights differ
        middle = [w[2, 0] for w in weights.values()]
        assert any(w.numel() > 1 and not torch.all(w == w.flatten()[0]) for w in middle)


def test_slerp_coefficients_of_many_t_equal_one_t_at_a_time() -> None:
    rows_a = torch.randn(6, 5, generator=gen(0), dtype=torch.float64)
    rows_b = torch.randn(6, 5, generator=gen(1), dtype=torch.float64)
    rows_b[1] = rows_a[1]  # identical: (1, 0)
    rows_a[2] = 0.0  # zero row: linear
    rows_b[3] = 2.5 * rows_a[3]  # parallel, other norm: the linear fallback
    ts = (0.0, 0.1, 0.5, 0.75, 1.0)
    alpha, beta = slerp_coefficients(rows_a, rows_b, ts)
    assert alpha.shape == beta.shape == (len(ts), 6)
    for k, t in enumerate(ts):
        one_a, one_b = slerp_coefficients(rows_a, rows_b, [t])
        assert torch.equal(alpha[k], one_a[0]) and torch.equal(beta[k], one_b[0])
    assert alpha[0].eq(1).all() and beta[0].eq(0).all()
    assert alpha[-1].eq(0).all() and beta[-1].eq(1).all()
    assert alpha[1:-1, 1].eq(1).all() and beta[1:-1, 1].eq(0).all()
    torch.testing.assert_close(alpha[:, 2], 1 - torch.tensor(ts, dtype=torch.float64))
    torch.testing.assert_close(beta[:, 2], torch.tensor(ts, dtype=torch.float64))
    # parallel rows of norms 1 and 2.5 (in units of |a|): the norm goes linearly from one
    # to the other, so alpha a + beta b = (1 + 1.5 t) a.
    scale = alpha[:, 3] + 2.5 * beta[:, 3]
    torch.testing.assert_close(scale, 1 + 1.5 * torch.tensor(ts, dtype=torch.float64))
