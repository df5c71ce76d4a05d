"""Symmetry layer, one pair: alignment. Planted transforms (a model moved by a random group
element is aligned back onto its canonical form in 20 of 20 seeds, for every model), the
activation method, similarity bookkeeping, the returned transform, determinism."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from tests.symmetry_models import (
    CASES,
    CONTINUOUS,
    assert_states_close,
    logits,
    max_state_difference,
    one_thread,
)
from toroid.errors import InvalidArgumentError
from toroid.models import mlp
from toroid.symmetry import (
    Alignment,
    align,
    apply_symmetry,
    canonicalize,
    is_canonical,
    random_symmetry,
    same_function,
)

PLANTED_SEEDS = range(20)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def inverse(perm: torch.Tensor) -> torch.Tensor:
    return torch.argsort(perm)


def data_for(name: str, n: int = 64, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    x = CASES[name].inputs(n, seed=seed)
    return x, torch.zeros(n, dtype=torch.long)


# ---------------------------------------------------------------- planted transforms


@pytest.mark.parametrize("name", CONTINUOUS)
def test_align_recovers_planted_transform_every_seed(name: str) -> None:
    """align(g . m, m) is canonicalize(m), tensor by tensor, for 20 random g (scales, signs,
    permutations of every group, output scale)."""
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    target = canonicalize(model, spec=spec).state_dict()
    failures = []
    for seed in PLANTED_SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        assert any(
            not torch.equal(p, torch.arange(len(p))) for p in transform.permutations.values()
        )
        alignment = align(moved, model, spec=spec, seed=seed)
        state = alignment.model.state_dict()
        if max_state_difference(state, target) > 1e-8:
            failures.append(seed)
            continue
        assert_states_close(state, target, atol=1e-8)
        for group in spec.groups:
            assert torch.equal(
                alignment.permutations[group.name],
                inverse(transform.permutations[group.name]),
            ), (seed, group.name)
        assert alignment.total_after == pytest.approx(1.0, abs=1e-10)
        assert all(v == pytest.approx(1.0, abs=1e-10) for v in alignment.similarity_after.values())
    assert not failures, f"{name}: planted transform not recovered for seeds {failures}"


def calibrated(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A copy whose BatchNorm running statistics are those of `x` (gamma and beta stay
    random): no unit is dead on `x`. A unit that is zero on every input has no correlation
    with anything, so activation matching may pair dead units arbitrarily (the function is
    kept, the weights are not recovered)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("name", ["mlp_bn", "lenet5", "tanh_bn", "tiny_resnet", "sign_fn_net"])
def test_activation_alignment_recovers_planted_permutations(name: str) -> None:
    case = CASES[name]
    data = data_for(name)
    model = calibrated(case.model(), data[0])
    spec = case.spec(model)
    target = canonicalize(model, spec=spec).state_dict()
    for seed in (0, 1, 2):
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        alignment = align(moved, model, method="activation", data=data, spec=spec)
        assert alignment.method == "activation"
        assert_states_close(alignment.model.state_dict(), target, atol=1e-8)
        for group in spec.groups:
            assert torch.equal(
                alignment.permutations[group.name], inverse(transform.permutations[group.name])
            )


# ---------------------------------------------------------------- independent pairs


def pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    case = CASES[name]
    return case.model(0), case.model(1)


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("mlp_bn", "weight"),
        ("mlp_bn", "activation"),
        ("lenet5", "weight"),
        ("lenet5", "activation"),
        ("tanh_bn", "weight"),
        ("tanh_plain", "activation"),
        ("tiny_resnet", "weight"),
        ("tiny_resnet", "activation"),
        ("leaky_hardtanh", "weight"),
        ("conv_flatten", "weight"),
    ],
)
def test_alignment_keeps_the_function_and_its_transform(name: str, method: str) -> None:
    """Two independently initialized models: the aligned model computes the function of
    the model (up to the output scale), it is canonicalize(model) moved by
    alignment.transform(), and the reference is canonicalize(reference)."""
    case = CASES[name]
    a, b = pair(name)
    spec = case.spec(a)
    x = case.inputs(32, seed=77)
    data = data_for(name) if method == "activation" else None
    alignment = align(b, a, method=method, data=data, spec=spec, seed=0)  # type: ignore[arg-type]
    assert isinstance(alignment, Alignment)
    canonical_b = canonicalize(b, spec=spec)
    # the alignment did something: some group is not the identity
    assert any(not torch.equal(p, torch.arange(len(p))) for p in alignment.permutations.values())
    assert max_state_difference(alignment.model.state_dict(), canonical_b.state_dict()) > 1e-3
    assert same_function(alignment.model, b, x, rtol=1e-9, atol=1e-12, up_to_scale=True)
    assert same_function(alignment.model, canonical_b, x, rtol=1e-9, atol=1e-12)
    assert not same_function(alignment.model, a, x, rtol=1e-3, atol=1e-6, up_to_scale=True)
    moved = apply_symmetry(canonical_b, alignment.transform(), spec)
    assert_states_close(moved.state_dict(), alignment.model.state_dict(), atol=1e-12)
    assert_states_close(
        alignment.reference.state_dict(), canonicalize(a, spec=spec).state_dict(), atol=1e-12
    )
    assert set(alignment.signs) == {g.name for g in spec.groups if g.odd}
    if alignment.signs:
        # sign flips are part of the transform: an odd group gets some -1 from a fresh pair
        assert any(bool((s < 0).any()) for s in alignment.signs.values())


@pytest.mark.parametrize(
    "name", ["mlp_bn", "mlp_plain", "tanh_bn", "odd_mlp", "lenet5", "tiny_resnet", "conv1d"]
)
def test_weight_alignment_increases_similarity(name: str) -> None:
    case = CASES[name]
    a, b = pair(name)
    spec = case.spec(a)
    alignment = align(b, a, spec=spec)
    assert alignment.total_after >= alignment.total_before
    assert alignment.total_after > alignment.total_before + 1e-3  # a fresh pair does improve
    assert set(alignment.similarity_before) == {g.name for g in spec.groups}
    assert set(alignment.similarity_after) == {g.name for g in spec.groups}
    assert 1 <= alignment.iterations <= 100
    # the reported totals are the cosine between the grouped tensors of the two models
    tensors = sorted({s.tensor for g in spec.groups for s in g.slots if s.match})
    ref, new = alignment.reference.state_dict(), alignment.model.state_dict()
    va = torch.cat([ref[t].reshape(-1) for t in tensors])
    vb = torch.cat([new[t].reshape(-1) for t in tensors])
    cosine = float(va @ vb / (va.norm() * vb.norm()))
    assert alignment.total_after == pytest.approx(cosine, abs=1e-10)
    vb0 = torch.cat([canonicalize(b, spec=spec).state_dict()[t].reshape(-1) for t in tensors])
    assert alignment.total_before == pytest.approx(
        float(va @ vb0 / (va.norm() * vb0.norm())), abs=1e-10
    )


def test_aligned_models_stay_canonical() -> None:
    """Permutations alone keep the canonical form (norms and signs are per unit)."""
    case = CASES["mlp_bn"]
    a, b = pair("mlp_bn")
    spec = case.spec(a)
    alignment = align(b, a, spec=spec)
    assert is_canonical(alignment.model, spec)
    assert is_canonical(alignment.reference, spec)


# ---------------------------------------------------------------- determinism, errors


@pytest.mark.parametrize("name", ["lenet5", "tiny_resnet", "tanh_bn"])
def test_align_is_deterministic(name: str) -> None:
    case = CASES[name]
    a, b = pair(name)
    spec = case.spec(a)
    first = align(b, a, spec=spec, seed=3)
    second = align(b, a, spec=spec, seed=3)
    assert first.permutations.keys() == second.permutations.keys()
    for group in first.permutations:
        assert torch.equal(first.permutations[group], second.permutations[group])
    for group in first.signs:
        assert torch.equal(first.signs[group], second.signs[group])
    assert first.iterations == second.iterations
    assert first.total_after == second.total_after
    assert_states_close(first.model.state_dict(), second.model.state_dict(), atol=0)


def test_align_rejects_bad_arguments() -> None:
    a, b = pair("mlp_bn")
    with pytest.raises(InvalidArgumentError, match="method"):
        align(b, a, method="magic")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="data"):
        align(b, a, method="activation")
    with pytest.raises(InvalidArgumentError, match="max_iter"):
        align(b, a, max_iter=0)
    other = mlp(12, [9, 8], 4).double().eval()  # same names, one hidden width differs
    with pytest.raises(InvalidArgumentError, match="architecture"):
        align(other, a)


def test_align_does_not_modify_its_inputs() -> None:
    a, b = pair("odd_mlp")
    spec = CASES["odd_mlp"].spec(a)
    sa = {k: v.clone() for k, v in a.state_dict().items()}
    sb = {k: v.clone() for k, v in b.state_dict().items()}
    x = CASES["odd_mlp"].inputs()
    before = logits(b, x)
    align(b, a, spec=spec)
    assert_states_close(a.state_dict(), sa, atol=0)
    assert_states_close(b.state_dict(), sb, atol=0)
    assert torch.equal(logits(b, x), before)
