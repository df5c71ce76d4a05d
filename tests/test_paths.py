"""Paths, profiles and barriers: exact endpoints, the geodesic on the toroid, the orbit of
one network (zero length and barrier on the toroid, not in raw coordinates), batched
profiles against a point-by-point loop, bend fitting, determinism, bad input."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from toroid.data import Split, TensorData, load
from toroid.errors import InvalidArgumentError
from toroid.evaluate import AffineFamily, EvalPlan, evaluate, recompute_bn
from toroid.manifold.cells import cell_families, cell_matrix
from toroid.models import build
from toroid.paths import (
    PATH_KINDS,
    Path,
    barrier,
    fit_bend,
    geodesic,
    linear,
    make_path,
    polychain,
    profile,
    retrain_midpoint,
    uniform_ts,
)
from toroid.symmetry import random_symmetry, spec_for
from toroid.train import fit

CONFIG = {"name": "mlp", "in_features": 10, "widths": [24, 16], "num_classes": 3}
BN = {"bn_samples": 120, "bn_batch_size": 40, "batch_size": 64}


def _double(split: Split) -> Split:
    test = split.test
    assert test is not None
    return Split(
        TensorData(split.train.x.double(), split.train.y),
        TensorData(test.x.double(), test.y),
        split.meta,
    )


@pytest.fixture(scope="module")
def data() -> Split:
    return load(
        "synthetic", input_shape=(10,), num_classes=3, train_samples=240, test_samples=120, seed=0
    )


@pytest.fixture(scope="module")
def minimizers(data: Split) -> tuple[nn.Module, nn.Module]:
    a, b = (
        fit(
            build(CONFIG, seed=seed),
            data,
            optimizer={"name": "sgd", "lr": 0.1},
            epochs=30,
            progress=False,
        )
        for seed in (0, 1)
    )
    assert a.reached_zero_train_error and b.reached_zero_train_error
    return a.model.double(), b.model.double()


@pytest.fixture(scope="module")
def bend(minimizers: tuple[nn.Module, nn.Module], data: Split) -> nn.Module:
    a, b = minimizers
    return fit_bend(a, b, _double(data), epochs=3, progress=False).bend


def _path(kind: str, a: nn.Module, b: nn.Module, bend: nn.Module) -> object:
    return make_path(kind, a, b, bend=bend if kind in ("polychain", "bezier") else None)


def _point_error(model: nn.Module, split: Split) -> tuple[float, float]:
    """The slow baseline: recompute BatchNorm for one network, evaluate it."""
    fixed = recompute_bn(
        model, split.train, samples=BN["bn_samples"], batch_size=BN["bn_batch_size"], seed=0
    )
    metrics = evaluate(fixed, split.train, batch_size=BN["batch_size"])
    return metrics.error, metrics.loss


@pytest.mark.parametrize("kind", PATH_KINDS)
def test_every_path_reproduces_its_endpoints_exactly(
    kind: str, minimizers: tuple[nn.Module, nn.Module], bend: nn.Module, data: Split
) -> None:
    a, b = minimizers
    path = _path(kind, a, b, bend)
    split = _double(data)
    result = profile(path, split, points=5, progress=False, **BN)  # type: ignore[arg-type]
    for t, model in ((0, a), (-1, b)):
        error, loss = _point_error(model, split)
        assert result.train_error[t] == error
        # Canonical form rescales what enters each BatchNorm; with recomputed statistics
        # its eps then weighs differently, a relative change of order eps in the loss.
        assert result.train_loss[t] == pytest.approx(loss, rel=1e-4)
    # The anchors themselves come back bit for bit at the ends.
    state0, state1 = path.state_at(0.0), path.state_at(1.0)  # type: ignore[attr-defined]
    assert all(torch.equal(state0[k], v) for k, v in path.a.items())  # type: ignore[attr-defined]
    assert all(torch.equal(state1[k], v) for k, v in path.b.items())  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", PATH_KINDS)
def test_batched_profile_equals_the_point_by_point_loop(
    kind: str, minimizers: tuple[nn.Module, nn.Module], bend: nn.Module, data: Split
) -> None:
    a, b = minimizers
    path = _path(kind, a, b, bend)
    split = _double(data)
    ts = (0.0, 0.3, 0.5, 0.8, 1.0)
    result = profile(path, split, ts=ts, progress=False, max_sets=2, **BN)  # type: ignore[arg-type]
    assert result.ts == ts
    for i, t in enumerate(ts):
        error, loss = _point_error(path.at(t), split)  # type: ignore[attr-defined]
        assert result.train_error[i] == error
        assert result.train_loss[i] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert len(set(result.train_loss)) > 1


def test_linear_and_geodesic_endpoints_are_canonical_and_aligned(
    minimizers: tuple[nn.Module, nn.Module],
) -> None:
    a, b = minimizers
    raw = linear(a, b, raw=True)
    assert all(torch.equal(raw.a[k], v) for k, v in a.state_dict().items())
    straight, curved = linear(a, b), geodesic(a, b)
    for k in straight.a:
        assert torch.equal(straight.a[k], curved.a[k]) and torch.equal(straight.b[k], curved.b[k])
    assert not torch.equal(straight.a["1.weight"], a.state_dict()["1.weight"])


def test_geodesic_keeps_every_cell_unit_norm(minimizers: tuple[nn.Module, nn.Module]) -> None:
    a, b = minimizers
    path = geodesic(a, b)
    spec = spec_for(a)
    hidden = [(cell, size) for cell, size in cell_families(spec) if cell is not spec.output]
    assert hidden
    for t in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        state = path.state_at(t)
        for cell, size in hidden:
            norms = cell_matrix(state, cell, size).norm(dim=1)
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-12)
    # The straight line between the same points leaves the toroid.
    middle = linear(a, b).state_at(0.5)
    norms = cell_matrix(middle, hidden[0][0], hidden[0][1]).norm(dim=1)
    assert float(norms.min()) < 0.99


def test_the_orbit_of_one_network_is_one_point_on_the_toroid(
    minimizers: tuple[nn.Module, nn.Module], data: Split
) -> None:
    a, _ = minimizers
    moved, _ = random_symmetry(a, seed=3)
    split = _double(data)
    path = geodesic(a, moved)
    assert path.length() < 1e-6
    curve = profile(path, split, points=7, progress=False, **BN)
    assert len(set(curve.train_error)) == 1 and len(set(curve.test_error or ())) == 1
    for kind in ("max_minus_mean", "max_minus_linear"):
        assert curve.barrier(kind) == 0.0  # type: ignore[arg-type]
    # Paths keep each end's output layer (their losses are their own): only its scale
    # moves, so the loss changes monotonically, with no bump.
    losses = curve.train_loss
    steps = [later - earlier for earlier, later in pairwise(losses)]
    assert all(step > 0 for step in steps) or all(step < 0 for step in steps)
    raw = profile(linear(a, moved, raw=True), split, points=7, progress=False, **BN)
    assert raw.barrier("max_minus_mean") > 0.05


def test_barrier_kinds_on_hand_made_profiles() -> None:
    ts = (0.0, 0.25, 0.5, 0.75, 1.0)
    values = (0.1, 0.3, 0.5, 0.2, 0.3)
    assert barrier(ts, values, kind="max") == 0.5
    assert barrier(ts, values, kind="max_minus_mean") == pytest.approx(0.5 - 0.2)
    # Linear reference at t = 0.5 is 0.2, so 0.3 there; at t = 0.25 it is 0.3 - 0.15.
    assert barrier(ts, values, kind="max_minus_linear") == pytest.approx(0.3)
    flat = (0.2, 0.2, 0.2)
    assert barrier((0.0, 0.5, 1.0), flat, kind="max_minus_mean") == 0.0
    descending = (0.4, 0.2, 0.0)  # below the chord everywhere: the barrier is at an end
    assert barrier((0.0, 0.5, 1.0), descending, kind="max_minus_linear") == 0.0
    assert barrier((0.0, 0.5, 1.0), descending, kind="max_minus_mean") == pytest.approx(0.2)
    with pytest.raises(InvalidArgumentError, match="barrier kind"):
        barrier(ts, values, kind="height")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="from 0 to 1"):
        barrier((0.0, 0.6, 0.5, 1.0), (0, 0, 0, 0))


def test_refinement_adds_points_around_the_maximum(
    minimizers: tuple[nn.Module, nn.Module], data: Split
) -> None:
    a, b = minimizers
    path = linear(a, b, raw=True)
    coarse = profile(path, _double(data), points=5, progress=False, **BN)
    fine = profile(path, _double(data), points=5, refine=2, progress=False, **BN)
    assert set(coarse.ts) < set(fine.ts) and len(fine.ts) == 9
    top = coarse.ts[max(range(5), key=lambda i: coarse.train_error[i])]
    added = sorted(set(fine.ts) - set(coarse.ts))
    assert all(abs(t - top) <= 0.25 for t in added)
    assert fine.barrier("max") >= coarse.barrier("max")


def test_fit_bend_lowers_the_path_loss_and_leaves_the_endpoints(
    minimizers: tuple[nn.Module, nn.Module], data: Split
) -> None:
    a, b = minimizers
    before_a = {k: v.clone() for k, v in a.state_dict().items()}
    split = _double(data)
    start = polychain(a, geodesic(a, b).at(0.5), b)
    fitted = fit_bend(a, b, split, epochs=15, lr=0.05, progress=False)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in before_a.items())
    for k in start.a:
        assert torch.equal(fitted.path.a[k], start.a[k])
        assert torch.equal(fitted.path.b[k], start.b[k])
    ts = uniform_ts(11)
    initial = profile(start, split, ts=ts, progress=False, **BN)
    trained = profile(fitted.path, split, ts=ts, progress=False, **BN)
    mean = sum(trained.train_loss) / len(ts)
    assert mean < sum(initial.train_loss) / len(ts)
    assert fitted.grad_evals == 15 * math.ceil(240 / 128)
    assert len(fitted.losses) == 15


def test_fit_bend_and_profiles_are_seeded(
    minimizers: tuple[nn.Module, nn.Module], data: Split
) -> None:
    a, b = minimizers
    split = _double(data)
    one = fit_bend(a, b, split, kind="bezier", epochs=2, seed=4, progress=False)
    two = fit_bend(a, b, split, kind="bezier", epochs=2, seed=4, progress=False)
    other = fit_bend(a, b, split, kind="bezier", epochs=2, seed=5, progress=False)
    bend_one, bend_two = one.bend.state_dict(), two.bend.state_dict()
    assert all(torch.equal(bend_one[k], bend_two[k]) for k in bend_one)
    assert not torch.equal(bend_one["1.weight"], other.bend.state_dict()["1.weight"])
    first = profile(one.path, split, points=5, progress=False, **BN)
    assert first == profile(two.path, split, points=5, progress=False, **BN)


def test_retrain_midpoint_gives_a_minimizer_in_the_endpoints_coordinates(
    minimizers: tuple[nn.Module, nn.Module], data: Split
) -> None:
    a, b = minimizers
    split = _double(data)
    fitted = retrain_midpoint(
        a, b, split, optimizer={"name": "sgd", "lr": 0.1}, epochs=30, progress=False
    )
    assert fitted.settings["reached_zero_train_error"]
    chain = profile(fitted.path, split, ts=(0.0, 0.5, 1.0), progress=False, **BN)
    assert chain.train_error[1] == 0.0
    # The bend is canonical and aligned: its hidden cells are unit vectors.
    spec = spec_for(a)
    cell, size = next(iter(cell_families(spec)))
    norms = cell_matrix(fitted.bend.state_dict(), cell, size).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_bad_input_is_refused(minimizers: tuple[nn.Module, nn.Module], data: Split) -> None:
    a, b = minimizers
    with pytest.raises(InvalidArgumentError, match="unknown path kind"):
        make_path("spline", a, b)
    with pytest.raises(InvalidArgumentError, match="needs a bend"):
        make_path("polychain", a, b)
    with pytest.raises(InvalidArgumentError, match="points"):
        uniform_ts(1)
    path = linear(a, b)
    with pytest.raises(InvalidArgumentError, match="both ends"):
        profile(path, _double(data), ts=(0.2, 1.0), progress=False)
    with pytest.raises(InvalidArgumentError, match="refine"):
        profile(path, _double(data), refine=-1, progress=False)
    with pytest.raises(InvalidArgumentError, match="t must be"):
        path.state_at(1.5)
    with pytest.raises(InvalidArgumentError, match="kind"):
        fit_bend(a, b, _double(data), kind="spline", progress=False)  # type: ignore[arg-type]
    other = build({**CONFIG, "widths": [24, 8]}, seed=0).double()
    with pytest.raises(InvalidArgumentError):
        linear(a, other)


def test_a_path_moved_to_a_device_is_a_copy(
    minimizers: tuple[nn.Module, nn.Module], data: Split
) -> None:
    a, b = minimizers
    path = geodesic(a, b)
    moved = path.to("cpu")
    assert moved is not path and moved.template is not path.template
    assert type(moved) is type(path) and moved.kind == path.kind
    assert all(torch.equal(moved.a[k], v) for k, v in path.a.items())
    here = profile(path, _double(data), points=3, progress=False, **BN)
    there = profile(path, _double(data), points=3, progress=False, device="cpu", **BN)
    assert here == there


def test_geodesic_profiles_reuse_the_input_layer(
    minimizers: tuple[nn.Module, nn.Module],
    data: Split,
    input_layer_reuses: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The geodesic reaches evaluate_sets as a family weighed per cell, so its input layer
    is computed once per end, not once per t, and the profile equals the one from the
    stacked states."""
    a, b = minimizers
    path = geodesic(a, b)
    ts = (0.0, 0.25, 0.5, 1.0)
    assert isinstance(path.sets(ts), AffineFamily)
    split = _double(data)
    fast = profile(path, split, ts=ts, progress=False, **BN)  # type: ignore[arg-type]
    assert input_layer_reuses
    monkeypatch.setattr(type(path), "sets", Path.sets)  # the stacked states
    slow = profile(path, split, ts=ts, progress=False, **BN)  # type: ignore[arg-type]
    assert fast.train_error == slow.train_error and fast.test_error == slow.test_error
    assert fast.train_loss == pytest.approx(slow.train_loss, rel=1e-10, abs=1e-12)


def test_a_plan_equals_the_loose_arguments_and_is_not_mixed_with_them(
    minimizers: tuple[nn.Module, nn.Module], data: Split
) -> None:
    a, b = minimizers
    path = geodesic(a, b)
    split = _double(data)
    loose = profile(path, split, points=3, seed=2, max_sets=2, progress=False, **BN)
    plan = EvalPlan(bn_samples=120, bn_batch_size=40, batch_size=64, seed=2, max_sets=2)
    assert profile(path, split, points=3, progress=False, plan=plan) == loose
    with pytest.raises(InvalidArgumentError, match=r"not both; got plan= and bn_samples=50"):
        profile(path, split, points=3, progress=False, plan=plan, bn_samples=50)
    kept = profile(path, split, points=3, progress=False, plan=EvalPlan(bn="keep"))
    assert kept.bn == "keep"
