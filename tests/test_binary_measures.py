"""Measures on binary networks: the overlap distance against a direct Hamming count, flip
local energy, and flip paths with their barriers, each against a plain baseline."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.test_binary_symmetry import generic
from toroid.data import Split, load
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, evaluate
from toroid.flatness import flip_energy
from toroid.manifold import distance, slerp_state
from toroid.manifold.cells import binary_vector, set_binary_vector_
from toroid.models import build, mlp
from toroid.paths import FlipChain, Profile, flip_chain
from toroid.paths.flip import flip_counts, flip_path
from toroid.symmetry import align, canonicalize, random_symmetry, spec_for
from toroid.symmetry.transform import with_state
from toroid.train import fit

BN = {"bn_samples": None, "bn_batch_size": 120}


@pytest.fixture(scope="module")
def small() -> Split:
    return load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=240, test_samples=120, seed=0
    )


def binary_mlp(seed: int, widths: tuple[int, ...] = (16, 8)) -> nn.Module:
    config = {"name": "mlp", "in_features": 12, "widths": list(widths), "num_classes": 3}
    return generic(build({**config, "binary": True}, seed=seed), seed).float()


@pytest.fixture(scope="module")
def trained(small: Split) -> nn.Module:
    model = build(
        {"name": "mlp", "in_features": 12, "widths": [32], "num_classes": 3, "binary": True},
        seed=0,
    )
    optimizer = {"name": "sgd", "lr": 0.1}
    result = fit(model, small, optimizer=optimizer, epochs=40, batch_size=32, progress=False)
    assert result.reached_zero_train_error
    return result.model


def recomputed(model: nn.Module, small: Split) -> dict[str, tuple[float, float]]:
    """(error, loss) per split with BatchNorm statistics recomputed as the measures do."""
    out = {}
    for name, part in (("train", small.train), ("test", small.test)):
        m = evaluate(model, part, bn="recompute", bn_data=small.train, **BN)  # type: ignore[arg-type]
        out[name] = (m.error, m.loss)
    return out


# ---------------------------------------------------------------- overlap distance


def test_overlap_distance_is_the_normalized_hamming_distance_after_alignment() -> None:
    a, b = binary_mlp(0), binary_mlp(1)
    spec = spec_for(a)
    result = align(b, a, spec=spec)
    ref, ours = result.reference.state_dict(), result.model.state_dict()
    differing = sum(int((ref[t].sign() != ours[t].sign()).sum()) for t in spec.binary_tensors())
    total = sum(ref[t].numel() for t in spec.binary_tensors())
    value = distance(a, b, kind="overlap", per_layer=True, spec=spec)
    assert value.over == "binary"
    assert 0 < differing < total
    assert value.value == pytest.approx(differing / total, rel=1e-12)
    assert value.cells == sum(g.size for g in spec.groups) + 1
    assert value.per_layer is not None
    for family, tensor in zip(value.per_layer, spec.binary_tensors(), strict=True):
        count = int((ref[tensor].sign() != ours[tensor].sign()).sum())
        assert value.per_layer[family] == pytest.approx(count / ref[tensor].numel(), rel=1e-12)


def test_overlap_distance_without_alignment_counts_the_canonical_forms() -> None:
    a, b = binary_mlp(2), binary_mlp(3)
    spec = spec_for(a)
    ca, cb = canonicalize(a, spec=spec).state_dict(), canonicalize(b, spec=spec).state_dict()
    differing = sum(int((ca[t] != cb[t]).sum()) for t in spec.binary_tensors())
    total = sum(ca[t].numel() for t in spec.binary_tensors())
    plain = distance(a, b, kind="overlap", align=False, spec=spec)
    assert plain.value == pytest.approx(differing / total, rel=1e-12)
    assert distance(a, b, kind="overlap", spec=spec).value < plain.value
    everything = distance(a, b, kind="overlap", over="all", spec=spec)
    assert everything.over == "all" and everything.cells > plain.cells


def test_overlap_scope_is_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="binary layers"):
        distance(mlp(4, [3], 2), mlp(4, [3], 2), over="binary")
    with pytest.raises(InvalidArgumentError, match="over must be"):
        distance(binary_mlp(0), binary_mlp(1), over="sign")  # type: ignore[arg-type]


# ---------------------------------------------------------------- flip local energy


def test_flip_energy_is_zero_at_p0_and_matches_a_plain_loop(
    trained: nn.Module, small: Split
) -> None:
    ps, samples, seed = (0.0, 0.02, 0.3), 3, 4
    result = flip_energy(
        trained, small, ps=ps, samples=samples, split="both", seed=seed, progress=False, **BN
    )
    spec = spec_for(trained)
    canonical = canonicalize(trained, spec=spec, output="keep")
    base = recomputed(canonical, small)
    assert result.weights == 12 * 32 + 32 * 3
    assert result.noise == "flip" and result.levels == ps and result.samples == samples
    for split in ("train", "test"):
        assert result.base[split] == base[split][0]
        assert result.mean[split][0] == 0.0 and result.stderr[split][0] == 0.0
        assert result.raw[split][0] == (0.0,) * samples
    assert result.mean["train"][-1] > 0  # a minimizer loses under 30% flips

    # The baseline: rebuild each mask from the documented uniforms, flip, evaluate alone.
    state = canonical.state_dict()
    weights = binary_vector(state, spec)
    gen = torch.Generator().manual_seed(seed)
    uniforms = [torch.rand(weights.numel(), generator=gen, dtype=torch.float64) for _ in range(3)]
    for i, p in enumerate(ps):
        for s in range(samples):
            flipped = dict(state)
            set_binary_vector_(flipped, spec, torch.where(uniforms[s] < p, -weights, weights))
            errors = recomputed(with_state(canonical, flipped), small)
            for split in ("train", "test"):
                expected = errors[split][0] - base[split][0]
                assert result.raw[split][i][s] == pytest.approx(expected, abs=1e-12)
        for split in ("train", "test"):
            row = result.raw[split][i]
            assert result.mean[split][i] == pytest.approx(sum(row) / samples, abs=1e-12)
            spread = torch.tensor(row, dtype=torch.float64).std().item() / math.sqrt(samples)
            assert result.stderr[split][i] == pytest.approx(spread, abs=1e-12)


def test_flip_energy_refuses_bad_input(trained: nn.Module, small: Split) -> None:
    with pytest.raises(InvalidArgumentError, match="no binary layers"):
        flip_energy(mlp(12, [4], 3), small, ps=[0.1], progress=False)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]"):
        flip_energy(trained, small, ps=[0.1, 1.5], progress=False)
    with pytest.raises(InvalidArgumentError, match="increasing"):
        flip_energy(trained, small, ps=[0.2, 0.1], progress=False)
    with pytest.raises(InvalidArgumentError, match="samples"):
        flip_energy(trained, small, ps=[0.1], samples=0, progress=False)


# ---------------------------------------------------------------- flip paths


def test_flip_paths_start_and_end_at_the_endpoints_errors(small: Split) -> None:
    """Untrained networks, so that the endpoint errors are non-zero and differ."""
    a, b = binary_mlp(5), binary_mlp(6)
    path = flip_path(a, b, data=small, orders=3, points=6, seed=1, progress=False, **BN)
    ends = recomputed(a, small), recomputed(b, small)
    assert ends[0]["test"][0] != ends[1]["test"][0]
    assert path.kind == "flip" and path.orders == 3 and path.bn == "recompute"
    assert path.per_order is not None
    for split in ("train", "test"):
        for order in range(path.orders):
            errors = path.per_order[f"{split}_error"][order]
            losses = path.per_order[f"{split}_loss"][order]
            assert (errors[0], errors[-1]) == (ends[0][split][0], ends[1][split][0])
            assert losses[0] == pytest.approx(ends[0][split][1], rel=1e-5)
            assert losses[-1] == pytest.approx(ends[1][split][1], rel=1e-5)
    overlap = distance(a, b, kind="overlap", seed=1)
    assert path.weights == 12 * 16 + 16 * 8 + 8 * 3
    assert path.differing == round(overlap.value * path.weights)
    assert path.flips == flip_counts(path.differing, 6) and path.flips[-1] == path.differing
    assert path.ts[0] == 0.0 and path.ts[-1] == 1.0
    assert all(x < y for x, y in zip(path.ts, path.ts[1:], strict=False))
    # The profile's curves are the means over orders, point by point.
    for metric in ("train_error", "test_error", "train_loss", "test_loss"):
        curves = path.per_order[metric]
        mean = tuple(sum(column) / len(column) for column in zip(*curves, strict=True))
        assert path.values(metric) == mean  # type: ignore[arg-type]


def test_an_interior_point_matches_a_network_built_by_hand(small: Split) -> None:
    a, b = binary_mlp(7), binary_mlp(8)
    seed = 2
    path = flip_path(a, b, data=small, orders=2, points=3, seed=seed, progress=False, **BN)
    spec = spec_for(a)
    result = align(b, a, spec=spec, seed=seed)
    sa, sb = result.reference.state_dict(), result.model.state_dict()
    va, vb = binary_vector(sa, spec), binary_vector(sb, spec)
    differ = torch.nonzero(va != vb).flatten()
    gen = torch.Generator().manual_seed(seed)
    orders = [differ[torch.randperm(differ.numel(), generator=gen)] for _ in range(2)]
    count = path.flips[1]
    for o, order in enumerate(orders):
        state = slerp_state(sa, sb, count / differ.numel(), spec)
        vector = va.clone()
        vector[order[:count]] = vb[order[:count]]
        set_binary_vector_(state, spec, vector)
        errors = recomputed(with_state(a, state), small)
        for split in ("train", "test"):
            assert path.curves(f"{split}_error")[o][1] == errors[split][0]  # type: ignore[arg-type]
            loss = path.curves(f"{split}_loss")[o][1]  # type: ignore[arg-type]
            assert loss == pytest.approx(errors[split][1], rel=1e-5)


def test_a_flip_path_between_symmetric_copies_is_flat(small: Split) -> None:
    a = binary_mlp(9)
    b, _ = random_symmetry(a, seed=3)
    path = flip_path(a, b, data=small, orders=2, points=4, split="test", progress=False, **BN)
    assert path.differing == 0 and path.flips == (0, 0) and path.ts == (0.0, 1.0)
    assert path.splits == ("train", "test")  # a Profile always has the training curves
    error = recomputed(a, small)["test"][0]
    assert all(e == error for profile in path.curves("test_error") for e in profile)
    assert path.barriers(metric="test_error") == (0.0, 0.0)
    train_only = flip_path(a, b, data=small, orders=2, points=4, split="train", progress=False)
    assert train_only.splits == ("train",) and train_only.per_order is not None
    assert set(train_only.per_order) == {"train_error", "train_loss"}
    with pytest.raises(InvalidArgumentError, match="not measured"):
        train_only.barriers(metric="test_error")


def test_flip_path_refuses_bad_input(small: Split) -> None:
    a = binary_mlp(0)
    with pytest.raises(InvalidArgumentError, match="orders"):
        flip_path(a, a, data=small, orders=0, progress=False)
    with pytest.raises(InvalidArgumentError, match="points"):
        flip_path(a, a, data=small, points=1, progress=False)
    with pytest.raises(InvalidArgumentError, match="no binary layers"):
        flip_path(mlp(12, [4], 3), mlp(12, [4], 3), data=small, progress=False)
    with pytest.raises(InvalidArgumentError, match="different architectures"):
        flip_path(a, binary_mlp(0, widths=(16, 9)), data=small, progress=False)
    with pytest.raises(InvalidArgumentError, match="Split with test data"):
        flip_path(a, a, data=small.train, progress=False)


def test_flip_counts_are_distinct_and_evenly_spaced() -> None:
    assert flip_counts(10, 6) == (0, 2, 4, 6, 8, 10)
    assert flip_counts(3, 11) == (0, 1, 2, 3)  # fewer weights differ than points asked
    assert flip_counts(0, 11) == (0, 0)


def test_named_barriers_and_their_summaries_over_orders() -> None:
    t = (0.0, 1 / 3, 2 / 3, 1.0)
    first, second = (0.0, 0.3, 0.6, 0.2), (0.0, 0.1, 0.1, 0.2)
    path = Profile(
        kind="flip",
        ts=t,
        train_error=(0.0, 0.2, 0.35, 0.2),
        train_loss=(0.0, 0.2, 0.35, 0.2),
        test_error=None,
        test_loss=None,
        bn="recompute",
        per_order={"train_error": (first, second), "train_loss": (second, first)},
        flips=(0, 1, 2, 3),
        differing=3,
        weights=10,
    )
    assert path.orders == 2
    assert path.barriers(kind="max_minus_linear") == pytest.approx((0.6 - 0.4 / 3, 0.1 - 0.2 / 3))
    assert path.barriers(kind="max") == pytest.approx((0.6, 0.2))
    with pytest.raises(InvalidArgumentError, match="barrier kind"):
        path.barriers(kind="mean")  # type: ignore[arg-type]
    assert path.barriers() == pytest.approx((0.5, 0.1))
    assert path.mean_barrier() == pytest.approx(0.3)
    assert path.max_barrier() == pytest.approx(0.5)
    assert path.max_barrier(metric="train_loss") == pytest.approx(0.5)
    assert path.max_barrier("max") == pytest.approx(0.6)  # the largest error of any order
    assert path.barrier() == pytest.approx(0.35 - 0.1)  # of the mean curve
    spread = [abs(a - b) / 2 for a, b in zip(first, second, strict=True)]
    assert path.stderr() == pytest.approx(spread)  # std of two values / sqrt(2)
    record = path.to_dict()
    assert record["per_order"]["train_error"] == [list(first), list(second)]
    assert (record["flips"], record["differing"], record["weights"]) == ([0, 1, 2, 3], 3, 10)


def _segment(errors: tuple[tuple[float, ...], ...], flips: tuple[int, ...]) -> Profile:
    """A hand-made flip profile with the given per-order training errors (losses twice)."""
    ts = tuple(f / flips[-1] for f in flips)
    mean = tuple(sum(column) / len(column) for column in zip(*errors, strict=True))
    losses = tuple(tuple(2 * e for e in order) for order in errors)
    return Profile(
        kind="flip",
        ts=ts,
        train_error=mean,
        train_loss=tuple(2 * m for m in mean),
        test_error=None,
        test_loss=None,
        bn="recompute",
        per_order={"train_error": errors, "train_loss": losses},
        flips=flips,
        differing=flips[-1],
        weights=10,
    )


def test_a_chain_joins_its_two_flip_profiles() -> None:
    first = _segment(((0.0, 0.4, 0.1), (0.0, 0.2, 0.1)), (0, 2, 4))
    # The second segment starts at the bend, evaluated as its own start: 0.12, not 0.1.
    second = _segment(((0.12, 0.3, 0.0), (0.12, 0.5, 0.0)), (0, 1, 2))
    chain = FlipChain(nn.Identity(), first, second, epochs=3, reached_zero_train_error=True)
    whole = chain.profile()
    assert whole.kind == "flip-chain" and whole.ts == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert whole.train_error == pytest.approx((0.0, 0.3, 0.1, 0.4, 0.0))
    assert whole.per_order is not None
    assert whole.per_order["train_error"] == ((0.0, 0.4, 0.1, 0.3, 0.0), (0.0, 0.2, 0.1, 0.5, 0.0))
    assert (whole.flips, whole.differing, whole.weights) == ((0, 2, 4, 5, 6), 6, 10)
    assert chain.mean_profile("train") == (whole.ts, whole.train_error)
    assert chain.max_error("train") == 0.5
    assert whole.mean_barrier() == pytest.approx(0.45)  # orders: 0.4 and 0.5 over ends of 0
    with pytest.raises(InvalidArgumentError, match="split must be 'train' or 'test'"):
        chain.max_error("valid")
    with pytest.raises(InvalidArgumentError, match="no test data"):
        chain.mean_profile("test")


def test_flip_chain_measures_both_segments_as_profiles(small: Split) -> None:
    a, b = binary_mlp(10), binary_mlp(11)
    plan = EvalPlan(bn_samples=None, bn_batch_size=120, max_sets=8)
    chain = flip_chain(a, b, small, epochs=1, orders=2, points=3, progress=False, plan=plan)
    for segment in (chain.first, chain.second):
        assert segment.kind == "flip" and segment.splits == ("train", "test")
        assert segment.orders == 2 and segment.ts[0] == 0.0 and segment.ts[-1] == 1.0
    whole = chain.profile()
    assert whole.splits == ("train", "test") and whole.ts[len(chain.first.ts) - 1] == 0.5
    assert chain.max_error("test") == max(
        chain.first.max_barrier("max", "test_error"), chain.second.max_barrier("max", "test_error")
    )
    with pytest.raises(InvalidArgumentError, match="not both"):
        flip_chain(a, b, small, epochs=1, progress=False, plan=plan, bn_samples=100)
