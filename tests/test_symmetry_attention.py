"""Symmetry layer, token tensors and multi-head self-attention (`torch.nn.MultiheadAttention`).

The per-head symmetries checked by hand against a slow attention written out head by head
(float64): head permutations, GL(d) on the query-key and on the value-output circuit, the
free key bias, the value bias moved into the output bias. Then, for tiny token classifiers
(attention with and without biases, batch first or sequence first, pooled by mean or by
the first token, with and without a scalable output space) and a token MLP: the derived
spec, logits under `random_symmetry`, the canonical factorization (function kept,
idempotent, equal on the orbit, commuting with permutations), planted transforms recovered
by `align` in 20 of 20 seeds, every distance kind, the geodesic and local energy on the
orbit; and the refusal of the attention options and token operations not supported."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.symmetry_models import (
    AttentionClassifier,
    TokenMLP,
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
from toroid.manifold.perturb import Noise
from toroid.symmetry import (
    AttentionHeads,
    HeadMaps,
    Slot,
    SymmetrySpec,
    SymmetryTransform,
    align,
    apply_symmetry,
    canonicalize,
    is_canonical,
    random_symmetry,
    same_function,
    symmetry_spec,
)
from toroid.symmetry.attention import circuits, move_heads_, random_invertible
from toroid.symmetry.slots import permute_units, scale_units, unit_rows
from toroid.symmetry.transform import transform_state

SEEDS = (0, 1, 2)
PLANTED_SEEDS = range(20)
TOKENS, FEATURES = 4, 5


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


# ---------------------------------------------------------------- the models


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]

    def model(self, seed: int = 0) -> nn.Module:
        key = (self.name, seed)
        if key not in _MODELS:
            _MODELS[key] = seeded(self.build, seed)
        return _MODELS[key]

    def spec(self) -> SymmetrySpec:
        if self.name not in _SPECS:
            _SPECS[self.name] = symmetry_spec(self.model(), self.inputs(2, seed=7))
        return _SPECS[self.name]

    def inputs(self, n: int = 16, seed: int = 123) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, TOKENS, FEATURES, generator=gen, dtype=torch.float64)


_MODELS: dict[tuple[str, int], nn.Module] = {}
_SPECS: dict[str, SymmetrySpec] = {}

CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("token_mlp", TokenMLP),
        Case("mha", AttentionClassifier),
        Case("mha_nobias_gelu", lambda: AttentionClassifier(bias=False, act="gelu")),
        Case(
            "mha_seq_first_token",
            lambda: AttentionClassifier(batch_first=False, act="gelu", pool="first", heads=2),
        ),
        Case("mha_seq_first_nobias", lambda: AttentionClassifier(batch_first=False, bias=False)),
        Case(
            "mha_direct_gelu",
            lambda: AttentionClassifier(mix=False, act="gelu", embed_relu=True, width=8, heads=4),
        ),
    )
}
NAMES = list(CASES)
ATTENTION = [n for n in NAMES if n != "token_mlp"]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, msg: str = ""
) -> None:
    """Element-wise |actual - expected| <= atol + rtol |expected| (torch.testing's rule;
    its first call imports torch.distributed, tens of seconds on a loaded machine)."""
    assert actual.shape == expected.shape, msg
    bound = atol + rtol * expected.abs()
    excess = float(((actual - expected).abs() - bound).max())
    assert excess <= 0, f"{msg} exceeds the tolerance by {excess:.3e}"


def attention_of(spec: SymmetrySpec) -> AttentionHeads:
    (att,) = spec.attention
    return att


# ---------------------------------------------------------------- the symmetries by hand


def attention_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention of (batch, tokens, E) `x` written out head by head (no fused kernel)."""
    w = state["in_proj_weight"]
    e = w.shape[1]
    d = e // heads
    b = state.get("in_proj_bias", torch.zeros(3 * e, dtype=w.dtype))
    out = []
    for h in range(heads):
        rows = [slice(k * e + h * d, k * e + (h + 1) * d) for k in range(3)]
        q, k, v = (x @ w[r].T + b[r] for r in rows)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
        out.append(weights @ v)
    bias_o = state.get("out_proj.bias", torch.zeros(e, dtype=w.dtype))
    return torch.cat(out, dim=-1) @ state["out_proj.weight"].T + bias_o


def _attention(bias: bool, heads: int = 3, e: int = 6, seed: int = 0) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    att = nn.MultiheadAttention(e, heads, bias=bias, batch_first=True).double().eval()
    with torch.no_grad():  # random biases (the init zeros would hide a wrong bias rule)
        if bias:
            att.in_proj_bias.normal_()
            att.out_proj.bias.normal_()
    return att


def _run(
    att: nn.MultiheadAttention, state: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    moved = copy.deepcopy(att)
    moved.load_state_dict(state)
    with torch.no_grad():
        out: torch.Tensor = moved(x, x, x, need_weights=False)[0]
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_each_attention_symmetry_keeps_the_output_by_hand(bias: bool) -> None:
    """Every symmetry on its own, applied head by head with explicit slicing: the module's
    output and the slow attention agree, and each move keeps them (1e-10)."""
    att, x = _attention(bias), torch.randn(5, 4, 6, dtype=torch.float64)
    state = {k: v.clone() for k, v in att.state_dict().items()}
    reference = _run(att, state, x)
    assert_close(attention_by_hand(state, x, 3), reference, rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    e, d, heads = 6, 2, 3

    def rows(kind: int, h: int) -> slice:
        return slice(kind * e + h * d, kind * e + (h + 1) * d)

    moves: dict[str, dict[str, torch.Tensor]] = {}
    # a permutation of the heads: their Q, K, V rows (and biases) and output columns
    perm = torch.tensor([2, 0, 1])
    s = {k: v.clone() for k, v in state.items()}
    for h in range(heads):
        for kind in range(3):
            s["in_proj_weight"][rows(kind, h)] = state["in_proj_weight"][rows(kind, int(perm[h]))]
            if bias:
                s["in_proj_bias"][rows(kind, h)] = state["in_proj_bias"][rows(kind, int(perm[h]))]
        p = int(perm[h])
        s["out_proj.weight"][:, h * d : (h + 1) * d] = state["out_proj.weight"][
            :, p * d : (p + 1) * d
        ]
    moves["head permutation"] = s
    # GL(d) per head on the query-key circuit
    s = {k: v.clone() for k, v in state.items()}
    for h in range(heads):
        a = torch.randn(d, d, generator=gen, dtype=torch.float64) + 2 * torch.eye(d)
        s["in_proj_weight"][rows(0, h)] = a.T @ state["in_proj_weight"][rows(0, h)]
        s["in_proj_weight"][rows(1, h)] = torch.linalg.inv(a) @ state["in_proj_weight"][rows(1, h)]
        if bias:
            s["in_proj_bias"][rows(0, h)] = a.T @ state["in_proj_bias"][rows(0, h)]
    moves["query-key GL"] = s
    # GL(d) per head on the value-output circuit
    s = {k: v.clone() for k, v in state.items()}
    for h in range(heads):
        b = torch.randn(d, d, generator=gen, dtype=torch.float64) + 2 * torch.eye(d)
        s["in_proj_weight"][rows(2, h)] = b @ state["in_proj_weight"][rows(2, h)]
        if bias:
            s["in_proj_bias"][rows(2, h)] = b @ state["in_proj_bias"][rows(2, h)]
        columns = state["out_proj.weight"][:, h * d : (h + 1) * d]
        s["out_proj.weight"][:, h * d : (h + 1) * d] = columns @ torch.linalg.inv(b)
    moves["value-output GL"] = s
    if bias:
        s = {k: v.clone() for k, v in state.items()}
        s["in_proj_bias"][e : 2 * e] += torch.randn(e, generator=gen, dtype=torch.float64)
        moves["key bias"] = s
        s = {k: v.clone() for k, v in state.items()}
        shift = torch.randn(e, generator=gen, dtype=torch.float64)
        s["in_proj_bias"][2 * e :] += shift
        s["out_proj.bias"] -= state["out_proj.weight"] @ shift
        moves["value bias"] = s
    for name, moved in moves.items():
        assert max_state_difference(moved, state) > 0.1, name
        assert_close(_run(att, moved, x), reference, rtol=0, atol=1e-10, msg=name)
        assert_close(attention_by_hand(moved, x, 3), reference, rtol=0, atol=1e-10)
    # and the query-key map is not a symmetry with A in place of A^T (a test that can fail)
    wrong = {k: v.clone() for k, v in state.items()}
    a = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    wrong["in_proj_weight"][rows(0, 0)] = a @ state["in_proj_weight"][rows(0, 0)]
    wrong["in_proj_weight"][rows(1, 0)] = torch.linalg.inv(a) @ state["in_proj_weight"][rows(1, 0)]
    assert float((_run(att, wrong, x) - reference).abs().max()) > 1e-4


def test_move_heads_matches_the_hand_written_maps() -> None:
    """`move_heads_` against the per-head formulas written out with explicit slicing."""
    att = _attention(True, heads=2, e=6, seed=3)
    spec_att = AttentionHeads(
        "", "heads", 2, 3, "in_proj_weight", "out_proj.weight", "in_proj_bias", "out_proj.bias"
    )
    state = {k: v.clone() for k, v in att.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    a, b = random_invertible(2, 3, gen), random_invertible(2, 3, gen)
    dk, dv = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen)
    moved = dict(state)
    move_heads_(moved, spec_att, query_key=a, value_output=b, key_bias=dk, value_bias=dv.double())
    w, bias = state["in_proj_weight"], state["in_proj_bias"]
    wo = state["out_proj.weight"]
    expected_w, expected_b = w.clone(), bias.clone()
    expected_wo = wo.clone()
    for h in range(2):
        q, k, v = (slice(j * 6 + h * 3, j * 6 + (h + 1) * 3) for j in range(3))
        a_inv, b_inv = torch.linalg.inv(a[h]), torch.linalg.inv(b[h])
        expected_w[q], expected_w[k], expected_w[v] = a[h].T @ w[q], a_inv @ w[k], b[h] @ w[v]
        expected_b[q], expected_b[k], expected_b[v] = (
            a[h].T @ bias[q],
            a_inv @ bias[k],
            b[h] @ bias[v],
        )
        expected_wo[:, h * 3 : (h + 1) * 3] = wo[:, h * 3 : (h + 1) * 3] @ b_inv
    expected_b[6:12] += dk
    expected_b[12:] += dv.double()
    assert_close(moved["in_proj_weight"], expected_w, rtol=0, atol=1e-12)
    assert_close(moved["in_proj_bias"], expected_b, rtol=0, atol=1e-12)
    assert_close(moved["out_proj.weight"], expected_wo, rtol=0, atol=1e-12)
    expected_bo = state["out_proj.bias"] - expected_wo @ dv.double()
    assert_close(moved["out_proj.bias"], expected_bo, rtol=0, atol=1e-12)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    assert_close(_run(att, moved, x), _run(att, state, x), rtol=0, atol=1e-10)


def test_random_invertible_is_well_conditioned() -> None:
    m = random_invertible(50, 3, torch.Generator().manual_seed(0))
    cond = torch.linalg.cond(m)
    assert bool((cond < 9 + 1e-9).all()) and float(cond.max()) > 2


# ---------------------------------------------------------------- slots over a sub-range


def test_slot_ranges_against_a_loop() -> None:
    """unit_rows, scale_units and permute_units on a sub-range of an axis, against index
    loops; outside the range nothing moves."""
    gen = torch.Generator().manual_seed(0)
    tensor = torch.randn(4, 18, generator=gen, dtype=torch.float64)
    slot = Slot("t", 1, 2, start=6, stop=12)  # 3 units of 2 columns at 6..11
    rows = unit_rows(tensor, slot, 3)
    for i in range(3):
        assert torch.equal(rows[i], torch.cat([tensor[:, 6 + 2 * i], tensor[:, 7 + 2 * i]]))
    factors = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)
    scaled = scale_units(tensor, slot, factors)
    perm = torch.tensor([1, 2, 0])
    permuted = permute_units(tensor, slot, perm)
    for col in range(18):
        if 6 <= col < 12:
            unit = (col - 6) // 2
            assert torch.equal(scaled[:, col], tensor[:, col] * factors[unit])
            source = 6 + 2 * int(perm[unit]) + (col - 6) % 2
            assert torch.equal(permuted[:, col], tensor[:, source])
        else:
            assert torch.equal(scaled[:, col], tensor[:, col])
            assert torch.equal(permuted[:, col], tensor[:, col])
    whole = Slot("t", 1, 6)
    assert torch.equal(unit_rows(tensor, whole, 3), tensor.movedim(1, 0).reshape(3, -1))


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("name", ATTENTION)
def test_spec_of_attention(name: str) -> None:
    case = CASES[name]
    spec, model = case.spec(), case.model()
    att = attention_of(spec)
    module = model.attn
    assert isinstance(module, nn.MultiheadAttention)
    assert (att.heads, att.head_dim) == (module.num_heads, module.head_dim)
    assert (att.in_bias is None) == (module.in_proj_bias is None)
    names = [g.name for g in spec.groups]
    assert names.index("heads:attn") == names.index("g0:embed") + 1
    heads = spec.group("heads:attn")
    assert heads.size == module.num_heads and not heads.odd and not heads.activation_nodes
    e, d = module.embed_dim, module.head_dim
    assert Slot("attn.in_proj_weight", 0, d, start=e, stop=2 * e) in heads.slots
    assert Slot("attn.out_proj.weight", 1, d) in heads.slots
    assert len(heads.slots) == (7 if att.in_bias else 4)
    # the input space: read by the packed projection's columns; the output space: produced
    # by the output projection's rows
    assert Slot("attn.in_proj_weight", 1, 1) in spec.group("g0:embed").slots
    out_group = next(g for g in spec.groups if g.name.endswith("attn.out_proj"))
    assert Slot("attn.out_proj.weight", 0, 1) in out_group.slots
    cells = {c.name.split(":", 1)[1] for c in spec.cells}
    assert "embed:homogeneous" in cells  # compensated in the packed projection's columns
    direct = name == "mha_direct_gelu"
    assert (any("attn.out_proj" in c for c in cells)) == (not direct)
    assert "attention heads" in spec.describe()
    # the out-projection cell comes after the embedding's cell (its norm reads the circuits)
    order = [c.name for c in spec.cells]
    if not direct:
        assert order.index("g0:embed:homogeneous") < order.index(
            next(n for n in order if "attn.out_proj" in n)
        )


def test_spec_of_token_mlp() -> None:
    case = CASES["token_mlp"]
    spec = case.spec()
    assert [g.name for g in spec.groups] == ["g0:fc1", "g1:fc2"]
    assert [c.kind for c in spec.cells] == ["homogeneous"]
    assert spec.groups[0].channel_last == ("relu",)  # fc2 reads relu(fc1(x)), per token
    assert spec.groups[1].channel_last == ()  # read after the mean over tokens
    assert not spec.attention


# ---------------------------------------------------------------- invariance


@pytest.mark.parametrize("name", NAMES)
def test_random_symmetry_keeps_the_logits(name: str) -> None:
    case = CASES[name]
    model, spec, x = case.model(), case.spec(), case.inputs()
    before = logits(model, x)
    for seed in SEEDS:
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        assert set(transform.permutations) == {g.name for g in spec.groups}
        assert set(transform.heads) == {a.module for a in spec.attention}
        assert max_state_difference(moved.state_dict(), model.state_dict()) > 1e-2
        assert_close(logits(moved, x), transform.output_scale * before, rtol=1e-10, atol=1e-10)
        assert same_function(model, moved, x, rtol=1e-9, atol=1e-12, up_to_scale=True)


# ---------------------------------------------------------------- canonical form


@pytest.mark.parametrize("name", NAMES)
def test_canonical_form(name: str) -> None:
    """Function kept (1e-9), recognized, idempotent, equal on the orbit of scales, per-head
    maps and bias shifts (1e-8), commuting with permutations of channels and heads."""
    case = CASES[name]
    model, spec, x = case.model(), case.spec(), case.inputs()
    before = logits(model, x)
    kept = canonicalize(model, spec=spec, output="keep")
    assert_close(logits(kept, x), before, rtol=1e-9, atol=1e-9)
    normalized = canonicalize(model, spec=spec)
    assert same_function(model, normalized, x, rtol=1e-9, atol=1e-12, up_to_scale=True)
    assert is_canonical(normalized, spec) and is_canonical(kept, spec)
    assert spec.attention == () or not is_canonical(model, spec)
    again = canonicalize(normalized, spec=spec)
    assert_states_close(again.state_dict(), normalized.state_dict(), atol=1e-12)
    target = normalized.state_dict()
    for seed in SEEDS:
        moved, _ = random_symmetry(model, seed=seed, permutations=False, spec=spec)
        assert max_state_difference(moved.state_dict(), model.state_dict()) > 1e-2
        assert_states_close(canonicalize(moved, spec=spec).state_dict(), target, atol=1e-8)
    moved, transform = random_symmetry(model, seed=3, spec=spec)
    permuted = apply_symmetry(
        normalized, SymmetryTransform(permutations=transform.permutations), spec
    )
    assert_states_close(
        canonicalize(moved, spec=spec).state_dict(), permuted.state_dict(), atol=1e-8
    )


@pytest.mark.parametrize("name", ATTENTION)
def test_canonical_factors(name: str) -> None:
    """The canonical factors: biases folded (b_K = b_V = 0), W_V,h with orthonormal rows,
    W_O,h with orthogonal columns, [W_Q,h | b_Q,h] and W_K,h balanced (equal row norms),
    the circuits of the canonical network those of the network with its cells normalized,
    and the sign rule (each pair's left vector sums to > 0)."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    att = attention_of(spec)
    state = canonicalize(model, spec=spec, output="keep").state_dict()
    e, d, heads = att.embed_dim, att.head_dim, att.heads
    w = state[att.in_proj].reshape(3, heads, d, e)
    wo = state[att.out_proj].reshape(e, heads, d)
    if att.in_bias is not None:
        assert float(state[att.in_bias][e:].abs().max()) == 0.0
        query = torch.cat([w[0], state[att.in_bias][:e].reshape(heads, d, 1)], dim=2)
    else:
        query = w[0]
    eye = torch.eye(d, dtype=torch.float64)
    for h in range(heads):
        assert_close(w[2, h] @ w[2, h].T, eye, rtol=0, atol=1e-12)
        gram = wo[:, h].T @ wo[:, h]
        assert_close(gram, torch.diag(torch.diagonal(gram)), rtol=0, atol=1e-12)
        assert bool((torch.diagonal(gram)[:-1] >= torch.diagonal(gram)[1:]).all())
        assert_close(query[h].norm(dim=1), w[1, h].norm(dim=1), rtol=1e-10, atol=0)
        assert bool((wo[:, h].sum(0) > 0).all())  # U's columns sum to > 0
    # the circuits are what the function depends on: a moved copy has the same ones
    moved, _ = random_symmetry(model, seed=0, permutations=False, spec=spec)
    moved_state = canonicalize(moved, spec=spec, output="keep").state_dict()
    for mine, theirs in zip(circuits(state, att), circuits(moved_state, att), strict=True):
        assert_close(mine, theirs, rtol=0, atol=1e-9)


def test_rank_deficient_heads_have_a_unique_form() -> None:
    """A head whose value-output circuit has rank 1 < d (a zero column of W_O,h) and a head
    that outputs nothing (W_O,h = 0): the form is still equal on the orbit (1e-8)."""
    case = CASES["mha"]
    spec = case.spec()
    model = copy.deepcopy(case.model())
    out_proj = model.get_submodule("attn.out_proj")
    assert isinstance(out_proj, nn.Linear)
    with torch.no_grad():
        out_proj.weight[:, 0] = 0.0  # head 0: rank 1
        out_proj.weight[:, 4:6] = 0.0  # head 2: no output
    target = canonicalize(model, spec=spec).state_dict()
    x = case.inputs()
    kept = canonicalize(model, spec=spec, output="keep")
    assert_close(logits(kept, x), logits(model, x), rtol=1e-9, atol=1e-9)
    for seed in SEEDS:
        moved, _ = random_symmetry(model, seed=seed, permutations=False, spec=spec)
        assert_states_close(canonicalize(moved, spec=spec).state_dict(), target, atol=1e-8)
    w = target["attn.in_proj_weight"].reshape(3, 3, 2, 6)
    assert float(w[2, 0, 1].abs().max()) == 0.0 and float(w[2, 2].abs().max()) == 0.0


def test_is_canonical_detects_unfactored_heads() -> None:
    case = CASES["mha"]
    model, spec = case.model(), case.spec()
    att = attention_of(spec)
    canonical = canonicalize(model, spec=spec, output="keep")
    maps = HeadMaps(
        random_invertible(att.heads, att.head_dim, torch.Generator().manual_seed(0)),
        torch.eye(att.head_dim, dtype=torch.float64).expand(att.heads, -1, -1).clone(),
    )
    moved = apply_symmetry(canonical, SymmetryTransform(heads={"attn": maps}), spec)
    assert is_canonical(canonical, spec) and not is_canonical(moved, spec)
    shifted = {k: v.clone() for k, v in canonical.state_dict().items()}
    shifted["attn.in_proj_bias"][6:12] += 0.5  # a key bias: not folded
    assert not is_canonical(_with(canonical, shifted), spec)


def _with(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    copied = copy.deepcopy(model)
    copied.load_state_dict(state)
    return copied


# ---------------------------------------------------------------- planted transforms


@pytest.mark.parametrize("name", NAMES)
def test_align_recovers_planted_transform_every_seed(name: str) -> None:
    """align(g . m, m) is canonicalize(m), tensor by tensor (1e-8), for 20 random g (random
    permutations of channels and heads, random invertible A and B per head, bias shifts,
    cell scales, output scale); the permutations found invert g's."""
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
            alignment.permutations, dict(transform.permutations), seed
        )
        assert alignment.total_after == pytest.approx(1.0, abs=1e-10)
    assert not failures, f"{name}: planted transform not recovered for seeds {failures}"
    # heads were really permuted in some of the seeds
    if spec.attention:
        moved_heads = [
            random_symmetry(model, seed=s, spec=spec)[1].permutations["heads:attn"]
            for s in range(5)
        ]
        assert any(not torch.equal(p, torch.arange(len(p))) for p in moved_heads)


@pytest.mark.parametrize("name", ["mha", "mha_seq_first_token", "token_mlp"])
def test_activation_alignment_recovers_planted_transform(name: str) -> None:
    """Channels matched on activation correlations (over examples and tokens), heads then
    matched on their canonical factors."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    x = case.inputs(32, seed=5)
    data = (x, torch.zeros(32, dtype=torch.long))
    target = canonicalize(model, spec=spec).state_dict()
    for seed in (0, 1, 2):
        moved, transform = random_symmetry(model, seed=seed, spec=spec)
        alignment = align(moved, model, method="activation", data=data, spec=spec)
        assert_states_close(alignment.model.state_dict(), target, atol=1e-8)
        assert_undoes_planted_permutations(
            alignment.permutations, dict(transform.permutations), seed
        )


# ---------------------------------------------------------------- measures on the orbit


@pytest.mark.parametrize("name", NAMES)
def test_distances_are_unchanged_on_the_orbit(name: str) -> None:
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


@pytest.mark.parametrize("name", NAMES)
def test_geodesic_is_unchanged_on_the_orbit(name: str) -> None:
    """Slerp on the cells, a straight line on the Euclidean coordinates (the attention
    factors among them): the same states from any point of either orbit."""
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


def _split() -> Split:
    split = load(
        "synthetic",
        input_shape=(TOKENS, FEATURES),
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


def _energy(
    model: nn.Module, split: Split, spec: SymmetrySpec, noise: Noise
) -> Mapping[str, tuple[tuple[float, ...], ...]]:
    energy = local_energy(
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
    )
    raw: Mapping[str, tuple[tuple[float, ...], ...]] = energy.raw
    return raw


@pytest.mark.parametrize("noise", ["multiplicative", "spherical"])
@pytest.mark.parametrize("name", ["mha", "mha_seq_first_token", "mha_direct_gelu"])
def test_local_energy_is_unchanged_on_the_orbit(name: str, noise: Noise) -> None:
    """The canonical form is taken first, so a point of the orbit without permutations and
    the aligned copy of a permuted one give the same error increases, sample by sample (the
    canonical forms agree to about 1e-15, far from any decision boundary of these
    networks)."""
    case = CASES[name]
    model, spec = case.model(), case.spec()
    split = _split()
    energy = _energy(model, split, spec, noise)
    assert any(v != 0 for per_level in energy.values() for row in per_level for v in row)
    moved, _ = random_symmetry(model, seed=1, permutations=False, spec=spec)
    assert _energy(moved, split, spec, noise) == energy
    permuted, _ = random_symmetry(model, seed=2, spec=spec)
    assert _energy(align(permuted, model, spec=spec).model, split, spec, noise) == energy


# ---------------------------------------------------------------- refused


Call = Callable[[nn.MultiheadAttention, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _Attend(nn.Module):
    """embed (5 -> 6) and side (5 -> `side`) Linear layers, the attention layer `make`
    builds, called by `call(attn, embedded, side, raw input)`, mean over tokens, Linear."""

    def __init__(self, make: Callable[[], nn.MultiheadAttention], call: Call, side: int) -> None:
        super().__init__()
        self.embed, self.side = nn.Linear(5, 6), nn.Linear(5, side)
        self.attn, self.head, self.call = make(), nn.Linear(6, 3), call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.call(self.attn, self.embed(x), self.side(x), x)
        result: torch.Tensor = self.head(out.mean(dim=1))
        return result


def _first(result: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    return result[0]


CALLS: dict[str, Call] = {
    "self": lambda att, e, s, x: _first(att(e, e, e, need_weights=False)),
    "other_key": lambda att, e, s, x: _first(att(e, s, s, need_weights=False)),
    "other_value": lambda att, e, s, x: _first(att(e, e, s, need_weights=False)),
    "cross": lambda att, e, s, x: _first(att(e, s, s, need_weights=False)),
    # an additive (batch * heads, tokens, tokens) mask taken from the raw input
    "mask": lambda att, e, s, x: _first(att(e, e, e, need_weights=False, attn_mask=x[:, :, :4])),
    "weights": lambda att, e, s, x: _plus_weights(att(e, e, e)),
}


def _plus_weights(result: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """The attention output plus its (averaged) attention weights summed over keys."""
    out, weights = result
    assert weights is not None
    return out + weights.sum(dim=-1, keepdim=True)


def _mha(heads: int = 2, **kwargs: object) -> Callable[[], nn.MultiheadAttention]:
    return lambda: nn.MultiheadAttention(6, heads, batch_first=True, **kwargs)


@pytest.mark.parametrize(
    ("make", "call", "side", "pattern"),
    [
        (_mha(kdim=4, vdim=4), "other_key", 4, r"module 'attn' \(MultiheadAttention\): kdim"),
        (_mha(vdim=3), "other_value", 3, r"module 'attn' \(MultiheadAttention\): kdim or vdim"),
        (_mha(add_bias_kv=True), "self", 6, r"module 'attn' \(MultiheadAttention\): add_bias_kv"),
        (_mha(add_zero_attn=True), "self", 6, r"'attn' \(MultiheadAttention\): add_zero_attn"),
        (_mha(), "cross", 6, r"module 'attn' \(MultiheadAttention\): cross-attention"),
        (_mha(heads=1), "mask", 6, r"module 'attn' \(MultiheadAttention\): masks"),
        (_mha(), "weights", 6, r"output of module 'attn' \(MultiheadAttention\) is used"),
    ],
    ids=["kdim", "vdim", "add_bias_kv", "add_zero_attn", "cross", "mask", "weights"],
)
def test_unsupported_attention_is_refused_by_name(
    make: Callable[[], nn.MultiheadAttention], call: str, side: int, pattern: str
) -> None:
    model = _Attend(make, CALLS[call], side).double()
    with pytest.raises(UnsupportedModelError, match=pattern):
        symmetry_spec(model, torch.randn(2, TOKENS, FEATURES, dtype=torch.float64))


class _Residual(nn.Module):
    """x + attn(x) without a norm: the stream's cell would depend on its own scale."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn = nn.Linear(5, 6), nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        out: torch.Tensor = self.head(torch.relu(x).mean(dim=1))
        return out


class _TanhAfterAttention(nn.Module):
    """tanh right after the attention: a sign symmetry of its output channels, whose rule
    would read the factorized output rows."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn = nn.Linear(5, 6), nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = torch.tanh(self.attn(x, x, x, need_weights=False)[0])
        out: torch.Tensor = self.head(x.mean(dim=1))
        return out


class _Token(nn.Module):
    """Linear on tokens, then the operation `op` on the token tensor, then a head."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], head_in: int = 6) -> None:
        super().__init__()
        self.fc, self.head, self.op = nn.Linear(5, 6), nn.Linear(head_in, 3), op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.op(torch.relu(self.fc(x))))
        return out


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (_Residual(), r"depend on each other|residual branch"),
        (_TanhAfterAttention(), r"attn.out_proj: an odd activation after an attention layer"),
        (_Token(lambda x: x.mean(dim=2), head_in=TOKENS), r"operation 'mean'.*channel axis"),
        (_Token(lambda x: x[:, :, 0], head_in=TOKENS), r"operation 'getitem'.*channel axis"),
        (_Token(lambda x: x.transpose(1, 2).mean(dim=2), head_in=6), r"moves the channel axis"),
        (_Token(lambda x: x.reshape(x.shape[0], -1), head_in=6 * TOKENS), r"operation 'reshape'"),
        (
            _Token(lambda x: F.max_pool1d(x, 2).mean(dim=1), head_in=3),
            r"operation 'max_pool1d'.*tokens, channels",
        ),
    ],
    ids=["residual", "tanh", "mean_channels", "select_channel", "transpose", "flatten", "pool"],
)
def test_unsupported_token_operations_are_refused(model: nn.Module, pattern: str) -> None:
    with pytest.raises(UnsupportedModelError, match=pattern):
        symmetry_spec(model.double(), torch.randn(2, TOKENS, FEATURES, dtype=torch.float64))


def test_linear_on_conv_channels_is_still_refused() -> None:
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Flatten(), nn.Linear(9, 2)
    )
    with pytest.raises(UnsupportedModelError, match="last axis of a 3-D tensor"):
        symmetry_spec(model, torch.randn(4, 2, 5))
