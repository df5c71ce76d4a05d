"""Symmetry layer, one model: the derived spec, canonical form, random group elements and
apply_symmetry, for every built-in model and the test-defined ones (tests/symmetry_models.py),
in float64 with random BatchNorm statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from tests.symmetry_models import (
    CASES,
    CONTINUOUS,
    assert_states_close,
    logits,
    max_state_difference,
    one_thread,
)
from toroid.errors import InvalidArgumentError, UnsupportedModelError
from toroid.models import mlp
from toroid.symmetry import (
    Slot,
    SymmetryTransform,
    align,
    apply_symmetry,
    canonicalize,
    is_canonical,
    random_symmetry,
    same_function,
    spec_for,
    symmetry_spec,
)

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def assert_logits_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-9) -> None:
    """Predictions identical and max |a - b| within `rel` of max |b|."""
    assert torch.equal(a.argmax(dim=1), b.argmax(dim=1))
    diff, scale = float((a - b).abs().max()), float(b.abs().max())
    assert diff <= rel * scale, f"max difference {diff:.3e} vs {rel:.0e} * {scale:.3e}"


# ---------------------------------------------------------------- the derived spec

# name: (group sizes, number of stream groups, number of sign-symmetric groups, cell kinds)
EXPECTED = {
    "mlp_bn": ([9, 7], 0, 0, {"absorbed": 2, "homogeneous": 2}),
    "mlp_plain": ([9, 7], 0, 0, {"homogeneous": 2}),
    "tanh_bn": ([9, 7], 0, 2, {"absorbed": 2}),
    "tanh_plain": ([9, 7], 0, 2, {}),
    "lenet5": ([6, 16, 120, 84], 0, 0, {"absorbed": 4, "homogeneous": 4}),
    "vgg11": ([8, 16, 32, 32, 64, 64, 64, 64], 0, 0, {"absorbed": 8, "homogeneous": 8}),
    "resnet20": (
        [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64],
        3,
        0,
        {"absorbed": 21, "homogeneous": 9, "stream": 3},
    ),
    "odd_mlp": ([7, 5, 3], 0, 0, {"absorbed": 2, "homogeneous": 3}),
    "tiny_resnet": ([4, 4, 4, 4, 6, 6, 6], 2, 0, {"absorbed": 12, "homogeneous": 5, "stream": 2}),
    "conv_flatten": ([3, 5, 6], 0, 0, {"absorbed": 2, "homogeneous": 3}),
    "conv1d": ([4, 6], 0, 0, {"absorbed": 1, "homogeneous": 2}),
    "leaky_hardtanh": ([7, 5, 4], 0, 2, {"absorbed": 1, "homogeneous": 1}),
    "sign_fn_net": ([8, 5], 0, 2, {"absorbed": 1}),
}


@pytest.mark.parametrize("name", CONTINUOUS)
def test_spec_groups_and_cells(name: str) -> None:
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    sizes, streams, odd, kinds = EXPECTED[name]
    assert [g.size for g in spec.groups] == sizes
    assert sum(g.stream for g in spec.groups) == streams
    assert sum(g.odd for g in spec.groups) == odd
    assert dict(Counter(c.kind for c in spec.cells)) == kinds
    assert spec.output is not None and spec.output.kind == "output"
    state = model.state_dict()
    for group in spec.groups:
        for slot in group.slots:
            shape = state[slot.tensor].shape
            assert shape[slot.axis] == group.size * slot.block, (group.name, slot)
    for cell in spec.cells:
        assert cell.group in {g.name for g in spec.groups}
        if cell.kind == "absorbed":
            assert cell.batchnorm and not cell.compensate
        else:
            assert cell.compensate and not cell.batchnorm
    described = spec.describe()
    assert all(g.name in described for g in spec.groups)
    assert "output layer" in described


def test_resnet20_spec_streams_and_blocks() -> None:
    model = CASES["resnet20"].model()
    spec = spec_for(model)
    streams = [g for g in spec.groups if g.stream]
    inner = [g for g in spec.groups if not g.stream]
    assert [g.size for g in streams] == [16, 32, 64]
    assert len(inner) == 9
    assert all(g.slots[0].tensor.endswith("conv1.weight") for g in inner)
    assert spec.output is not None
    assert {s.tensor for s in spec.output.members} == {"fc.weight", "fc.bias"}
    # the first stream: the stem and every stage-0 block writes it, every stage-0 block and
    # the first stage-1 block (conv1 and projection shortcut) reads it
    first = streams[0]
    tensors = {s.tensor for s in first.slots}
    for b in range(3):
        assert f"stages.0.{b}.conv2.weight" in tensors
        assert f"stages.0.{b}.bn2.running_var" in tensors
        assert f"stages.0.{b}.conv1.weight" in tensors
    assert Slot("stages.1.0.conv1.weight", 1) in first.slots
    assert Slot("stages.1.0.shortcut.0.weight", 1) in first.slots
    assert Slot("fc.weight", 1) in streams[2].slots
    (stream_cell,) = [c for c in spec.cells if c.group == first.name and c.kind == "stream"]
    assert Slot("bn1.weight", 0) in stream_cell.members
    assert Slot("stages.0.2.bn2.bias", 0) in stream_cell.members


def test_tiny_resnet_stream_spans_stem_and_three_blocks() -> None:
    case = CASES["tiny_resnet"]
    spec = case.spec(case.model())
    first, second = (g for g in spec.groups if g.stream)
    writers = {s.tensor for s in first.slots if s.axis == 0 and s.tensor.endswith("weight")}
    assert {"stem.weight", "blocks.0.conv2.weight", "blocks.1.conv2.weight"} <= writers
    assert "blocks.2.conv2.weight" in writers
    assert Slot("blocks.3.shortcut.0.weight", 1) in first.slots
    assert "blocks.3.shortcut.0.weight" in {s.tensor for s in second.slots if s.axis == 0}
    # x.view(x.size(0), -1) after a 2x2 map: each channel owns 4 classifier columns
    assert Slot("fc.weight", 1, 4) in second.slots


@pytest.mark.parametrize(
    ("name", "group", "slot"),
    [
        ("lenet5", 1, Slot("9.weight", 1, 25)),
        ("conv_flatten", 1, Slot("fc1.weight", 1, 9)),
        ("conv1d", 1, Slot("fc.weight", 1, 8)),
        ("vgg11", 7, Slot("31.weight", 1, 1)),
    ],
)
def test_flatten_consumer_slot_block(name: str, group: int, slot: Slot) -> None:
    case = CASES[name]
    spec = case.spec(case.model())
    assert slot in spec.groups[group].slots


def test_bias_folds_and_sign_slots() -> None:
    odd = CASES["odd_mlp"]
    spec = odd.spec(odd.model())
    assert set(spec.bias_folds) == {("fc1.bias", "bn1"), ("fc3.bias", "bn3")}
    assert spec.bn_eps["bn1"] == pytest.approx(0.05)
    tanh = spec_for(CASES["tanh_bn"].model())
    first = tanh.groups[0]
    assert Slot("2.running_mean", 0, match=False) in first.flip
    assert Slot("2.bias", 0) in first.flip
    assert Slot("2.weight", 0) not in first.flip  # gamma stays
    assert Slot("2.running_var", 0, match=False) not in first.flip
    assert Slot("4.weight", 1) in first.flip


def test_spec_for_needs_a_config() -> None:
    case = CASES["odd_mlp"]
    with pytest.raises(UnsupportedModelError, match="symmetry_spec"):
        spec_for(case.model())


# ---------------------------------------------------------------- canonical form


@pytest.mark.parametrize("name", CONTINUOUS)
def test_canonicalize_keeps_the_function(name: str) -> None:
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    x = case.inputs()
    before = logits(model, x)
    kept = canonicalize(model, spec=spec, output="keep")
    assert max_state_difference(kept.state_dict(), model.state_dict()) > 1e-3
    assert_logits_close(logits(kept, x), before)
    normalized = canonicalize(model, spec=spec)
    assert same_function(model, normalized, x, rtol=1e-9, atol=1e-12, up_to_scale=True)
    assert not same_function(model, normalized, x, rtol=1e-9, atol=1e-12)
    out = spec.output
    assert out is not None
    norm2 = sum(float(normalized.state_dict()[s.tensor].pow(2).sum()) for s in out.members)
    assert norm2 == pytest.approx(1.0, rel=1e-12)
    assert torch.equal(logits(model, x), before), "canonicalize must not touch its input"


@pytest.mark.parametrize("name", CONTINUOUS)
def test_canonical_form_is_idempotent_and_recognized(name: str) -> None:
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    assert not is_canonical(model, spec)
    canonical = canonicalize(model, spec=spec)
    assert is_canonical(canonical, spec)
    assert is_canonical(canonicalize(model, spec=spec, output="keep"), spec)
    again = canonicalize(canonical, spec=spec)
    assert_states_close(again.state_dict(), canonical.state_dict(), atol=1e-12)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_canonical_form_removes_scales_and_signs(name: str) -> None:
    """canonicalize(random_symmetry(m, permutations=False)) == canonicalize(m)."""
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    reference = canonicalize(model, spec=spec).state_dict()
    for seed in SEEDS:
        moved, transform = random_symmetry(model, seed=seed, permutations=False, spec=spec)
        assert not transform.permutations
        assert max_state_difference(moved.state_dict(), model.state_dict()) > 1e-3
        assert_states_close(canonicalize(moved, spec=spec).state_dict(), reference, atol=1e-8)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_canonical_form_keep_mode_carries_the_output_scale(name: str) -> None:
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    moved, transform = random_symmetry(model, seed=5, permutations=False, spec=spec)
    assert transform.output_scale != pytest.approx(1.0)
    a = canonicalize(moved, spec=spec, output="keep").state_dict()
    b = canonicalize(model, spec=spec, output="keep").state_dict()
    assert spec.output is not None
    output_tensors = {s.tensor for s in spec.output.members}
    for key in output_tensors:
        # float32 rounding of the applied output scale (test_output_scale_is_applied_in_float64)
        torch.testing.assert_close(
            a.pop(key), b.pop(key) * transform.output_scale, rtol=1e-9, atol=0
        )
    assert_states_close(a, b, atol=1e-8)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_canonical_form_commutes_with_permutations(name: str) -> None:
    """canonicalize(g . m) is canonicalize(m) with g's permutations applied."""
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    moved, transform = random_symmetry(model, seed=3, spec=spec)
    permuted = apply_symmetry(
        canonicalize(model, spec=spec),
        SymmetryTransform(permutations=transform.permutations),
        spec,
    )
    assert_states_close(
        canonicalize(moved, spec=spec).state_dict(), permuted.state_dict(), atol=1e-8
    )


def test_canonicalize_rejects_a_bad_output_mode() -> None:
    model = CASES["mlp_bn"].model()
    with pytest.raises(InvalidArgumentError, match="output"):
        canonicalize(model, output="scale")  # type: ignore[arg-type]


# ---------------------------------------------------------------- random group elements


@pytest.mark.parametrize("name", CONTINUOUS)
def test_random_symmetry_keeps_the_function(name: str) -> None:
    """Invariance: every group element (scales, signs, permutations) keeps the eval-mode
    function, the logits multiplied by the recorded output scale."""
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    x = case.inputs()
    before = logits(model, x)
    for seed in SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        assert set(transform.permutations) == {g.name for g in spec.groups}
        assert set(transform.signs) == {g.name for g in spec.groups if g.odd}
        assert set(transform.scales) == {c.name for c in spec.cells}
        assert max_state_difference(moved.state_dict(), model.state_dict()) > 1e-3
        after = logits(moved, x)
        # one positive factor maps the logits exactly; it is the recorded output scale up to
        # float32 rounding (the exact check is test_output_scale_is_applied_in_float64)
        factor = float((after * before).sum() / before.pow(2).sum())
        assert factor == pytest.approx(transform.output_scale, rel=1e-9)
        assert_logits_close(after, factor * before)


def test_output_scale_is_applied_in_float64() -> None:
    model = CASES["mlp_bn"].model()
    spec = CASES["mlp_bn"].spec()
    moved = apply_symmetry(model, SymmetryTransform(output_scale=1 / 3), spec).state_dict()
    old = model.state_dict()
    for key in ("7.weight", "7.bias"):
        torch.testing.assert_close(moved[key], old[key] / 3, rtol=1e-15, atol=0)
    x = CASES["mlp_bn"].inputs()
    for seed in SEEDS:
        moved_model, transform = random_symmetry(model, seed=seed, spec=spec)
        assert_logits_close(logits(moved_model, x), transform.output_scale * logits(model, x))


def test_random_symmetry_is_seeded() -> None:
    model = CASES["odd_mlp"].model()
    spec = CASES["odd_mlp"].spec(model)
    a, ta = random_symmetry(model, seed=11, spec=spec)
    b, tb = random_symmetry(model, seed=11, spec=spec)
    c, _ = random_symmetry(model, seed=12, spec=spec)
    assert_states_close(a.state_dict(), b.state_dict(), atol=0)
    assert max_state_difference(a.state_dict(), c.state_dict()) > 1e-3
    assert ta.output_scale == tb.output_scale
    for name in ta.permutations:
        assert torch.equal(ta.permutations[name], tb.permutations[name])


def test_random_symmetry_scale_range() -> None:
    model = CASES["mlp_bn"].model()
    _, transform = random_symmetry(model, seed=0, scale_range=(0.5, 2.0))
    for factors in transform.scales.values():
        assert bool((factors >= 0.5).all()) and bool((factors <= 2.0).all())
    assert 0.5 <= transform.output_scale <= 2.0
    with pytest.raises(InvalidArgumentError, match="scale_range"):
        random_symmetry(model, seed=0, scale_range=(0.0, 2.0))


@pytest.mark.parametrize("name", CONTINUOUS)
def test_apply_symmetry_reproduces_random_symmetry(name: str) -> None:
    """A transform written out by hand (fresh tensors holding the drawn numbers) applied
    with apply_symmetry gives random_symmetry's model: the transform records everything."""
    case = CASES[name]
    model = case.model()
    spec = case.spec(model)
    moved, t = random_symmetry(model, seed=4, spec=spec)
    by_hand = SymmetryTransform(
        scales={k: torch.tensor(v.tolist(), dtype=torch.float64) for k, v in t.scales.items()},
        signs={k: torch.tensor(v.tolist(), dtype=torch.float64) for k, v in t.signs.items()},
        permutations={k: torch.tensor(v.tolist()) for k, v in t.permutations.items()},
        output_scale=float(t.output_scale),
    )
    assert_states_close(
        apply_symmetry(model, by_hand, spec).state_dict(), moved.state_dict(), atol=0
    )


def test_apply_symmetry_by_hand_on_bn_mlp() -> None:
    """mlp(12, [9, 7], 4) with BN: a hand-made transform against explicit tensor algebra."""
    model = CASES["mlp_bn"].model()
    spec = spec_for(model)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    eps = spec.bn_eps
    cells = {(c.group, c.kind): c.name for c in spec.cells}
    g0, g1 = (g.name for g in spec.groups)
    gen = torch.Generator().manual_seed(99)
    a0, h0 = (0.2 + 3 * torch.rand(9, generator=gen, dtype=torch.float64) for _ in range(2))
    a1, h1 = (0.2 + 3 * torch.rand(7, generator=gen, dtype=torch.float64) for _ in range(2))
    p0, p1 = torch.randperm(9, generator=gen), torch.randperm(7, generator=gen)
    transform = SymmetryTransform(
        scales={
            cells[(g0, "absorbed")]: a0,
            cells[(g0, "homogeneous")]: h0,
            cells[(g1, "absorbed")]: a1,
            cells[(g1, "homogeneous")]: h1,
        },
        permutations={g0: p0, g1: p1},
        output_scale=2.5,
    )
    new = apply_symmetry(model, transform, spec).state_dict()

    # layers: 1 Linear(12, 9) 2 BN 3 ReLU 4 Linear(9, 7) 5 BN 6 ReLU 7 Linear(7, 4)
    expected = dict(old)
    for lin, bn, a, h, nxt in (("1", "2", a0, h0, "4"), ("4", "5", a1, h1, "7")):
        expected[f"{lin}.weight"] = expected[f"{lin}.weight"] * a[:, None]
        expected[f"{bn}.running_mean"] = old[f"{bn}.running_mean"] * a
        expected[f"{bn}.running_var"] = (old[f"{bn}.running_var"] + eps[bn]) * a * a - eps[bn]
        expected[f"{bn}.weight"] = old[f"{bn}.weight"] * h
        expected[f"{bn}.bias"] = old[f"{bn}.bias"] * h
        expected[f"{nxt}.weight"] = old[f"{nxt}.weight"] / h[None, :]
    expected["7.weight"] = expected["7.weight"] * 2.5
    expected["7.bias"] = old["7.bias"] * 2.5
    for prefix, perm in (("1", p0), ("2", p0), ("4", p1), ("5", p1)):
        for key in expected:
            if key.startswith(prefix + ".") and expected[key].dim() >= 1:
                expected[key] = expected[key][perm]
    expected["4.weight"] = expected["4.weight"][:, p0]
    expected["7.weight"] = expected["7.weight"][:, p1]
    assert_states_close(new, expected, atol=1e-13)
    x = CASES["mlp_bn"].inputs()
    assert_logits_close(logits(apply_symmetry(model, transform, spec), x), 2.5 * logits(model, x))


def test_apply_symmetry_signs_by_hand_on_tanh_mlp() -> None:
    """Signs are given in the original unit order and applied before the permutation."""
    model = CASES["tanh_plain"].model()
    spec = spec_for(model)
    g0, g1 = (g.name for g in spec.groups)
    s0 = torch.tensor([1, -1, -1, 1, 1, -1, 1, -1, 1], dtype=torch.float64)
    p0 = torch.tensor([3, 0, 8, 1, 2, 7, 6, 5, 4])
    transform = SymmetryTransform(signs={g0: s0}, permutations={g0: p0})
    new = apply_symmetry(model, transform, spec).state_dict()
    old = model.state_dict()
    # layers: 0 Flatten 1 Linear(12, 9) 2 Tanh 3 Linear(9, 7) 4 Tanh 5 Linear(7, 4)
    torch.testing.assert_close(new["1.weight"], (old["1.weight"] * s0[:, None])[p0])
    torch.testing.assert_close(new["1.bias"], (old["1.bias"] * s0)[p0])
    torch.testing.assert_close(new["3.weight"], (old["3.weight"] * s0[None, :])[:, p0])
    assert torch.equal(new["3.bias"], old["3.bias"])
    x = CASES["tanh_plain"].inputs()
    assert_logits_close(logits(apply_symmetry(model, transform, spec), x), logits(model, x))
    with pytest.raises(InvalidArgumentError):
        apply_symmetry(CASES["mlp_bn"].model(), SymmetryTransform(signs={g1: torch.ones(7)}), None)


def test_apply_symmetry_rejects_unknown_names() -> None:
    model = CASES["mlp_bn"].model()
    with pytest.raises(InvalidArgumentError, match="nope"):
        apply_symmetry(model, SymmetryTransform(scales={"nope": torch.ones(9)}))
    with pytest.raises(InvalidArgumentError, match="nope"):
        apply_symmetry(model, SymmetryTransform(permutations={"nope": torch.arange(9)}))


# ---------------------------------------------------------------- the Sign module


def test_sign_module_network_keeps_outputs() -> None:
    """For Sign only outputs and predictions are compared (piecewise-constant units)."""
    case = CASES["sign_net"]
    model = case.model()
    spec = case.spec(model)
    assert [g.size for g in spec.groups] == [8, 5]
    assert all(g.odd for g in spec.groups)
    x = case.inputs(64)
    before = logits(model, x)
    kept = canonicalize(model, spec=spec, output="keep")
    assert torch.equal(logits(kept, x).argmax(1), before.argmax(1))
    torch.testing.assert_close(logits(kept, x), before, rtol=1e-9, atol=1e-9)
    target = canonicalize(model, spec=spec).state_dict()
    for seed in SEEDS:
        moved, t = random_symmetry(model, seed=seed, spec=spec)
        assert torch.equal(logits(moved, x).argmax(1), before.argmax(1))
        torch.testing.assert_close(logits(moved, x), t.output_scale * before, rtol=1e-9, atol=1e-9)
        assert_states_close(align(moved, model, spec=spec).model.state_dict(), target)


def test_layer_reading_and_writing_one_stream_is_refused() -> None:
    """x + relu(l1(x)): the stream's scale sits on both sides of l1, so there is no
    separable cell; the derivation refuses rather than give a non-unique form."""
    case = CASES["residual_mlp"]
    with pytest.raises(UnsupportedModelError, match="reads and writes one stream"):
        case.spec(case.model())


def test_residual_branch_without_batchnorm_is_refused() -> None:
    class Branch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Linear(4, 6)
            self.l1 = torch.nn.Linear(6, 5)
            self.l2 = torch.nn.Linear(5, 6)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.stem(x))
            h = h + self.l2(torch.relu(self.l1(h)))
            return self.head(torch.relu(h))

    with pytest.raises(UnsupportedModelError, match="residual branch without BatchNorm"):
        symmetry_spec(Branch(), torch.randn(2, 4))


def test_module_called_twice_is_refused() -> None:
    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc0, self.fc, self.out = (
                torch.nn.Linear(4, 5),
                torch.nn.Linear(5, 5),
                torch.nn.Linear(5, 2),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.fc0(x))
            return self.out(torch.tanh(self.fc(torch.tanh(self.fc(h)))))

    with pytest.raises(UnsupportedModelError, match=r"'fc'.*called more than once"):
        symmetry_spec(Shared(), torch.randn(2, 4))


def test_linear_on_a_3d_tensor_is_refused() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 3, 3),
        torch.nn.ReLU(),
        torch.nn.Linear(3, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(9, 4),
    )
    with pytest.raises(UnsupportedModelError, match="last axis of a 3-D tensor"):
        symmetry_spec(model, torch.randn(4, 2, 5))


def test_zero_cell_has_a_unique_canonical_form() -> None:
    model = mlp(6, [5], 3, batchnorm=False).double().eval()
    with torch.no_grad():
        model[1].weight[2].zero_()
        model[1].bias[2].zero_()
    spec = spec_for(model)
    target = canonicalize(model, spec=spec)
    x = torch.randn(20, 6, dtype=torch.float64)
    assert same_function(target, model, x, rtol=1e-9, atol=1e-12, up_to_scale=True)
    for seed in SEEDS:
        moved, _ = random_symmetry(model, seed=seed, permutations=False, spec=spec)
        assert_states_close(canonicalize(moved, spec=spec).state_dict(), target.state_dict())


def test_functional_dropout_is_supported() -> None:
    class Drop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 3, 3), torch.nn.Linear(3 * 4 * 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.dropout2d(torch.relu(self.conv(x)), 0.5, self.training)
            return self.fc(torch.flatten(h, 1))

    spec = symmetry_spec(Drop(), torch.randn(2, 1, 6, 6))
    assert [g.size for g in spec.groups] == [3]
    assert Slot("fc.weight", 1, 16) in spec.groups[0].slots
