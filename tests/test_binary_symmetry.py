"""Symmetries of binary networks: the spec, per-unit sign flips and permutations that keep
the function exactly, the canonical form (binary cells +-1, BatchNorm pairs normalized,
signs by rule), and alignment that undoes planted transforms exactly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from toroid.manifold import distance
from toroid.models import BinaryConv2d, BinaryLinear, build
from toroid.symmetry import (
    SymmetrySpec,
    SymmetryTransform,
    align,
    apply_symmetry,
    canonicalize,
    is_canonical,
    random_symmetry,
    spec_for,
    symmetry_spec,
)


def generic(model: nn.Module, seed: int) -> nn.Module:
    """The model in float64 and eval mode with random BatchNorm parameters and statistics,
    so that no BatchNorm output is exactly 0 (where sign(0) = +1 breaks the flip symmetry)
    and every unit's threshold decides its canonical sign."""
    gen = torch.Generator().manual_seed(1000 + seed)
    model = model.double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(n, generator=gen, dtype=torch.float64) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen, dtype=torch.float64))
                module.running_mean.copy_(3 * torch.randn(n, generator=gen, dtype=torch.float64))
                module.running_var.copy_(1 + 9 * torch.rand(n, generator=gen, dtype=torch.float64))
    return model.eval()


def binary_mlp(seed: int) -> nn.Module:
    config = {"name": "mlp", "in_features": 10, "widths": [9, 7], "num_classes": 4}
    return generic(build({**config, "binary": True}, seed=seed), seed)


def binary_lenet(seed: int) -> nn.Module:
    return generic(build({"name": "lenet5", "binary": True}, seed=seed), seed)


MODELS: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
    "mlp": (binary_mlp, (10,)),
    "lenet5": (binary_lenet, (1, 28, 28)),
}


def inputs(shape: tuple[int, ...], n: int = 32, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def binary_state(model: nn.Module, spec: SymmetrySpec) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {name: torch.where(state[name] >= 0, 1.0, -1.0) for name in spec.binary_tensors()}


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("name", list(MODELS))
def test_spec_of_binary_models(name: str) -> None:
    build_model, _ = MODELS[name]
    model = build_model(0)
    spec = spec_for(model)
    binary_modules = [
        n for n, m in model.named_modules() if isinstance(m, BinaryLinear | BinaryConv2d)
    ]
    assert spec.binary_tensors() == tuple(f"{n}.weight" for n in binary_modules)
    assert spec.output is not None and spec.output.kind == "binary"
    for group in spec.groups:
        assert group.odd
        kinds = sorted(c.kind for c in spec.cells if c.group == group.name)
        assert kinds == ["binary", "invariant"]  # no scale symmetry in the binary weights
        flipped = {s.tensor.rpartition(".")[2] for s in group.flip}
        assert {"running_mean", "bias"} <= flipped
        matched = [s.tensor for s in group.slots if s.match]
        # matched on the sign weights alone: the unit's row and its consumer's column
        assert len(matched) == 2 and all(t in spec.binary_tensors() for t in matched)


def test_a_binary_consumer_cannot_compensate_a_scale() -> None:
    """A ReLU unit feeding a binary layer: its scale would need compensation in the
    consumer's columns, whose signs alone count, so the BatchNorm pair gets no cell and
    canonical form keeps the function (scaling the columns instead would change it)."""
    model = nn.Sequential(
        nn.Linear(6, 5, bias=False),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        BinaryLinear(5, 4, bias=False),
        nn.BatchNorm1d(4),
        nn.Identity(),
        BinaryLinear(4, 3, bias=False),
    )
    model = generic(model, 0)
    model[0].weight.data.mul_(3.0)
    x = inputs((6,))
    spec = symmetry_spec(model, x[:2])
    first = spec.groups[0]
    assert sorted(c.kind for c in spec.cells if c.group == first.name) == ["absorbed"]
    canonical = canonicalize(model, spec=spec, output="keep")
    assert is_canonical(canonical, spec)
    torch.testing.assert_close(logits(canonical, x), logits(model, x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- function-preserving moves


@pytest.mark.parametrize("name", list(MODELS))
def test_sign_flip_of_any_hidden_unit_keeps_the_outputs(name: str) -> None:
    """Every unit of the MLP; the first, a middle and the last unit of each LeNet-5 layer."""
    build_model, shape = MODELS[name]
    model = build_model(1)
    spec = spec_for(model)
    x = inputs(shape, n=8 if name == "lenet5" else 32)
    before = logits(model, x)
    for group in spec.groups:
        every = name == "mlp"
        for unit in range(group.size) if every else (0, group.size // 2, group.size - 1):
            signs = torch.ones(group.size, dtype=torch.float64)
            signs[unit] = -1
            moved = apply_symmetry(model, SymmetryTransform(signs={group.name: signs}), spec)
            producer = group.slots[0].tensor
            assert not torch.equal(moved.state_dict()[producer], model.state_dict()[producer])
            assert torch.equal(logits(moved, x), before), (group.name, unit)


def test_flipping_the_weights_without_the_threshold_changes_the_outputs() -> None:
    """The negative control: negating a unit's incoming weights and its consumer's column,
    but not its BatchNorm running mean and beta, is not a symmetry."""
    model = binary_mlp(2)
    x = inputs((10,))
    moved = binary_mlp(2)
    with torch.no_grad():
        moved[1].weight[0].neg_()
        moved[4].weight[:, 0].neg_()
    assert not torch.equal(logits(moved, x), logits(model, x))


@pytest.mark.parametrize("name", list(MODELS))
def test_permutations_keep_the_outputs(name: str) -> None:
    build_model, shape = MODELS[name]
    model = build_model(3)
    spec = spec_for(model)
    gen = torch.Generator().manual_seed(0)
    perms = {g.name: torch.randperm(g.size, generator=gen) for g in spec.groups}
    moved = apply_symmetry(model, SymmetryTransform(permutations=perms), spec)
    x = inputs(shape, n=8)
    assert torch.equal(logits(moved, x), logits(model, x))
    assert any(
        not torch.equal(moved.state_dict()[t], model.state_dict()[t]) for t in spec.binary_tensors()
    )


# ---------------------------------------------------------------- canonical form


@pytest.mark.parametrize("name", list(MODELS))
def test_canonical_form_keeps_the_logits_and_binarizes(name: str) -> None:
    build_model, shape = MODELS[name]
    model = build_model(4)
    spec = spec_for(model)
    x = inputs(shape, n=8)
    assert not is_canonical(model, spec)
    for output in ("keep", "normalize"):
        canonical = canonicalize(model, spec=spec, output=output)  # type: ignore[arg-type]
        assert is_canonical(canonical, spec)
        # logits exactly: the output layer is binary, its BatchNorm untouched
        assert torch.equal(logits(canonical, x), logits(model, x))
        state = canonical.state_dict()
        assert all(bool((state[t].abs() == 1).all()) for t in spec.binary_tensors())
        again = canonicalize(canonical, spec=spec, output=output).state_dict()  # type: ignore[arg-type]
        for key, value in state.items():
            torch.testing.assert_close(again[key], value, rtol=0, atol=1e-14)


def test_canonical_form_is_the_same_on_the_whole_orbit() -> None:
    """Latent scales, BatchNorm-pair scales and sign flips drawn at random: one canonical
    form (no permutations: those are alignment's job)."""
    model = binary_mlp(5)
    spec = spec_for(model)
    target = canonicalize(model, spec=spec).state_dict()
    for seed in range(5):
        moved, transform = random_symmetry(model, seed=seed, spec=spec, permutations=False)
        assert any(bool((s < 0).any()) for s in transform.signs.values())
        form = canonicalize(moved, spec=spec).state_dict()
        for key, value in target.items():
            torch.testing.assert_close(form[key], value, rtol=0, atol=1e-12)


def test_units_whose_signs_sum_to_zero_take_their_sign_from_the_threshold() -> None:
    """An even fan-in lets a unit's +-1 row sum to 0 (and its sum of cubes too); the rule
    then reads the BatchNorm threshold (running mean + beta), which the flip negates."""
    config = {"name": "mlp", "in_features": 4, "widths": [3], "num_classes": 2, "binary": True}
    model = generic(build(config, seed=0), 0)
    rows = [[0.5, -0.5, 0.5, -0.5], [1.0, 1.0, -1.0, 1.0], [-0.2, 0.3, -0.4, 0.1]]
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(rows))
    spec = spec_for(model)
    (group,) = spec.groups
    target = canonicalize(model, spec=spec).state_dict()
    for unit in (0, 2):  # the two rows that sum to 0
        signs = torch.ones(3, dtype=torch.float64)
        signs[unit] = -1
        moved = apply_symmetry(model, SymmetryTransform(signs={group.name: signs}), spec)
        form = canonicalize(moved, spec=spec).state_dict()
        assert all(torch.allclose(form[k], target[k], rtol=0, atol=1e-12) for k in target)


# ---------------------------------------------------------------- alignment


def test_planted_permutations_and_sign_flips_are_recovered_exactly_in_20_of_20_seeds() -> None:
    recovered = 0
    for seed in range(20):
        model = binary_mlp(seed)
        spec = spec_for(model)
        moved, _ = random_symmetry(model, seed=100 + seed, spec=spec)
        result = align(moved, model, spec=spec)
        ours, theirs = binary_state(result.model, spec), binary_state(result.reference, spec)
        same = all(torch.equal(ours[t], theirs[t]) for t in spec.binary_tensors())
        value = distance(model, moved, kind="overlap", spec=spec).value
        recovered += same and value == 0.0 and result.total_after == pytest.approx(1.0)
    assert recovered == 20


def test_planted_transforms_of_binary_lenet5_are_recovered_exactly() -> None:
    model = binary_lenet(0)
    spec = spec_for(model)
    x = inputs((1, 28, 28), n=4)
    for seed in range(2):
        moved, _ = random_symmetry(model, seed=seed, spec=spec)
        assert torch.equal(logits(moved, x), logits(model, x))
        assert distance(model, moved, kind="overlap", spec=spec).value == 0.0
        geodesic = distance(model, moved, kind="geodesic", spec=spec, over="all").value
        assert geodesic < 1e-6  # the BatchNorm pairs too, up to float error
