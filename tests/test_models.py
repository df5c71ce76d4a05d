"""Built-in models: output shapes, the no-bias-before-BatchNorm rule, configs that rebuild,
the GELU/SiLU and LayerNorm/RMSNorm/GroupNorm variants, and configs that stay as they were."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models import build, lenet5, mlp, model_config, resnet, vgg, vit

CASES = [
    (lambda: mlp(784, [32, 16], 10), (1, 28, 28), 10),
    (lambda: mlp(40, [8], 3, batchnorm=False, activation="tanh"), (1, 40), 3),
    (lambda: lenet5(), (1, 28, 28), 10),
    (lambda: lenet5(in_channels=3, input_size=32, num_classes=100), (3, 32, 32), 100),
    (lambda: vgg(11, width=0.125), (3, 32, 32), 10),
    (lambda: vgg(16, width=0.0625, in_channels=1), (1, 28, 28), 10),
    (lambda: resnet(20), (3, 32, 32), 10),
    (lambda: resnet(18, width=1, num_classes=7), (3, 32, 32), 7),
    (lambda: mlp(40, [8, 6], 3, norm="layernorm", activation="gelu"), (1, 40), 3),
    (lambda: mlp(40, [8], 3, norm="rmsnorm", activation="silu"), (40,), 3),
    (lambda: lenet5(norm="groupnorm", activation="gelu"), (1, 28, 28), 10),
    (lambda: lenet5(norm="groupnorm", groups=1, input_size=32), (1, 32, 32), 10),
    (lambda: vit(image_size=8, patch=4, dim=8, heads=2, mlp_dim=16), (1, 8, 8), 10),
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
                "activation": "swish",
            },
            "activation must be one of 'relu', 'tanh', 'sign', 'gelu', 'silu', got 'swish'",
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
    lambda seed: mlp(12, [8], 3, norm="layernorm", activation="gelu", seed=seed),
    lambda seed: lenet5(norm="groupnorm", seed=seed),
    lambda seed: vit(image_size=8, patch=4, dim=8, heads=2, mlp_dim=16, seed=seed),
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


# The configs (and their JSON) that models built before `norm`, GELU/SiLU and GroupNorm
# existed carry: old checkpoints and study task hashes depend on them byte for byte.
OLD_CONFIGS = [
    (
        lambda: mlp(784, [32, 16], 10),
        '{"name": "mlp", "in_features": 784, "widths": [32, 16], "num_classes": 10, '
        '"batchnorm": true, "activation": "relu"}',
    ),
    (
        lambda: mlp(40, [8], 3, batchnorm=False, activation="tanh"),
        '{"name": "mlp", "in_features": 40, "widths": [8], "num_classes": 3, '
        '"batchnorm": false, "activation": "tanh"}',
    ),
    (
        lambda: mlp(12, [9], 4, binary=True),
        '{"name": "mlp", "in_features": 12, "widths": [9], "num_classes": 4, '
        '"batchnorm": true, "activation": "sign", "binary": true}',
    ),
    (
        lambda: lenet5(),
        '{"name": "lenet5", "in_channels": 1, "num_classes": 10, "input_size": 28, '
        '"batchnorm": true, "activation": "relu"}',
    ),
    (
        lambda: lenet5(in_channels=3, input_size=32, batchnorm=False),
        '{"name": "lenet5", "in_channels": 3, "num_classes": 10, "input_size": 32, '
        '"batchnorm": false, "activation": "relu"}',
    ),
    (
        lambda: lenet5(binary=True),
        '{"name": "lenet5", "in_channels": 1, "num_classes": 10, "input_size": 28, '
        '"batchnorm": true, "activation": "sign", "binary": true}',
    ),
]


@pytest.mark.parametrize(("make", "expected"), OLD_CONFIGS)
def test_old_configs_are_byte_identical(make: Any, expected: str) -> None:
    config = model_config(make())
    assert json.dumps(config) == expected
    assert model_config(build(json.loads(expected))) == config


@pytest.mark.parametrize(
    ("explicit", "flag"),
    [
        (lambda: mlp(6, [4], 2, norm="batchnorm"), lambda: mlp(6, [4], 2, batchnorm=True)),
        (lambda: mlp(6, [4], 2, norm="none"), lambda: mlp(6, [4], 2, batchnorm=False)),
        (lambda: lenet5(norm="batchnorm", batchnorm=True), lambda: lenet5()),
        (lambda: lenet5(norm="none"), lambda: lenet5(batchnorm=False)),
    ],
)
def test_norm_names_what_the_flag_said(explicit: Any, flag: Any) -> None:
    """norm='batchnorm'/'none' build the same layers and the same config as the flag."""
    a, b = explicit(), flag()
    assert json.dumps(model_config(a)) == json.dumps(model_config(b))
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]


@pytest.mark.parametrize(
    ("make", "norm_type", "extra"),
    [
        (lambda: mlp(6, [5, 4], 2, norm="layernorm"), nn.LayerNorm, {"norm": "layernorm"}),
        (lambda: mlp(6, [5, 4], 2, norm="rmsnorm"), nn.RMSNorm, {"norm": "rmsnorm"}),
        (
            lambda: lenet5(norm="groupnorm"),
            nn.GroupNorm,
            {"norm": "groupnorm", "groups": 2},
        ),
        (
            lambda: lenet5(norm="groupnorm", groups=1, batchnorm=False),
            nn.GroupNorm,
            {"norm": "groupnorm", "groups": 1},
        ),
    ],
)
def test_other_norms_follow_every_hidden_layer_and_add_keys(
    make: Any, norm_type: type[nn.Module], extra: dict[str, Any]
) -> None:
    model = make()
    config = model_config(model)
    assert config["batchnorm"] is False and {k: config[k] for k in extra} == extra
    assert list(config)[-len(extra) :] == list(extra)  # new keys come last
    assert model_config(build(json.loads(json.dumps(config)))) == config
    layers = list(model)
    norms = [i for i, m in enumerate(layers) if isinstance(m, norm_type)]
    hidden = [i for i, m in enumerate(layers[:-1]) if isinstance(m, nn.Linear | nn.Conv2d)]
    assert [i - 1 for i in norms] == hidden  # one norm right after each hidden layer
    # These norms do not absorb a bias (only BatchNorm does): every layer keeps its own.
    assert all(layers[i].bias is not None for i in hidden)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layers)
    if norm_type is nn.GroupNorm:
        assert {layers[i].num_groups for i in norms} == {extra["groups"]}
        assert [layers[i].num_channels for i in norms] == [6, 16, 120, 84]


@pytest.mark.parametrize(
    ("activation", "module"), [("gelu", nn.GELU), ("silu", nn.SiLU), ("tanh", nn.Tanh)]
)
def test_activation_is_used_after_every_hidden_layer(
    activation: Any, module: type[nn.Module]
) -> None:
    for model, hidden in (
        (mlp(6, [5, 4], 2, activation=activation), 2),
        (lenet5(activation=activation), 4),
    ):
        assert sum(isinstance(m, module) for m in model.modules()) == hidden
        assert model_config(model)["activation"] == activation
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_layernorm_mlp_normalizes_each_sample() -> None:
    """The hidden pre-activations after the LayerNorm have mean 0 and variance 1 per sample
    (identity affine at initialization), whatever the batch."""
    model = mlp(6, [5], 2, norm="layernorm", seed=0).double()
    x = torch.randn(3, 6, dtype=torch.float64) * 10 + 3
    h = model[2](model[1](model[0](x)))
    assert torch.allclose(h.mean(dim=1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        h.var(dim=1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4
    )
    # Per sample: a sample's output does not depend on the rest of the batch.
    assert torch.allclose(model.train()(x)[:1], model(x[:1]), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: mlp(4, [3], 2, norm="groupnorm"),
            "norm must be one of 'batchnorm', 'layernorm', 'rmsnorm', 'none', got 'groupnorm'",
        ),
        (
            lambda: lenet5(norm="layernorm"),
            "norm must be one of 'batchnorm', 'groupnorm', 'none', got 'layernorm'",
        ),
        (
            lambda: mlp(4, [3], 2, batchnorm=True, norm="layernorm"),
            "batchnorm=True contradicts norm='layernorm'",
        ),
        (lambda: lenet5(batchnorm=False, norm="batchnorm"), "batchnorm=False contradicts"),
        (lambda: mlp(4, [3], 2, batchnorm="yes"), "batchnorm must be true or false, got 'yes'"),
        (
            lambda: lenet5(groups=2),
            "groups applies only to norm='groupnorm', got groups=2 with norm='batchnorm'",
        ),
        (
            lambda: lenet5(norm="groupnorm", groups=3),
            "groups must divide every normalized width (6, 16, 120, 84): one of 1, 2, got 3",
        ),
        (lambda: lenet5(norm="groupnorm", groups=True), "groups must divide"),
        (
            lambda: mlp(4, [3], 2, binary=True, norm="layernorm"),
            "binary networks need batchnorm=True (norm='batchnorm'), got norm='layernorm'",
        ),
        (lambda: lenet5(binary=True, norm="groupnorm"), "binary networks need batchnorm=True"),
        (lambda: mlp(4, [3], 2, binary=True, activation="gelu"), "sign activations"),
    ],
)
def test_bad_variants_are_refused_in_one_line(make: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)
