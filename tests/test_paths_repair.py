"""REPAIR along paths (`bn="repair"`): the repaired units' statistics against a plain
forward pass, the ends unchanged, BatchNorm layers left to their recomputation, refusals,
and profiles with and without it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from toroid.data.tensordata import Split, TensorData
from toroid.errors import InvalidArgumentError, ToroidError, UnsupportedModelError
from toroid.evaluate import EvalPlan, evaluate, evaluate_sets, plan_or_loose, recompute_bn
from toroid.models import mlp
from toroid.paths import (
    PathRepair,
    PolyChainPath,
    geodesic,
    linear,
    profile,
    repair_layout,
)
from toroid.paths.path import Path
from toroid.symmetry.slots import State
from toroid.symmetry.transform import with_state

SAMPLES, BATCH, SEED = 48, 16, 3
PLAN = EvalPlan(bn="repair", bn_samples=SAMPLES, bn_batch_size=BATCH, seed=SEED)


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().double().eval()


def _mixed(seed: int) -> nn.Module:
    """A BatchNorm layer, then two layers without, then the output layer."""
    return _seeded(
        lambda: nn.Sequential(
            nn.Linear(6, 10, bias=False),
            nn.BatchNorm1d(10),
            nn.ReLU(),
            nn.Linear(10, 12),
            nn.ReLU(),
            nn.Linear(12, 8),
            nn.Tanh(),
            nn.Linear(8, 3),
        ),
        seed,
    )


def _conv(seed: int) -> nn.Module:
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(20, 3),
        ),
        seed,
    )


def _data(shape: Sequence[int], n: int = 64, seed: int = 0) -> TensorData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    return TensorData(x, torch.randint(0, 3, (n,), generator=generator))


CASES = {
    "mixed": (_mixed, (6,), ("3", "5")),
    "conv": (_conv, (2, 8, 8), ("0", "3")),
}


def _case(name: str) -> tuple[Path, TensorData, tuple[str, ...]]:
    build, shape, repaired = CASES[name]
    return linear(build(0), build(1), raw=True), _data(shape), repaired


def _slow_statistics(
    model: nn.Module, names: Sequence[str], data: TensorData
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and population sd per unit of the modules' outputs: one eval-mode forward pass
    over the whole seeded subset, drawn here without the library's helper."""
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(SEED))[:SAMPLES]
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
        for name in names
    ]
    with torch.no_grad():
        model.eval()(data.x[index])
    for handle in handles:
        handle.remove()
    result = {}
    for name, out in outputs.items():
        rows = out if out.dim() == 2 else out.transpose(0, 1).flatten(1).T
        result[name] = (rows.mean(dim=0), rows.std(dim=0, correction=0))
    return result


def _settled(template: nn.Module, state: State, data: TensorData) -> nn.Module:
    return recompute_bn(
        with_state(template, state), data, samples=SAMPLES, batch_size=BATCH, seed=SEED
    )


def test_layout_sorts_the_producers() -> None:
    mixed = repair_layout(_mixed(0))
    assert (mixed.repaired, mixed.batchnorm, mixed.output) == (("3", "5"), ("0",), ("7",))
    assert repair_layout(_conv(0)).repaired == ("0", "3")
    with_bn = repair_layout(mlp(5, [7, 7], 3, seed=0))
    assert with_bn.repaired == () and len(with_bn.batchnorm) == 2
    plain = repair_layout(mlp(5, [7, 7], 3, batchnorm=False, seed=0))
    assert plain.repaired == ("1", "3") and plain.output == ("5",)


@pytest.mark.parametrize("case", sorted(CASES))
def test_repaired_statistics_equal_the_interpolated_ends(case: str) -> None:
    path, data, repaired = _case(case)
    t = 0.4
    repair = PathRepair(path, data, plan=PLAN)
    ends = [
        _slow_statistics(_settled(path.template, s, data), repaired, data) for s in path.anchors
    ]
    point = _slow_statistics(with_state(path.template, repair.state_at(t)).eval(), repaired, data)
    raw = _slow_statistics(_settled(path.template, path.state_at(t), data), repaired, data)
    targets = repair.targets(t)
    for name in repaired:
        for k, stored in enumerate((targets.mean[name], targets.sd[name])):  # mean, sd
            target = (1 - t) * ends[0][name][k] + t * ends[1][name][k]
            torch.testing.assert_close(stored, target, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(point[name][k], target, rtol=1e-10, atol=1e-12)
        # Without REPAIR the point's units are off their targets (variance collapse).
        sd_target = (1 - t) * ends[0][name][1] + t * ends[1][name][1]
        assert float((raw[name][1] - sd_target).abs().max()) > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("t", [0.0, 1.0])
def test_the_ends_keep_their_function(case: str, t: float) -> None:
    path, data, _ = _case(case)
    repaired = PathRepair(path, data, plan=PLAN).state_at(t)
    end = _settled(path.template, path.a if t == 0.0 else path.b, data)
    with torch.no_grad():
        got = with_state(path.template, repaired).eval()(data.x)
        expected = end(data.x)
    assert float((got - expected).abs().max()) <= 1e-9


def test_batchnorm_layers_are_left_to_their_recomputation() -> None:
    path, data, _ = _case("mixed")
    t = 0.5
    moved = path.state_at(t)
    repaired = PathRepair(path, data, plan=PLAN).state_at(t)
    for key in ("0.weight", "1.weight", "1.bias", "7.weight", "7.bias"):
        assert torch.equal(repaired[key], moved[key]), key
    recomputed = _settled(path.template, moved, data).state_dict()
    for key in ("1.running_mean", "1.running_var"):
        assert torch.equal(repaired[key], recomputed[key]), key
    for key in ("3.weight", "3.bias", "5.weight", "5.bias"):
        assert not torch.equal(repaired[key], moved[key]), key


def test_repair_is_deterministic() -> None:
    path, data, _ = _case("conv")
    first = PathRepair(path, data, plan=PLAN).sets([0.25, 0.5])
    second = PathRepair(path, data, plan=PLAN).sets([0.25, 0.5])
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_chain_keeps_its_bend() -> None:
    """Targets interpolate the anchors with the path's own weights: at t = 1/2 the chain
    is its bend, and REPAIR leaves it as it is."""
    a, bend, b = (_mixed(s).state_dict() for s in (0, 1, 2))
    chain = PolyChainPath(_mixed(0), [a, bend, b])
    data = _data((6,))
    repaired = PathRepair(chain, data, plan=PLAN).state_at(0.5)
    for key in ("3.weight", "3.bias", "5.weight", "5.bias"):
        torch.testing.assert_close(repaired[key], bend[key], rtol=0, atol=1e-12)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.block = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inner(x))
        return self.out(torch.relu(h + self.block(h)))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(torch.relu(self.hidden(x)))))


class _NoWeights(Path):
    kind = "custom"

    def state_at(self, t: float) -> State:
        return dict(self.a)


def _one_line(error: pytest.ExceptionInfo[ToroidError], *needles: str) -> None:
    text = str(error.value)
    assert "\n" not in text and all(n in text for n in needles), text


def test_invalid_values_are_refused_in_one_line() -> None:
    with pytest.raises(InvalidArgumentError) as bad_policy:
        EvalPlan(bn="fix")  # type: ignore[arg-type]
    _one_line(bad_policy, "'fix'", "'repair'")
    data = _data((6,))
    with pytest.raises(InvalidArgumentError) as single:
        evaluate(_mixed(0), data, bn="repair")
    _one_line(single, "'repair'", "profile")
    sets = {k: v[None] for k, v in _mixed(0).state_dict().items() if v.is_floating_point()}
    with pytest.raises(InvalidArgumentError) as batched:
        evaluate_sets(_mixed(0), sets, {"train": data}, bn_data=data, plan=PLAN)
    _one_line(batched, "'repair'", "profile")
    with pytest.raises(InvalidArgumentError) as moved:
        plan_or_loose(PLAN, EvalPlan(), recomputes="local energy moves the weights")
    _one_line(moved, "'repair'")
    with pytest.raises(InvalidArgumentError) as no_weights:
        PathRepair(_NoWeights(_mixed(0), [_mixed(0).state_dict()]), data, plan=PLAN)
    _one_line(no_weights, "custom")


@pytest.mark.parametrize(
    ("model", "needles"),
    [
        (_Residual, ("'block'", "add", "residual")),
        (_Shared, ("'hidden'", "2 times")),
        (
            lambda: nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 3)),
            ("'0'", "bias"),
        ),
    ],
)
def test_unrepairable_models_are_refused(
    model: Callable[[], nn.Module], needles: tuple[str, ...]
) -> None:
    with pytest.raises(UnsupportedModelError) as refused:
        repair_layout(model())
    _one_line(refused, "REPAIR refuses", *needles)


def _trained_pair() -> tuple[nn.Module, nn.Module, Split]:
    """Two no-BatchNorm ReLU MLPs fitted for a few steps on one small seeded task."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(96, 6, generator=generator, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    nets = []
    for seed in (0, 1):
        net = mlp(6, [16, 16], 3, batchnorm=False, seed=seed).double()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
        for _ in range(60):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x[:64]), y[:64]).backward()
            optimizer.step()
        nets.append(net.eval())
    return nets[0], nets[1], Split(TensorData(x[:64], y[:64]), TensorData(x[64:], y[64:]))


def test_a_profile_with_repair_runs_end_to_end() -> None:
    a, b, split = _trained_pair()
    path = geodesic(a, b)
    plain = profile(
        path,
        split,
        points=5,
        plan=EvalPlan(bn_samples=SAMPLES, bn_batch_size=BATCH, seed=SEED),
        progress=False,
    )
    repaired = profile(path, split, points=5, refine=1, plan=PLAN, progress=False)
    assert repaired.bn == "repair" and repaired.to_dict()["bn"] == "repair"
    assert len(repaired.ts) == 7 and repaired.test_loss is not None
    for metric in ("train_loss", "test_loss", "train_error", "test_error"):
        ends = [plain.values(metric)[0], plain.values(metric)[-1]]  # type: ignore[arg-type]
        got = [repaired.values(metric)[0], repaired.values(metric)[-1]]  # type: ignore[arg-type]
        assert got == pytest.approx(ends, abs=1e-9), metric
    middle = repaired.ts.index(0.5)
    assert repaired.train_loss[middle] != pytest.approx(plain.train_loss[2], abs=1e-6)


def test_the_default_profile_is_unchanged() -> None:
    path, data, _ = _case("mixed")
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    default = profile(path, data, points=5, progress=False)
    explicit = profile(
        path,
        data,
        ts=ts,
        plan=EvalPlan(
            bn="recompute", bn_samples=2000, bn_batch_size=500, batch_size=500, seed=0, max_sets=32
        ),
        progress=False,
    )
    direct = evaluate_sets(
        path.template, path.sets(ts), {"train": data}, bn_data=data, plan=EvalPlan(max_sets=32)
    )["train"]
    assert default.bn == "recompute"
    assert default.train_loss == explicit.train_loss == tuple(float(v) for v in direct.loss)
    assert default.train_error == tuple(float(v) for v in direct.error)
