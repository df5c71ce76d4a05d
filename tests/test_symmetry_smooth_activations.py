"""Symmetry layer, element-wise activations that are neither positively homogeneous nor odd
(GELU, SiLU, Softplus, ELU, Sigmoid, Mish): their units have permutation symmetry only.

For MLPs (the `torch.nn` modules) and a small CNN (the functional forms), each with and
without BatchNorm: the derived spec (no cell and no sign flip in front of such an
activation; a pre-BatchNorm scale kept), invariance of the logits under `random_symmetry`,
the canonical form (function kept, idempotent, equal on the orbit, those units' weights
left alone), planted transforms recovered by `align` in 20 of 20 seeds, distances, local
energy and the geodesic on the orbit; and the refusal of activations still unsupported."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.symmetry_models import (
    assert_states_close,
    assert_undoes_planted_permutations,
    logits,
    max_state_difference,
    one_thread,
    seeded,
)
from toroid.data import Split, TensorData, load
from toroid.errors import UnsupportedModelError
from toroid.flatness import local_energy
from toroid.manifold import distances, slerp_state
from toroid.manifold.distance import KINDS
from toroid.manifold.perturb import Noise, draw_noise, perturbed_state
from toroid.symmetry import (
    SymmetrySpec,
    SymmetryTransform,
    align,
    apply_symmetry,
    canonicalize,
    is_canonical,
    random_symmetry,
    register_module_kind,
    same_function,
    symmetry_spec,
)
from toroid.symmetry.transform import transform_state

SEEDS = (0, 1, 2)
PLANTED_SEEDS = range(20)

Act = Callable[[torch.Tensor], torch.Tensor]

# name -> (the torch.nn module, the functional form the CNN calls)
ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], Act]] = {
    "gelu": (nn.GELU, F.gelu),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "silu": (nn.SiLU, F.silu),
    "softplus": (lambda: nn.Softplus(beta=2.0), lambda x: F.softplus(x, beta=2.0)),
    "elu": (lambda: nn.ELU(alpha=0.7), lambda x: F.elu(x, alpha=0.7)),
    "sigmoid": (nn.Sigmoid, torch.sigmoid),
    "sigmoid_method": (nn.Sigmoid, lambda x: x.sigmoid()),
    "mish": (nn.Mish, F.mish),
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


# ---------------------------------------------------------------- the models


def smooth_mlp(act: str, bn: bool) -> nn.Module:
    """6 -> 7 -> 5 -> 3. With `bn`: BatchNorm in front of the first activation (the Linear's
    scale is absorbed, the BatchNorm pair has none) and behind the second (the BatchNorm pair
    is scalable into the output layer, the Linear in front of the activation is not)."""
    module = ACTIVATIONS[act][0]
    if not bn:
        return nn.Sequential(nn.Linear(6, 7), module(), nn.Linear(7, 5), module(), nn.Linear(5, 3))
    return nn.Sequential(
        nn.Linear(6, 7),
        nn.BatchNorm1d(7),
        module(),
        nn.Linear(7, 5),
        module(),
        nn.BatchNorm1d(5),
        nn.Linear(5, 3),
    )


class SmoothCNN(nn.Module):
    """(2, 8, 8) -> conv 3 -> act -> maxpool -> conv 4 -> act -> avgpool 2x2 -> flatten (block 4)
    -> Linear 5 -> act -> dropout -> Linear 3, activations in functional form. With `bn`:
    BatchNorm after the first conv (in front of the activation) and after the second
    activation (behind it)."""

    def __init__(self, act: str, bn: bool) -> None:
        super().__init__()
        self.act = ACTIVATIONS[act][1]
        self.bn = bn
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc1 = nn.Linear(4 * 2 * 2, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.act(self.bn1(self.conv1(x))), 2)
        x = F.adaptive_avg_pool2d(self.bn2(self.act(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        out: torch.Tensor = self.fc2(F.dropout(self.act(self.fc1(x)), 0.1, self.training))
        return out


@dataclass(frozen=True)
class Case:
    name: str
    arch: str  # "mlp" | "cnn"
    act: str
    bn: bool

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (6,) if self.arch == "mlp" else (2, 8, 8)

    def model(self, seed: int = 0) -> nn.Module:
        key = (self.name, seed)
        if key not in _MODELS:
            if self.arch == "mlp":
                _MODELS[key] = seeded(lambda: smooth_mlp(self.act, self.bn), seed)
            else:
                _MODELS[key] = seeded(lambda: SmoothCNN(self.act, self.bn), seed)
        return _MODELS[key]

    def spec(self) -> SymmetrySpec:
        if self.name not in _SPECS:
            gen = torch.Generator().manual_seed(7)
            x = torch.randn(2, *self.input_shape, generator=gen, dtype=torch.float64)
            _SPECS[self.name] = symmetry_spec(self.model(), x)
        return _SPECS[self.name]

    def inputs(self, n: int = 16, seed: int = 123) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, *self.input_shape, generator=gen, dtype=torch.float64)


_MODELS: dict[tuple[str, int], nn.Module] = {}
_SPECS: dict[str, SymmetrySpec] = {}

CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(f"{arch}_{act}_{'bn' if bn else 'plain'}", arch, act, bn)
        for arch in ("mlp", "cnn")
        for act in ACTIVATIONS
        for bn in (False, True)
    )
}
NAMES = list(CASES)

# (kind, member tensors, what it compensates into or which BatchNorm absorbs it)
EXPECTED_CELLS: dict[tuple[str, bool], set[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    ("mlp", False): set(),
    ("mlp", True): {
        ("absorbed", ("0.weight", "0.bias"), ("1",)),
        ("homogeneous", ("5.weight", "5.bias"), ("6.weight",)),
    },
    ("cnn", False): set(),
    ("cnn", True): {
        ("absorbed", ("conv1.weight", "conv1.bias"), ("bn1",)),
        ("homogeneous", ("bn2.weight", "bn2.bias"), ("fc1.weight",)),
    },
}


def _cell_tensors(spec: SymmetrySpec) -> set[str]:
    """Every tensor a cell, its compensation, its BatchNorm or a bias fold touches."""
    names = set()
    for cell in (*spec.cells, *((spec.output,) if spec.output is not None else ())):
        names |= {s.tensor for s in (*cell.members, *cell.compensate)}
        names |= {
            f"{bn}.{stat}" for bn in cell.batchnorm for stat in ("running_mean", "running_var")
        }
    for bias, bn in spec.bias_folds:
        names |= {bias, f"{bn}.running_mean"}
    return names


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("name", NAMES)
def test_spec_has_permutations_only_in_front_of_the_activation(name: str) -> None:
    case = CASES[name]
    spec = case.spec()
    assert len(spec.groups) == 3 if case.arch == "cnn" else len(spec.groups) == 2
    assert not any(g.odd for g in spec.groups)
    assert all(not g.stream for g in spec.groups)
    cells = {
        (
            c.kind,
            tuple(s.tensor for s in c.members),
            c.batchnorm or tuple(s.tensor for s in c.compensate),
        )
        for c in spec.cells
    }
    assert cells == EXPECTED_CELLS[(case.arch, case.bn)]
    assert spec.output is not None and spec.output.kind == "output"
    described = spec.describe()
    # groups without any cell: all of them without BatchNorm, else the CNN's fc1 alone
    without_cells = len(spec.groups) if not case.bn else (1 if case.arch == "cnn" else 0)
    assert described.count("permutations only") == without_cells
    # every unit is still permuted: its producer rows are a slot of its group
    first = "0.weight" if case.arch == "mlp" else "conv1.weight"
    assert any(s.tensor == first and s.axis == 0 for s in spec.groups[0].slots)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_scale_or_sign_of_a_unit_in_front_of_the_activation_changes_the_function(
    act: str,
) -> None:
    """Why the spec gives those units no cell and no flip: a positive scale (or a sign flip)
    of the units' incoming weights, compensated in the consumer's column as for ReLU (or
    tanh), changes the logits; so does a scale of a BatchNorm pair in front of it."""
    for bn, producer, consumer in ((False, "0", "2"), (True, "1", "3")):
        model = CASES[f"mlp_{act}_{'bn' if bn else 'plain'}"].model()
        x = CASES[f"mlp_{act}_plain"].inputs()
        before = logits(model, x)
        for factor in (2.0, -1.0):
            state = {k: v.clone() for k, v in model.state_dict().items()}
            state[f"{producer}.weight"] *= factor
            state[f"{producer}.bias"] *= factor
            state[f"{consumer}.weight"] /= factor
            moved = copy.deepcopy(model)
            moved.load_state_dict(state)
            assert float((logits(moved, x) - before).abs().max()) > 1e-4, (bn, factor)


# ---------------------------------------------------------------- invariance


@pytest.mark.parametrize("name", NAMES)
def test_random_symmetry_keeps_the_logits(name: str) -> None:
    case = CASES[name]
    model, spec, x = case.model(), case.spec(), case.inputs()
    before = logits(model, x)
    for seed in SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        assert set(transform.permutations) == {g.name for g in spec.groups}
        assert not transform.signs
        assert set(transform.scales) == {c.name for c in spec.cells}
        assert max_state_difference(moved.state_dict(), model.state_dict()) > 1e-3
        after = logits(moved, x)
        torch.testing.assert_close(after, transform.output_scale * before, rtol=1e-10, atol=1e-10)
        assert same_function(model, moved, x, rtol=1e-9, atol=1e-12, up_to_scale=True)


# ---------------------------------------------------------------- canonical form


@pytest.mark.parametrize("name", NAMES)
def test_canonical_form(name: str) -> None:
    """Function kept (1e-9), idempotent, recognized, equal on the scale orbit (1e-8),
    commuting with permutations, and the weights of units without scale freedom untouched."""
    case = CASES[name]
    model, spec, x = case.model(), case.spec(), case.inputs()
    before = logits(model, x)
    kept = canonicalize(model, spec=spec, output="keep")
    torch.testing.assert_close(logits(kept, x), before, rtol=1e-9, atol=1e-9)
    normalized = canonicalize(model, spec=spec)
    assert same_function(model, normalized, x, rtol=1e-9, atol=1e-12, up_to_scale=True)
    assert is_canonical(normalized, spec) and is_canonical(kept, spec)
    again = canonicalize(normalized, spec=spec)
    assert_states_close(again.state_dict(), normalized.state_dict(), atol=1e-12)
    # the Euclidean coordinates (no cell, no compensation, no BatchNorm, no fold) stay as
    # they are: exactly
    untouched = set(model.state_dict()) - _cell_tensors(spec)
    assert untouched
    for key in untouched:
        assert torch.equal(kept.state_dict()[key], model.state_dict()[key]), key
    target = normalized.state_dict()
    for seed in SEEDS:
        moved, _ = random_symmetry(model, seed=seed, permutations=False, spec=spec)
        assert max_state_difference(moved.state_dict(), model.state_dict()) > 1e-3
        assert_states_close(canonicalize(moved, spec=spec).state_dict(), target, atol=1e-8)
    moved, transform = random_symmetry(model, seed=3, spec=spec)
    permuted = apply_symmetry(
        normalized, SymmetryTransform(permutations=transform.permutations), spec
    )
    assert_states_close(
        canonicalize(moved, spec=spec).state_dict(), permuted.state_dict(), atol=1e-8
    )


# ---------------------------------------------------------------- planted transforms


@pytest.mark.parametrize("name", NAMES)
def test_align_recovers_planted_transform_every_seed(name: str) -> None:
    """align(g . m, m) is canonicalize(m), tensor by tensor, for 20 random g (permutations of
    every group, the allowed cell scales, output scale); the permutations found invert g's."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    target = canonicalize(model, spec=spec).state_dict()
    failures = []
    for seed in PLANTED_SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        assert any(
            not torch.equal(p, torch.arange(len(p))) for p in transform.permutations.values()
        )
        alignment = align(moved, model, spec=spec, seed=seed)
        if max_state_difference(alignment.model.state_dict(), target) > 1e-8:
            failures.append(seed)
            continue
        assert_undoes_planted_permutations(
            alignment.permutations,
            {g.name: transform.permutations[g.name] for g in spec.groups},
            seed,
        )
        assert alignment.total_after == pytest.approx(1.0, abs=1e-10)
        assert not alignment.signs
    assert not failures, f"{name}: planted transform not recovered for seeds {failures}"


@pytest.mark.parametrize(
    "name", ["mlp_gelu_plain", "mlp_silu_bn", "cnn_sigmoid_plain", "cnn_mish_bn", "mlp_elu_bn"]
)
def test_activation_alignment_recovers_planted_permutations(name: str) -> None:
    """The activation method: unit outputs of such groups correlated over data (and
    positions), matched by permutations alone."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    x = case.inputs(64, seed=5)
    data = (x, torch.zeros(64, dtype=torch.long))
    target = canonicalize(model, spec=spec).state_dict()
    for seed in (0, 1, 2):
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        alignment = align(moved, model, method="activation", data=data, spec=spec)
        assert_states_close(alignment.model.state_dict(), target, atol=1e-8)
        for group in spec.groups:
            assert torch.equal(
                alignment.permutations[group.name],
                torch.argsort(transform.permutations[group.name]),
            )


# ---------------------------------------------------------------- measures on the orbit


@pytest.mark.parametrize("name", NAMES)
def test_distances_are_unchanged_on_the_orbit(name: str) -> None:
    """Every kind: d(a, g . a) = 0, d(g . a, g' . b) = d(a, b), and two networks apart."""
    case = CASES[name]
    a, b, spec = case.model(0), case.model(1), case.spec()
    reference = distances(a, b, spec=spec)
    for kind in KINDS:
        assert reference[kind].value > 1e-3
    for seed in (1, 2):
        moved_a, _ = random_symmetry(a, seed=seed, spec=spec)
        moved_b, _ = random_symmetry(b, seed=seed + 10, spec=spec)
        to_itself = distances(a, moved_a, spec=spec)
        moved = distances(moved_a, moved_b, spec=spec)
        for kind in KINDS:
            assert to_itself[kind].value == pytest.approx(0.0, abs=1e-6), kind
            assert moved[kind].value == pytest.approx(reference[kind].value, abs=1e-8), kind
            assert moved[kind].cells == reference[kind].cells
    # the Euclidean coordinates enter no distance: the cells are the scalable units and the
    # output layer (a network without BatchNorm is measured on its output cell alone)
    sizes = {g.name: g.size for g in spec.groups}
    assert reference["geodesic"].cells == sum(sizes[str(c.group)] for c in spec.cells) + 1


@pytest.mark.parametrize("name", NAMES)
def test_geodesic_is_unchanged_on_the_orbit(name: str) -> None:
    """The geodesic from a to b (b aligned): slerp on the cells, a straight line on the
    Euclidean coordinates; the same state from any point of either orbit."""
    case = CASES[name]
    a, b, spec = case.model(0), case.model(1), case.spec()
    r = align(b, a, spec=spec)
    moved_a, _ = random_symmetry(a, seed=4, spec=spec)
    moved_b, _ = random_symmetry(b, seed=5, spec=spec)
    r_moved = align(moved_b, moved_a, spec=spec)
    # the moved reference is a permutation of a's canonical form: align it back onto a
    back = align(r_moved.reference, a, spec=spec)
    transform = back.transform()
    for t in (0.3, 0.5):
        point = slerp_state(r.reference.state_dict(), r.model.state_dict(), t, spec)
        moved_point = slerp_state(
            r_moved.reference.state_dict(), r_moved.model.state_dict(), t, spec
        )
        assert_states_close(transform_state(moved_point, spec, transform), point, atol=1e-8)


def _split(case: Case) -> Split:
    split = load(
        "synthetic",
        input_shape=case.input_shape,
        num_classes=3,
        train_samples=48,
        test_samples=48,
        seed=0,
    )
    return Split(
        TensorData(split.train.x.double(), split.train.y),
        TensorData(split.test.x.double(), split.test.y),
        split.meta,
    )


def _energy(model: nn.Module, split: Split, spec: SymmetrySpec, noise: Noise) -> object:
    return local_energy(
        model,
        split,
        sigmas=(0.0, 0.3, 1.0),
        samples=3,
        noise=noise,
        split="both",
        spec=spec,
        bn_samples=48,
        bn_batch_size=16,
        batch_size=48,
        seed=3,
        progress=False,
    ).raw


@pytest.mark.parametrize("noise", ["multiplicative", "spherical"])
@pytest.mark.parametrize("name", NAMES)
def test_local_energy_is_unchanged_on_the_orbit(name: str, noise: Noise) -> None:
    """Identical samples on the scale orbit; on the permutations, the perturbation is
    equivariant (permuted noise moves the permuted network to the permuted point), so with
    i.i.d. noise the local energy is the same in distribution; and the aligned orbit point
    gives identical samples."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    split = _split(case)
    energy = _energy(model, split, spec, noise)
    moved, _ = random_symmetry(model, seed=1, permutations=False, spec=spec)
    assert _energy(moved, split, spec, noise) == energy
    permuted, transform = random_symmetry(model, seed=2, spec=spec)
    aligned = align(permuted, model, spec=spec).model
    assert _energy(aligned, split, spec, noise) == energy
    # equivariance, exactly: P(perturb(theta, z)) = perturb(P theta, P z)
    center = canonicalize(model, spec=spec, output="keep").state_dict()
    names = [n for n, _ in model.named_parameters()]
    z = draw_noise(center, names, torch.Generator().manual_seed(0))
    perms = SymmetryTransform(permutations=transform.permutations)
    padded = {k: z.get(k, torch.zeros_like(v)) for k, v in center.items()}
    z_permuted = {k: v for k, v in transform_state(padded, spec, perms).items() if k in z}
    lhs = transform_state(perturbed_state(center, 0.4, z, kind=noise, spec=spec), spec, perms)
    rhs = perturbed_state(
        transform_state(center, spec, perms), 0.4, z_permuted, kind=noise, spec=spec
    )
    assert_states_close(lhs, rhs, atol=1e-12)


# ---------------------------------------------------------------- still unsupported


class Cube(nn.Module):
    """A custom element-wise activation (x^3 + x) that the derivation does not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(3) + x


class HardswishFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.hardswish(self.fc1(x)))
        return out


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (
            nn.Sequential(nn.Linear(6, 5), nn.Hardswish(), nn.Linear(5, 3)),
            r"module '1' \(Hardswish\)",
        ),
        (HardswishFunctional(), r"operation 'hardswish'"),
        (nn.Sequential(nn.Linear(6, 5), Cube(), nn.Linear(5, 3)), r"operation 'pow'"),
        (nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.PReLU(), nn.Linear(5, 3)), r"PReLU"),
    ],
    ids=["hardswish", "hardswish_functional", "custom", "prelu"],
)
def test_unsupported_activation_is_refused_by_name(model: nn.Module, pattern: str) -> None:
    with pytest.raises(UnsupportedModelError, match=pattern):
        symmetry_spec(model, torch.randn(2, 6))


class Smooth(nn.Module):
    """A custom smooth activation, taught to the derivation as 'elementwise'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(torch.exp(x)) * torch.sigmoid(x)


def test_a_registered_elementwise_module_gets_permutations_only() -> None:
    from toroid.symmetry import derive

    register_module_kind(Smooth, "elementwise")
    try:
        model = seeded(
            lambda: nn.Sequential(
                nn.Linear(6, 5), Smooth(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)
            ),
            0,
        )
        x = torch.randn(8, 6, dtype=torch.float64)
        spec = symmetry_spec(model, x[:2])
        # the Smooth units: no cell; the ReLU units: a homogeneous cell as always
        assert [(c.kind, c.members[0].tensor) for c in spec.cells] == [("homogeneous", "2.weight")]
        moved, transform = random_symmetry(model, seed=0, spec=spec)
        torch.testing.assert_close(
            logits(moved, x), transform.output_scale * logits(model, x), rtol=1e-10, atol=1e-10
        )
        target = canonicalize(model, spec=spec).state_dict()
        assert_states_close(align(moved, model, spec=spec).model.state_dict(), target)
    finally:
        derive._MODULE_KINDS.pop(Smooth, None)
