"""Symmetry layer, normalization layers: LayerNorm, RMSNorm and GroupNorm.

Tiny float64 models (MLPs with LayerNorm at eps 0 and 1e-5, with and without affine
parameters, followed by ReLU or GELU; MLPs with RMSNorm; a small CNN with GroupNorm at eps 0
and 1e-5; a pre-LN residual MLP whose stream is read only through LayerNorms): the derived
spec, why each derived freedom is one (and each missing one is not), invariance of the
logits under `random_symmetry`, the canonical form, planted transforms recovered by both
alignment methods in 20 of 20 seeds, the structured (GroupNorm) assignment against brute
force, distances, the geodesic and local energy on the orbit, and refusals by name."""

from __future__ import annotations

import copy
import itertools
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
)
from toroid.data import Split, TensorData, load
from toroid.errors import UnsupportedModelError
from toroid.flatness import local_energy
from toroid.manifold import distances, slerp_state
from toroid.manifold.distance import KINDS
from toroid.manifold.perturb import Noise
from toroid.symmetry import (
    SymmetrySpec,
    SymmetryTransform,
    UnitGroup,
    align,
    apply_symmetry,
    canonicalize,
    is_canonical,
    random_symmetry,
    register_module_kind,
    symmetry_spec,
)
from toroid.symmetry.align import assign
from toroid.symmetry.transform import structured_randperm, transform_state

SEEDS = (0, 1, 2)
PLANTED_SEEDS = range(20)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


# ---------------------------------------------------------------- the models


def randomize_norms_(model: nn.Module, seed: int) -> nn.Module:
    """Random affine parameters for every LayerNorm/RMSNorm/GroupNorm (gamma mostly
    positive, some negative; beta random), so that a wrong permutation or compensation of
    them shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm | nn.RMSNorm | nn.GroupNorm):
                if module.weight is not None:
                    n = module.weight.numel()
                    gamma = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
                    flip = torch.rand(n, generator=gen) < 0.2
                    module.weight.copy_(torch.where(flip, -gamma, gamma).view_as(module.weight))
                bias = getattr(module, "bias", None)
                if bias is not None:
                    bias.copy_(0.5 * torch.randn(bias.shape, generator=gen, dtype=torch.float64))
    return model


def ln_mlp(eps: float, affine: bool, act: str) -> nn.Module:
    """6 -> Linear 7 -> LayerNorm -> act -> Linear 5 -> LayerNorm -> act -> Linear 3."""
    a = nn.ReLU if act == "relu" else nn.GELU
    return nn.Sequential(
        nn.Linear(6, 7),
        nn.LayerNorm(7, eps=eps, elementwise_affine=affine),
        a(),
        nn.Linear(7, 5),
        nn.Dropout(0.2),
        nn.LayerNorm(5, eps=eps, elementwise_affine=affine),
        a(),
        nn.Linear(5, 3),
    )


def rms_mlp(eps: float | None) -> nn.Module:
    """6 -> Linear 7 -> RMSNorm -> ReLU -> Linear 5 -> RMSNorm -> GELU -> Linear 3."""
    return nn.Sequential(
        nn.Linear(6, 7),
        nn.RMSNorm(7, eps=eps),
        nn.ReLU(),
        nn.Linear(7, 5),
        nn.RMSNorm(5, eps=eps),
        nn.GELU(),
        nn.Linear(5, 3),
    )


class GroupNormCNN(nn.Module):
    """(2, 8, 8) -> conv 6 -> GroupNorm(3) -> relu -> maxpool -> conv 4 -> GroupNorm(2) ->
    gelu -> avgpool 2x2 -> flatten (block 4) -> Linear 3."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.gn1 = nn.GroupNorm(3, 6, eps=eps)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.gn2 = nn.GroupNorm(2, 4, eps=eps)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.gn1(self.conv1(x))), 2)
        x = F.adaptive_avg_pool2d(F.gelu(self.gn2(self.conv2(x))), 2)
        out: torch.Tensor = self.fc(torch.flatten(x, 1))
        return out


class PreLNResidualMLP(nn.Module):
    """h = embed(x); h = h + fc2(gelu(fc1(ln1(h)))); h = h + fc4(relu(fc3(ln2(h))));
    logits = head(ln_f(h)): a stream of 6 features read only through LayerNorms."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 6)
        self.ln1 = nn.LayerNorm(6, eps=eps)
        self.fc1 = nn.Linear(6, 7)
        self.fc2 = nn.Linear(7, 6)
        self.ln2 = nn.LayerNorm(6, eps=eps)
        self.fc3 = nn.Linear(6, 4)
        self.fc4 = nn.Linear(4, 6)
        self.ln_f = nn.LayerNorm(6, eps=eps)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.fc2(F.gelu(self.fc1(self.ln1(h))))
        h = h + self.fc4(torch.relu(self.fc3(self.ln2(h))))
        out: torch.Tensor = self.head(self.ln_f(h))
        return out


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]

    def model(self, seed: int = 0) -> nn.Module:
        key = (self.name, seed)
        if key not in _MODELS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = self.build().double().eval()
            _MODELS[key] = randomize_norms_(model, seed + 1000)
        return _MODELS[key]

    def spec(self) -> SymmetrySpec:
        if self.name not in _SPECS:
            _SPECS[self.name] = symmetry_spec(self.model(), self.inputs(2, seed=7))
        return _SPECS[self.name]

    def inputs(self, n: int = 16, seed: int = 123) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, *self.input_shape, generator=gen, dtype=torch.float64)


_MODELS: dict[tuple[str, int], nn.Module] = {}
_SPECS: dict[str, SymmetrySpec] = {}


def _ln_case(eps: float, affine: bool, act: str) -> Case:
    name = f"ln_eps{eps:g}_{'affine' if affine else 'plain'}_{act}"
    return Case(name, lambda: ln_mlp(eps, affine, act), (6,))


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        *(
            _ln_case(eps, affine, act)
            for eps in (0.0, 1e-5)
            for affine in (True, False)
            for act in ("relu", "gelu")
        ),
        Case("rms_eps0", lambda: rms_mlp(0.0), (6,)),
        Case("rms_default", lambda: rms_mlp(None), (6,)),
        Case("gn_eps0", lambda: GroupNormCNN(0.0), (2, 8, 8)),
        Case("gn_eps1e-05", lambda: GroupNormCNN(1e-5), (2, 8, 8)),
        Case("preln_eps0", lambda: PreLNResidualMLP(0.0), (5,)),
        Case("preln_eps1e-05", lambda: PreLNResidualMLP(1e-5), (5,)),
    )
}
NAMES = list(CASES)


# What `describe()` says for each case (checked by hand against the mathematics in
# docs/symmetry.md, Normalization layers).
EXPECTED_DESCRIPTIONS: dict[str, str] = {
    'ln_eps0_affine_relu': (
        'group g0:0: 7 units (layer), 5 axes\n'
        '  cell invariant: 0.weight[0], 0.bias[0] (one cell per 7 units)\n'
        '  cell homogeneous: 1.weight[0], 1.bias[0]\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 5 axes\n'
        '  cell invariant: 3.weight[0], 3.bias[0] (one cell per 5 units)\n'
        '  cell homogeneous: 5.weight[0], 5.bias[0]\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'ln_eps0_affine_gelu': (
        'group g0:0: 7 units (layer), 5 axes\n'
        '  cell invariant: 0.weight[0], 0.bias[0] (one cell per 7 units)\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 5 axes\n'
        '  cell invariant: 3.weight[0], 3.bias[0] (one cell per 5 units)\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'ln_eps0_plain_relu': (
        'group g0:0: 7 units (layer), 3 axes\n'
        '  cell invariant: 0.weight[0], 0.bias[0] (one cell per 7 units)\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 3 axes\n'
        '  cell invariant: 3.weight[0], 3.bias[0] (one cell per 5 units)\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'ln_eps0_plain_gelu': (
        'group g0:0: 7 units (layer), 3 axes\n'
        '  cell invariant: 0.weight[0], 0.bias[0] (one cell per 7 units)\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 3 axes\n'
        '  cell invariant: 3.weight[0], 3.bias[0] (one cell per 5 units)\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'ln_eps1e-05_affine_relu': (
        'group g0:0: 7 units (layer), 5 axes\n'
        '  cell homogeneous: 1.weight[0], 1.bias[0]\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 5 axes\n'
        '  cell homogeneous: 5.weight[0], 5.bias[0]\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'ln_eps1e-05_affine_gelu': (
        'group g0:0: 7 units (layer), 5 axes\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 5 axes\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'ln_eps1e-05_plain_relu': (
        'group g0:0: 7 units (layer), 3 axes\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 3 axes\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'ln_eps1e-05_plain_gelu': (
        'group g0:0: 7 units (layer), 3 axes\n'
        '  translation: 0.weight[0], 0.bias[0] (per 7 units)\n'
        'group g1:3: 5 units (layer), 3 axes\n'
        '  translation: 3.weight[0], 3.bias[0] (per 5 units)\n'
        'output layer: 7.weight, 7.bias (one global scale)'
    ),
    'rms_eps0': (
        'group g0:0: 7 units (layer), 4 axes\n'
        '  cell invariant: 0.weight[0], 0.bias[0] (one cell per 7 units)\n'
        '  cell homogeneous: 1.weight[0]\n'
        'group g1:3: 5 units (layer), 4 axes\n'
        '  cell invariant: 3.weight[0], 3.bias[0] (one cell per 5 units)\n'
        'output layer: 6.weight, 6.bias (one global scale)'
    ),
    'rms_default': (
        'group g0:0: 7 units (layer), 4 axes\n'
        '  cell homogeneous: 1.weight[0]\n'
        'group g1:3: 5 units (layer, permutations only), 4 axes\n'
        'output layer: 6.weight, 6.bias (one global scale)'
    ),
    'gn_eps0': (
        'group g0:conv1: 6 units (layer, permutations within and of 3 blocks), 5 axes\n'
        '  cell invariant: conv1.weight[0], conv1.bias[0] (one cell per 2 units)\n'
        '  cell homogeneous: gn1.weight[0], gn1.bias[0]\n'
        '  translation: conv1.bias[0] (per 2 units)\n'
        'group g1:conv2: 4 units (layer, permutations within and of 2 blocks), 5 axes\n'
        '  cell invariant: conv2.weight[0], conv2.bias[0] (one cell per 2 units)\n'
        '  translation: conv2.bias[0] (per 2 units)\n'
        'output layer: fc.weight, fc.bias (one global scale)'
    ),
    'gn_eps1e-05': (
        'group g0:conv1: 6 units (layer, permutations within and of 3 blocks), 5 axes\n'
        '  cell homogeneous: gn1.weight[0], gn1.bias[0]\n'
        '  translation: conv1.bias[0] (per 2 units)\n'
        'group g1:conv2: 4 units (layer, permutations within and of 2 blocks), 5 axes\n'
        '  translation: conv2.bias[0] (per 2 units)\n'
        'output layer: fc.weight, fc.bias (one global scale)'
    ),
    'preln_eps0': (
        'group g0:embed: 6 units (residual stream), 15 axes\n'
        '  cell homogeneous: ln1.weight[0], ln1.bias[0]\n'
        '  cell homogeneous: ln2.weight[0], ln2.bias[0]\n'
        '  cell homogeneous: ln_f.weight[0], ln_f.bias[0]\n'
        '  cell invariant: embed.weight[0], embed.bias[0], fc2.weight[0], fc2.bias[0], '
        'fc4.weight[0], fc4.bias[0] (one cell per 6 units)\n'
        '  translation: embed.weight[0], embed.bias[0] (per 6 units)\n'
        '  translation: fc2.weight[0], fc2.bias[0] (per 6 units)\n'
        '  translation: fc4.weight[0], fc4.bias[0] (per 6 units)\n'
        'group g1:fc1: 7 units (layer, permutations only), 3 axes\n'
        'group g2:fc3: 4 units (layer), 3 axes\n'
        '  cell homogeneous: fc3.weight[0], fc3.bias[0]\n'
        'output layer: head.weight, head.bias (one global scale)'
    ),
    'preln_eps1e-05': (
        'group g0:embed: 6 units (residual stream), 15 axes\n'
        '  cell homogeneous: ln1.weight[0], ln1.bias[0]\n'
        '  cell homogeneous: ln2.weight[0], ln2.bias[0]\n'
        '  cell homogeneous: ln_f.weight[0], ln_f.bias[0]\n'
        '  translation: embed.weight[0], embed.bias[0] (per 6 units)\n'
        '  translation: fc2.weight[0], fc2.bias[0] (per 6 units)\n'
        '  translation: fc4.weight[0], fc4.bias[0] (per 6 units)\n'
        'group g1:fc1: 7 units (layer, permutations only), 3 axes\n'
        'group g2:fc3: 4 units (layer), 3 axes\n'
        '  cell homogeneous: fc3.weight[0], fc3.bias[0]\n'
        'output layer: head.weight, head.bias (one global scale)'
    ),
}  # fmt: skip


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _with(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    moved = copy.deepcopy(model)
    moved.load_state_dict(state)
    return moved


def _changes_logits(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    return float((logits(_with(model, state), x) - logits(model, x)).abs().max())


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("name", NAMES)
def test_spec_describes_the_norms_symmetries(name: str) -> None:
    spec = CASES[name].spec()
    assert spec.describe() == EXPECTED_DESCRIPTIONS[name]
    assert not any(g.odd for g in spec.groups)
    blocks = [g.blocks for g in spec.groups]
    assert blocks == ([3, 2] if name.startswith("gn") else [1] * len(spec.groups))


def test_spec_bit_identical_fields_for_models_without_norms() -> None:
    """The new fields keep their defaults where no norm is involved."""
    spec = CASES["preln_eps0"].spec()
    assert [c.span for c in spec.cells if c.kind != "invariant"] == [1] * 4
    assert spec.group("g2:fc3").blocks == 1
    plain = symmetry_spec(
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double(),
        torch.randn(2, 6, dtype=torch.float64),
    )
    assert plain.translations == () and all(c.span == 1 for c in plain.cells)
    assert all(g.blocks == 1 for g in plain.groups)


# ---------------------------------------------------------------- why: each claim checked


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_layernorm_translation_holds_for_any_eps_and_scale_only_at_eps_zero(eps: float) -> None:
    """W -> W + 1 v^T, b -> b + c 1 in front of a LayerNorm keeps the logits (1e-10) for any
    eps; the global scale (rows and bias times 3) keeps them at eps = 0 only; a scale of one
    unit, or a translation of part of the units, never."""
    model = CASES[f"ln_eps{eps:g}_affine_relu"].model()
    x = CASES["ln_eps0_affine_relu"].inputs()
    gen = torch.Generator().manual_seed(0)
    state = _state(model)
    state["0.weight"] += torch.randn(1, 6, generator=gen, dtype=torch.float64)
    state["0.bias"] += 0.7
    assert _changes_logits(model, state, x) < 1e-10
    scaled = _state(model)
    scaled["0.weight"] *= 3.0
    scaled["0.bias"] *= 3.0
    if eps == 0:
        assert _changes_logits(model, scaled, x) < 1e-10
    else:
        assert _changes_logits(model, scaled, x) > 1e-7
    one_unit = _state(model)
    one_unit["0.weight"][2] *= 3.0
    one_unit["0.bias"][2] *= 3.0
    assert _changes_logits(model, one_unit, x) > 1e-3
    part = _state(model)
    part["0.bias"][:3] += 0.7
    assert _changes_logits(model, part, x) > 1e-3


def test_rmsnorm_has_no_translation_and_scale_only_at_eps_zero() -> None:
    """(At torch's default eps, finfo(float64).eps, the scale changes the logits by about
    1e-16 relative: not measurable here, and still no symmetry; eps = 1e-4 shows it.)"""
    x = CASES["rms_eps0"].inputs()
    for eps in (0.0, 1e-4):
        model = Case(f"rms_{eps}", lambda e=eps: rms_mlp(e), (6,)).model()
        shifted = _state(model)
        shifted["0.bias"] += 0.7
        assert _changes_logits(model, shifted, x) > 1e-3
        scaled = _state(model)
        scaled["0.weight"] *= 3.0
        scaled["0.bias"] *= 3.0
        change = _changes_logits(model, scaled, x)
        assert change < 1e-10 if eps == 0 else change > 1e-8


def test_groupnorm_translations_are_per_group_bias_shifts_only() -> None:
    """Adding c_g to the conv bias of every channel of group g keeps the logits; adding one
    vector v to the conv rows of a group does not (conv(x, v) varies over positions, and
    GroupNorm removes one mean per group, not per position); nor does a bias shift of one
    channel alone. Per-group scale: at eps = 0 only."""
    x = CASES["gn_eps0"].inputs()
    for name in ("gn_eps0", "gn_eps1e-05"):
        model = CASES[name].model()
        shifted = _state(model)
        shifted["conv1.bias"] += torch.tensor([0.5, 0.5, -1.0, -1.0, 2.0, 2.0]).double()
        assert _changes_logits(model, shifted, x) < 1e-10
        rows = _state(model)
        v = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        rows["conv1.weight"][0:2] += v
        assert _changes_logits(model, rows, x) > 1e-3
        one = _state(model)
        one["conv1.bias"][0] += 0.5
        assert _changes_logits(model, one, x) > 1e-3
        group = _state(model)
        group["conv1.weight"][2:4] *= 3.0
        group["conv1.bias"][2:4] *= 3.0
        change = _changes_logits(model, group, x)
        assert change < 1e-10 if name == "gn_eps0" else change > 1e-9


def test_groupnorm_permutations_must_respect_the_groups() -> None:
    """Permuting within a group and whole groups keeps the logits; swapping two channels of
    different groups does not."""
    case = CASES["gn_eps1e-05"]
    model, spec, x = case.model(), case.spec(), case.inputs()
    before = logits(model, x)
    group = spec.groups[0]
    for perm, keeps in (([1, 0, 4, 5, 2, 3], True), ([2, 1, 0, 3, 4, 5], False)):
        moved = apply_symmetry(
            model, SymmetryTransform(permutations={group.name: torch.tensor(perm)}), spec
        )
        change = float((logits(moved, x) - before).abs().max())
        assert (change < 1e-10) if keeps else (change > 1e-3), perm


def test_stream_translation_of_each_writer_keeps_the_function() -> None:
    """In the pre-LN stream every writer's translation alone keeps the logits (the stream
    changes by a per-example constant that every LayerNorm removes); the global scale of all
    writers together keeps them at eps = 0 only, and that of one writer alone never."""
    for name in ("preln_eps0", "preln_eps1e-05"):
        model, x = CASES[name].model(), CASES[name].inputs()
        for writer in ("embed", "fc2", "fc4"):
            state = _state(model)
            state[f"{writer}.weight"] += torch.linspace(-1, 1, state[f"{writer}.weight"].shape[1])
            state[f"{writer}.bias"] += 0.3
            assert _changes_logits(model, state, x) < 1e-10, (name, writer)
        scaled = _state(model)
        for writer in ("embed", "fc2", "fc4"):
            scaled[f"{writer}.weight"] *= 2.5
            scaled[f"{writer}.bias"] *= 2.5
        change = _changes_logits(model, scaled, x)
        assert change < 1e-10 if name == "preln_eps0" else change > 1e-9
        alone = _state(model)
        alone["fc2.weight"] *= 2.5
        alone["fc2.bias"] *= 2.5
        assert _changes_logits(model, alone, x) > 1e-3


# ---------------------------------------------------------------- invariance


@pytest.mark.parametrize("name", NAMES)
def test_random_symmetry_keeps_the_logits(name: str) -> None:
    case = CASES[name]
    model, spec, x = case.model(), case.spec(), case.inputs()
    before = logits(model, x)
    for seed in SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        assert set(transform.permutations) == {g.name for g in spec.groups}
        assert set(transform.scales) == {c.name for c in spec.cells}
        assert set(transform.translations) == {t.name for t in spec.translations}
        assert max_state_difference(moved.state_dict(), model.state_dict()) > 1e-3
        torch.testing.assert_close(
            logits(moved, x), transform.output_scale * before, rtol=1e-10, atol=1e-10
        )


def test_random_symmetry_draws_every_structured_permutation_and_no_other() -> None:
    """On 6 units in 3 blocks: exactly the 3! 2^3 = 48 permutations within and of blocks."""
    group = UnitGroup("g", 6, (), blocks=3)
    gen = torch.Generator().manual_seed(0)
    drawn = {tuple(structured_randperm(group, generator=gen).tolist()) for _ in range(3000)}
    assert drawn == _structured_permutations(6, 3)


# ---------------------------------------------------------------- canonical form


@pytest.mark.parametrize("name", NAMES)
def test_canonical_form(name: str) -> None:
    """Function kept (1e-9), recognized, idempotent, centered, equal on the scale and
    translation orbit (1e-8), commuting with (structured) permutations."""
    case = CASES[name]
    model, spec, x = case.model(), case.spec(), case.inputs()
    before = logits(model, x)
    kept = canonicalize(model, spec=spec, output="keep")
    torch.testing.assert_close(logits(kept, x), before, rtol=1e-9, atol=1e-9)
    normalized = canonicalize(model, spec=spec)
    assert is_canonical(normalized, spec) and is_canonical(kept, spec)
    if spec.translations:  # the random model is not centered
        assert not is_canonical(model, spec)
    again = canonicalize(normalized, spec=spec)
    assert_states_close(again.state_dict(), normalized.state_dict(), atol=1e-12)
    sizes = {g.name: g.size for g in spec.groups}
    for family in spec.translations:
        for slot in family.members:
            rows = normalized.state_dict()[slot.tensor].movedim(slot.axis, 0)
            blocks = rows.reshape(sizes[family.group] // family.span, family.span, -1)
            assert float(blocks.mean(dim=1).abs().max()) < 1e-12
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


# ---------------------------------------------------------------- alignment


def _structured_permutations(size: int, blocks: int) -> set[tuple[int, ...]]:
    span = size // blocks
    out = set()
    for order in itertools.permutations(range(blocks)):
        for inner in itertools.product(itertools.permutations(range(span)), repeat=blocks):
            out.add(
                tuple(order[a] * span + inner[a][j] for a in range(blocks) for j in range(span))
            )
    return out


def _is_structured(perm: torch.Tensor, blocks: int) -> bool:
    span = len(perm) // blocks
    return all(
        len({int(p) // span for p in perm[a * span : (a + 1) * span]}) == 1 for a in range(blocks)
    )


@pytest.mark.parametrize(("size", "blocks"), [(6, 3), (6, 2), (4, 2), (5, 1)])
def test_structured_assignment_is_the_brute_force_optimum(size: int, blocks: int) -> None:
    allowed = _structured_permutations(size, blocks)
    gen = torch.Generator().manual_seed(size * 10 + blocks)
    for _ in range(20):
        score = torch.randn(size, size, generator=gen, dtype=torch.float64)
        perm = assign(score, blocks)
        assert tuple(perm.tolist()) in allowed
        value = float(score[torch.arange(size), perm].sum())
        best = max(sum(float(score[i, p[i]]) for i in range(size)) for p in allowed)
        assert value == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_align_recovers_planted_transform_every_seed(name: str) -> None:
    """align(g . m, m) is canonicalize(m), tensor by tensor, for 20 random g (structured
    permutations, cell scales, translations, output scale); the permutations invert g's."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    target = canonicalize(model, spec=spec).state_dict()
    failures = []
    for seed in PLANTED_SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
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
    assert not failures, f"{name}: planted transform not recovered for seeds {failures}"


@pytest.mark.parametrize("name", ["gn_eps0", "gn_eps1e-05", "preln_eps1e-05", "ln_eps0_plain_gelu"])
def test_activation_alignment_recovers_planted_transforms(name: str) -> None:
    case = CASES[name]
    model, spec = case.model(), case.spec()
    x = case.inputs(64, seed=5)
    data = (x, torch.zeros(64, dtype=torch.long))
    target = canonicalize(model, spec=spec).state_dict()
    for seed in SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        alignment = align(moved, model, method="activation", data=data, spec=spec)
        assert_states_close(alignment.model.state_dict(), target, atol=1e-8)
        for group in spec.groups:
            assert torch.equal(
                alignment.permutations[group.name],
                torch.argsort(transform.permutations[group.name]),
            )


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_alignment_of_two_networks_returns_structured_permutations(method: str) -> None:
    """Between independent networks (no planted answer), both methods, every start of the
    multi-start descent included, return only permutations within and of GroupNorm groups."""
    case = CASES["gn_eps1e-05"]
    spec = case.spec()
    x = case.inputs(64, seed=5)
    data = (x, torch.zeros(64, dtype=torch.long))
    for seed in range(4):
        a, b = case.model(seed), case.model(seed + 10)
        result = align(b, a, spec=spec, method=method, data=data, seed=seed, starts=6)
        for group in spec.groups:
            perm = result.permutations[group.name]
            assert sorted(perm.tolist()) == list(range(group.size))
            assert _is_structured(perm, group.blocks), (seed, group.name, perm)
        torch.testing.assert_close(
            logits(result.model, x), logits(canonicalize(b, spec=spec), x), rtol=1e-9, atol=1e-9
        )


# ---------------------------------------------------------------- measures on the orbit


@pytest.mark.parametrize("name", NAMES)
def test_distances_are_unchanged_on_the_orbit(name: str) -> None:
    """Every kind: d(a, g . a) = 0; d(g . a, g' . b) = d(a, b) on the scale and translation
    orbit (default alignment) and on the whole orbit once alignment reaches the same
    optimum (8 starts: weight matching is a search, and on rms_eps0 its 4 default starts end
    in a lower optimum from one orbit point); a multi-unit cell is one cell (one angle)."""
    case = CASES[name]
    a, b, spec = case.model(0), case.model(1), case.spec()
    reference = distances(a, b, spec=spec)
    for kind in KINDS:
        assert reference[kind].value > 1e-3
    r = align(b, a, spec=spec, starts=8)
    aligned = distances(r.reference, r.model, spec=spec, align=False)
    for seed in (1, 2):
        moved_a, _ = random_symmetry(a, seed=seed, spec=spec)
        moved_b, _ = random_symmetry(b, seed=seed + 10, spec=spec)
        to_itself = distances(a, moved_a, spec=spec)
        scaled_a, _ = random_symmetry(a, seed=seed, permutations=False, spec=spec)
        scaled_b, _ = random_symmetry(b, seed=seed + 10, permutations=False, spec=spec)
        scaled = distances(scaled_a, scaled_b, spec=spec)
        r_moved = align(moved_b, moved_a, spec=spec, starts=8)
        moved = distances(r_moved.reference, r_moved.model, spec=spec, align=False)
        for kind in KINDS:
            assert to_itself[kind].value == pytest.approx(0.0, abs=1e-6), kind
            assert scaled[kind].value == pytest.approx(reference[kind].value, abs=1e-8), kind
            assert moved[kind].value == pytest.approx(aligned[kind].value, abs=1e-8), kind
    sizes = {g.name: g.size for g in spec.groups}
    cells = sum(sizes[str(c.group)] // c.span for c in spec.cells) + 1
    assert reference["geodesic"].cells == cells


@pytest.mark.parametrize("name", NAMES)
def test_geodesic_is_unchanged_on_the_orbit(name: str) -> None:
    case = CASES[name]
    a, b, spec = case.model(0), case.model(1), case.spec()
    r = align(b, a, spec=spec)
    moved_a, _ = random_symmetry(a, seed=4, spec=spec)
    moved_b, _ = random_symmetry(b, seed=5, spec=spec)
    r_moved = align(moved_b, moved_a, spec=spec)
    back = align(r_moved.reference, a, spec=spec)
    transform = back.transform()
    for t in (0.3, 0.5):
        point = slerp_state(r.reference.state_dict(), r.model.state_dict(), t, spec)
        moved_point = slerp_state(
            r_moved.reference.state_dict(), r_moved.model.state_dict(), t, spec
        )
        assert_states_close(transform_state(moved_point, spec, transform), point, atol=1e-8)
        # the path stays canonical: unit cells, centered translations
        assert is_canonical(_with(a, point), spec)


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
        batch_size=48,
        seed=3,
        progress=False,
    ).raw


@pytest.mark.parametrize("noise", ["multiplicative", "spherical"])
@pytest.mark.parametrize("name", NAMES)
def test_local_energy_is_unchanged_on_the_orbit(name: str, noise: Noise) -> None:
    """Identical samples on the scale and translation orbit (the canonical form is measured)
    and at the aligned point of the whole orbit."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    split = _split(case)
    energy = _energy(model, split, spec, noise)
    moved, _ = random_symmetry(model, seed=1, permutations=False, spec=spec)
    assert _energy(moved, split, spec, noise) == energy
    permuted, _ = random_symmetry(model, seed=2, spec=spec)
    aligned = align(permuted, model, spec=spec).model
    assert _energy(aligned, split, spec, noise) == energy


# ---------------------------------------------------------------- refusals


class FunctionalNorm(nn.Module):
    def __init__(self, which: str) -> None:
        super().__init__()
        self.which = which
        self.fc1, self.fc2 = nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.which == "layer_norm":
            h = F.layer_norm(h, (4,))
        elif self.which == "group_norm":
            h = F.group_norm(h, 2)
        else:
            h = F.rms_norm(h, (4,))
        out: torch.Tensor = self.fc2(torch.relu(h))
        return out


class PostLN(nn.Module):
    """Two post-LN blocks: the second add writes the first LayerNorm's output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc1, self.ln1 = nn.Linear(6, 4), nn.Linear(4, 4), nn.LayerNorm(4)
        self.fc2, self.ln2, self.head = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.ln1(h + self.fc1(h))
        h = self.ln2(h + self.fc2(h))
        out: torch.Tensor = self.head(h)
        return out


class TwoGroupNorms(nn.Module):
    """A residual stream of 4 channels read through GroupNorms of 2 and of 4 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 1)
        self.gn_a, self.gn_b = nn.GroupNorm(2, 4), nn.GroupNorm(4, 4)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv0(x)
        h = h + self.conv1(self.gn_a(h))
        out: torch.Tensor = self.fc(torch.flatten(self.gn_b(h), 1))
        return out


class ReadThroughTwoNorms(nn.Module):
    """One conv read through two different GroupNorms."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.gn_a, self.gn_b = nn.GroupNorm(2, 4), nn.GroupNorm(2, 4)
        self.fc_a, self.fc_b = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        out: torch.Tensor = torch.flatten(self.fc_a(self.gn_a(h)) + self.fc_b(self.gn_b(h)), 1)
        return out


REFUSED = {
    "layernorm_two_axes": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.LayerNorm((4, 4)), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)
        ),
        (2, 6, 6),
        r"module '1' \(LayerNorm\).*\(4, 4\)",
    ),
    "layernorm_3d": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 3), nn.LayerNorm(4), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
        ),
        (2, 6),
        r"module '1' \(LayerNorm\).*3-D",
    ),
    "rmsnorm_3d": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 3), nn.RMSNorm(4), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
        ),
        (2, 6),
        r"module '1' \(RMSNorm\)",
    ),
    "groupnorm_flattened": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 2, 3), nn.Flatten(), nn.GroupNorm(2, 32), nn.Linear(32, 2)
        ),
        (2, 6, 6),
        r"module '2' \(GroupNorm\)",
    ),
    "functional_layer_norm": (
        lambda: FunctionalNorm("layer_norm"), (6,), r"'layer_norm'.*nn\.LayerNorm"
    ),
    "functional_group_norm": (lambda: FunctionalNorm("group_norm"), (6,), r"'group_norm'"),
    "functional_rms_norm": (lambda: FunctionalNorm("rms_norm"), (6,), r"'rms_norm'"),
    "post_ln": (PostLN, (6,), r"post-norm"),
    "two_group_counts": (TwoGroupNorms, (2, 5, 5), r"different numbers of groups \[2, 4\]"),
    "read_through_two_norms": (
        ReadThroughTwoNorms, (2, 5, 5), r"conv: .*different BatchNorms or normalization layers"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_norm_is_refused_by_name(case: str) -> None:
    build, shape, pattern = REFUSED[case]
    model = build().double().eval()
    with pytest.raises(UnsupportedModelError, match=pattern):
        symmetry_spec(model, torch.randn(2, *shape, dtype=torch.float64))


def test_norm_kind_cannot_be_registered() -> None:
    with pytest.raises(UnsupportedModelError, match="'norm'"):
        register_module_kind(nn.Identity, "norm")
