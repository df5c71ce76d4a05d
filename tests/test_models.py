"""Built-in models: output shapes, the no-bias-before-BatchNorm rule, configs that rebuild."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models import build, lenet5, mlp, model_config, resnet, vgg

CASES = [
    (lambda: mlp(784, [32, 16], 10), (1, 28, 28), 10),
    (lambda: mlp(40, [8], 3, batchnorm=False, activation="tanh"), (1, 40), 3),
    (lambda: lenet5(), (1, 28, 28), 10),
    (lambda: lenet5(in_channels=3, input_size=32, num_classes=100), (3, 32, 32), 100),
    (lambda: vgg(11, width=0.125), (3, 32, 32), 10),
    (lambda: vgg(16, width=0.0625, in_channels=1), (1, 28, 28), 10),
    (lambda: resnet(20), (3, 32, 32), 10),
    (lambda: resnet(18, width=1, num_classes=7), (3, 32, 32), 7),
]


@pytest.mark.parametrize(("make", "shape", "classes"), CASES)
def test_output_shape(make: object, shape: tuple[int, ...], classes: int) -> None:
    model = make()  # type: ignore[operator]
    out = model.eval()(torch.randn(2, *shape))
    assert out.shape == (2, classes)


def _feeds_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Every Linear/Conv whose output goes straight into a BatchNorm, found by tracing."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    producers = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(
            modules[node.target], nn.modules.batchnorm._BatchNorm
        ):
            source = node.args[0]
            if isinstance(source, torch.fx.Node) and source.op == "call_module":
                producers.append(modules[source.target])
    return producers


@pytest.mark.parametrize(("make", "shape", "classes"), CASES)
def test_no_bias_before_batchnorm(make: object, shape: tuple[int, ...], classes: int) -> None:
    model = make()  # type: ignore[operator]
    producers = _feeds_batchnorm(model)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert bool(producers) == has_bn
    assert all(isinstance(p, nn.Linear | nn.Conv2d) and p.bias is None for p in producers)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.bias is not None  # the output layer keeps its bias


def test_resnet_depths_have_the_right_number_of_convs() -> None:
    def convs(m: nn.Module) -> int:
        return sum(isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules())

    assert convs(resnet(20)) == 19 and convs(resnet(32)) == 31 and convs(resnet(18)) == 17


@pytest.mark.parametrize(("make", "shape", "classes"), CASES)
def test_config_rebuilds_the_architecture(
    make: object, shape: tuple[int, ...], classes: int
) -> None:
    model = make()  # type: ignore[operator]
    rebuilt = build(model_config(model))
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in rebuilt.state_dict().items()
    }
    assert model_config(rebuilt) == model_config(model)


def test_seeded_build_is_deterministic_and_leaves_global_rng() -> None:
    config = model_config(mlp(10, [6], 2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = build(config, seed=1), build(config, seed=1), build(config, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "transformer"}, "unknown model 'transformer'"),
        (
            {
                "name": "mlp",
                "in_features": 4,
                "widths": [3],
                "num_classes": 2,
                "activation": "gelu",
            },
            "activation",
        ),
        ({"name": "vgg", "depth": 12}, "depth"),
        ({"name": "resnet", "depth": 56}, "depth"),
        ({"name": "mlp", "in_features": 4, "widths": [0], "num_classes": 2}, "width"),
        ({"name": "mlp", "in_features": 4, "num_classes": 2, "colour": 1}, "bad arguments"),
    ],
)
def test_bad_configs(config: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        build(config)


def test_plain_module_has_no_config() -> None:
    with pytest.raises(InvalidArgumentError, match="carries no toroid config"):
        model_config(nn.Linear(2, 2))


_SEEDED = [
    lambda seed: mlp(12, [8], 3, seed=seed),
    lambda seed: mlp(12, [8], 3, binary=True, seed=seed),
    lambda seed: lenet5(seed=seed),
    lambda seed: lenet5(binary=True, seed=seed),
    lambda seed: vgg(11, width=0.0625, seed=seed),
    lambda seed: resnet(20, seed=seed),
]


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("make", _SEEDED)
def test_constructors_take_a_seed_and_leave_the_global_generator(make: object) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = make(0), make(0)  # type: ignore[operator]
    assert torch.equal(torch.get_rng_state(), before)  # global generator untouched
    assert _same(a, b) and not _same(a, make(1))  # type: ignore[operator]
    # Without a seed, the global generator is used (two calls differ).
    assert not _same(make(None), make(None))  # type: ignore[operator]


def test_seeded_constructor_matches_build() -> None:
    net = mlp(12, [8], 3, seed=5)
    assert _same(net, build(model_config(net), seed=5))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed_refused(seed: object) -> None:
    with pytest.raises(InvalidArgumentError, match="seed must be"):
        mlp(4, [2], 2, seed=seed)  # type: ignore[arg-type]


def test_fit_twice_from_seeded_constructor_is_identical() -> None:
    from toroid.data import load
    from toroid.train import fit

    split = load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=64, test_samples=16, seed=0
    )
    runs = [
        fit(mlp(12, [8], 3, seed=0), split, epochs=2, batch_size=16, seed=0, progress=False)
        for _ in range(2)
    ]
    assert _same(runs[0].model, runs[1].model)
