"""NaN or infinite weights or data are refused, in one line naming what is non-finite, by
every measurement (once per call, on its inputs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from toroid.data import Split, TensorData, load
from toroid.errors import NonFiniteError, ToroidError
from toroid.evaluate import evaluate, evaluate_sets, recompute_bn, stack_states
from toroid.flatness import flip_energy, hessian_top_eigenvalue, hessian_trace, local_energy
from toroid.manifold import distance, distances, slerp
from toroid.models import mlp
from toroid.paths import fit_bend, geodesic, linear, polychain, profile
from toroid.paths.flip import flip_path
from toroid.train import fit


@pytest.fixture(scope="module")
def split() -> Split:
    return load(
        "synthetic", input_shape=(6,), num_classes=3, train_samples=40, test_samples=20, seed=0
    )


def _net(seed: int, *, binary: bool = False) -> nn.Module:
    return mlp(6, [5], 3, binary=binary, seed=seed).double()


def _poisoned(model: nn.Module, value: float, where: str = "param") -> nn.Module:
    bad = mlp(6, [5], 3, binary=model[1].__class__.__name__ == "BinaryLinear", seed=0).double()
    bad.load_state_dict(model.state_dict())
    with torch.no_grad():
        if where == "param":
            bad[1].weight[0, 0] = value
        else:
            bad[2].running_var[0] = value
    return bad


def _bad_data(split: Split, value: float) -> Split:
    x = split.train.x.clone()
    x[3, 2] = value
    return Split(TensorData(x, split.train.y), split.test, split.meta)


Measure = Callable[[nn.Module, Split], object]

_EVAL = {"bn_samples": None, "bn_batch_size": 40, "progress": False}
MEASURES: dict[str, Measure] = {
    "evaluate": lambda m, s: evaluate(m, s.train),
    "evaluate-recompute": lambda m, s: evaluate(m, s.train, bn="recompute", bn_samples=None),
    "recompute_bn": lambda m, s: recompute_bn(m, s.train, samples=None, batch_size=40),
    "evaluate_sets": lambda m, s: evaluate_sets(
        m, stack_states([m.state_dict()]), {"train": s.train}, bn_data=s.train
    ),
    "local_energy": lambda m, s: local_energy(m, s, sigmas=[0.0, 0.1], samples=1, **_EVAL),
    "hessian_trace": lambda m, s: hessian_trace(m, s.train, probes=2),
    "hessian_top_eigenvalue": lambda m, s: hessian_top_eigenvalue(m, s.train, iters=2),
    "profile-linear": lambda m, s: profile(linear(m, _net(1)), s, points=3, **_EVAL),
    "profile-geodesic": lambda m, s: profile(geodesic(_net(1), m), s, points=3, **_EVAL),
    "profile-polychain-bend": lambda m, s: profile(
        polychain(_net(1), m, _net(2)), s, points=3, **_EVAL
    ),
    "distance": lambda m, s: distance(m, _net(1)),
    "distances": lambda m, s: distances(_net(1), m),
    "slerp": lambda m, s: slerp(m, _net(1), 0.5),
    "fit": lambda m, s: fit(m, s, epochs=1, batch_size=20, progress=False),
    "fit_bend": lambda m, s: fit_bend(m, _net(1), s, epochs=1, batch_size=20, progress=False),
}
BINARY_MEASURES: dict[str, Measure] = {
    "flip_energy": lambda m, s: flip_energy(m, s, ps=[0.0, 0.1], samples=1, **_EVAL),
    "flip_path": lambda m, s: flip_path(
        m, _net(1, binary=True), data=s, orders=1, points=3, **_EVAL
    ),
}


def _one_line(info: pytest.ExceptionInfo[ToroidError], *needles: str) -> None:
    message = str(info.value)
    assert "\n" not in message and "non-finite" in message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", sorted(MEASURES))
def test_non_finite_weights_refused(name: str, value: float, split: Split) -> None:
    with pytest.raises(NonFiniteError) as info:
        MEASURES[name](_poisoned(_net(0), value), split)
    _one_line(info, "'1.weight'")


@pytest.mark.parametrize("name", ["evaluate", "evaluate_sets", "distance", "hessian_trace"])
def test_non_finite_batchnorm_statistics_refused(name: str, split: Split) -> None:
    with pytest.raises(NonFiniteError) as info:
        MEASURES[name](_poisoned(_net(0), float("nan"), where="buffer"), split)
    _one_line(info, "'2.running_var'")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", sorted(set(MEASURES) - {"distance", "distances", "slerp"}))
def test_non_finite_data_refused(name: str, value: float, split: Split) -> None:
    with pytest.raises(NonFiniteError) as info:
        MEASURES[name](_net(0), _bad_data(split, value))
    _one_line(info, "data")


@pytest.mark.parametrize("name", sorted(BINARY_MEASURES))
def test_binary_measures_refuse_non_finite(name: str, split: Split) -> None:
    with pytest.raises(NonFiniteError) as info:
        BINARY_MEASURES[name](_poisoned(_net(0, binary=True), float("nan")), split)
    _one_line(info, "'1.weight'")
    with pytest.raises(NonFiniteError) as info:
        BINARY_MEASURES[name](_net(0, binary=True), _bad_data(split, float("nan")))
    _one_line(info, "data")


def test_profile_refuses_a_path_with_non_finite_anchor(split: Split) -> None:
    path = linear(_net(0), _net(1))
    name = next(k for k, v in path.b.items() if v.is_floating_point())
    path.b[name].view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        profile(path, split, points=3, **_EVAL)  # type: ignore[arg-type]
    _one_line(info, "anchor 1", repr(name))


def test_evaluate_sets_refuses_non_finite_sets_given_directly(split: Split) -> None:
    model = _net(0)
    states = [model.state_dict(), _poisoned(model, float("inf")).state_dict()]
    with pytest.raises(NonFiniteError) as info:
        evaluate_sets(model, stack_states(states), {"train": split.train}, bn_data=split.train)
    _one_line(info, "parameter sets", "'1.weight'")


def test_finite_inputs_still_measured(split: Split) -> None:
    for name in ("evaluate", "evaluate_sets", "distance", "hessian_trace"):
        MEASURES[name](_net(0), split)
