"""The Vision Transformer: shapes, its patch embedding against a slow loop, seeded
initialization, the config round trip, fx tracing, deterministic forwards, refused
arguments, and study configs that name it (and the new MLP variants)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from toroid import checkpoint
from toroid.errors import InvalidArgumentError
from toroid.models import PatchEmbedding, VisionTransformer, build, model_config, vit
from toroid.study.config import validate_config

TINY = {"image_size": 8, "patch": 4, "dim": 8, "depth": 2, "heads": 2, "mlp_dim": 16}


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("kwargs", "shape", "classes"),
    [
        ({}, (1, 28, 28), 10),
        ({"pool": "mean"}, (1, 28, 28), 10),
        ({"in_channels": 3, "image_size": 32, "patch": 8, "num_classes": 7}, (3, 32, 32), 7),
        ({**TINY, "depth": 1, "heads": 1, "pool": "mean"}, (1, 8, 8), 10),
    ],
)
def test_output_shape(kwargs: dict[str, Any], shape: tuple[int, ...], classes: int) -> None:
    out = vit(**kwargs, seed=0).eval()(torch.randn(3, *shape))
    assert out.shape == (3, classes)


def test_default_size() -> None:
    """16 tokens of width 64 (plus the class token), two blocks: the count by hand."""
    dim, mlp_dim, tokens, patch_dim = 64, 128, 16, 49
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim)
    block += dim * mlp_dim + mlp_dim + mlp_dim * dim + dim
    expected = (patch_dim * dim + dim) + dim + (tokens + 1) * dim + 2 * block + 2 * dim
    expected += dim * 10 + 10
    model = vit()
    assert sum(p.numel() for p in model.parameters()) == expected == 72074
    assert model.position.shape == (1, 17, 64)
    assert sum(isinstance(m, nn.MultiheadAttention) for m in model.modules()) == 2


@pytest.mark.parametrize("channels", [1, 3])
def test_patch_embedding_matches_a_loop_over_patches(channels: int) -> None:
    """Token k = the Linear of patch (k // grid, k % grid), flattened channel-major."""
    torch.manual_seed(0)
    embed = PatchEmbedding(channels, 12, 4, 5).double()
    x = torch.randn(2, channels, 12, 12, dtype=torch.float64)
    slow = torch.stack(
        [
            embed.linear(x[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(2, -1))
            for i in range(3)
            for j in range(3)
        ],
        dim=1,
    )
    assert torch.allclose(embed(x), slow, rtol=0, atol=1e-12)
    # The same as a strided convolution with the Linear's weights.
    conv = nn.functional.conv2d(
        x, embed.linear.weight.reshape(5, channels, 4, 4), embed.linear.bias, stride=4
    )
    assert torch.allclose(embed(x), conv.flatten(2).transpose(1, 2), rtol=0, atol=1e-12)


def test_seed_gives_the_same_weights_and_leaves_the_global_generator() -> None:
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a, b, c = vit(**TINY, seed=0), vit(**TINY, seed=0), vit(**TINY, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert _same(a, b) and not _same(a, c)
    assert not _same(vit(**TINY), vit(**TINY))  # unseeded: the global generator


def test_position_and_class_token_start_small_and_random() -> None:
    model = vit(seed=0)
    assert model.class_token is not None
    for tensor in (model.position, model.class_token):
        assert bool((tensor != 0).all()) and float(tensor.detach().abs().max()) < 0.035
        assert 0.01 < float(tensor.detach().std()) < 0.03
    mean_pooled = vit(pool="mean", seed=0)
    assert mean_pooled.class_token is None and mean_pooled.position.shape == (1, 16, 64)
    assert "class_token" not in dict(mean_pooled.named_parameters())


def test_config_round_trip_through_build() -> None:
    model = vit(**TINY, pool="mean", num_classes=3, seed=4)
    config = model_config(model)
    assert config == {
        "name": "vit",
        "in_channels": 1,
        "image_size": 8,
        "num_classes": 3,
        "patch": 4,
        "dim": 8,
        "depth": 2,
        "heads": 2,
        "mlp_dim": 16,
        "pool": "mean",
        "norm_eps": 1e-5,
    }
    assert json.loads(json.dumps(config)) == config
    rebuilt = build(json.loads(json.dumps(config)), seed=4)
    assert isinstance(rebuilt, VisionTransformer)
    assert model_config(rebuilt) == config and _same(rebuilt, model)
    assert model_config(vit())["pool"] == "cls"


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_checkpoint_round_trip(pool: str, tmp_path: Path) -> None:
    model = vit(**TINY, pool=pool, seed=3).eval()
    checkpoint.save(model, tmp_path / "ckpt")
    loaded, meta = checkpoint.load(tmp_path / "ckpt")
    assert meta["model"] == model_config(model) and _same(loaded, model)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_norm_eps_reaches_every_layernorm() -> None:
    model = vit(**TINY, norm_eps=1e-3)
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {1e-3} and sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 5


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_fx_traces_to_the_same_function(pool: str) -> None:
    model = vit(**TINY, pool=pool, seed=0).double().eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(traced(x), model(x), rtol=0, atol=1e-12)
    modules = dict(model.named_modules())
    calls = [n for n in traced.graph.nodes if n.op == "call_module"]
    attention = [n for n in calls if isinstance(modules[str(n.target)], nn.MultiheadAttention)]
    assert len(attention) == 2
    for node in attention:  # self-attention on one normalized input, no weights returned
        assert node.args[0] is node.args[1] is node.args[2]
        assert node.kwargs == {"need_weights": False}


def test_forwards_are_deterministic_without_dropout() -> None:
    model = vit(**TINY, seed=0).double()
    assert all(m.dropout == 0.0 for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    model.eval()
    assert torch.equal(model(x), model(x))
    # Training mode computes the same function: nothing is random, no BatchNorm.
    eval_out = model(x)
    assert torch.allclose(model.train()(x), eval_out, rtol=0, atol=1e-12)


def test_gradients_reach_every_parameter() -> None:
    model = vit(**TINY, seed=0)
    nn.functional.cross_entropy(model(torch.randn(6, 1, 8, 8)), torch.arange(6)).backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": 3}, "heads must divide dim 64, got heads=3"),
        ({"patch": 5}, "patch must divide image_size 28, got patch=5"),
        ({"pool": "max"}, "pool must be one of 'cls', 'mean', got 'max'"),
        ({"depth": 0}, "depth must be a positive integer, got 0"),
        ({"dim": True}, "dim must be a positive integer, got True"),
        ({"mlp_dim": 1.5}, "mlp_dim must be a positive integer, got 1.5"),
        ({"norm_eps": 0.0}, "norm_eps must be positive, got 0.0"),
        ({"norm_eps": "1e-5"}, "norm_eps must be a positive number"),
        ({"norm_eps": float("inf")}, "norm_eps must be a positive number, got inf"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        vit(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InvalidArgumentError, match="must"):
        build({"name": "vit", **kwargs})


def test_unknown_argument_is_refused_by_build() -> None:
    with pytest.raises(InvalidArgumentError, match="bad arguments for model 'vit'"):
        build({"name": "vit", "dropout": 0.1})


def test_builds_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = build({"name": "vit", **TINY}, seed=0)
    assert model.position.device.type == "meta"
    assert model.class_token is not None and model.class_token.device.type == "meta"


def test_study_config_accepts_a_vit_and_the_new_mlp_variants() -> None:
    """A study validates its model blocks by building them: a tiny ViT as the main model
    and a gelu/layernorm MLP on the grid's architecture axis both pass, and build."""
    small_mlp = {
        "name": "mlp",
        "in_features": 784,
        "widths": [8],
        "num_classes": 10,
        "batchnorm": False,
        "norm": "layernorm",
        "activation": "gelu",
    }
    tiny_vit = {"name": "vit", "patch": 7, "dim": 8, "depth": 1, "heads": 2, "mlp_dim": 16}
    raw = {
        "name": "tiny-vit",
        "data": {"name": "fashion-mnist"},
        "model": tiny_vit,
        "optimizers": ["sgd"],
        "seeds": [0],
        "grid": {"models": {"vit": tiny_vit, "mlp": small_mlp}},
    }
    config = validate_config(raw)
    assert config.model == tiny_vit and config.grid is not None
    assert isinstance(build(config.model, seed=0), VisionTransformer)
    layernorm_mlp = build(config.grid.models["mlp"], seed=0)  # type: ignore[index]
    assert model_config(layernorm_mlp) == small_mlp
    assert any(isinstance(m, nn.LayerNorm) for m in layernorm_mlp.modules())


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "vit", "heads": 5}, "model: heads must divide dim 64"),
        ({"name": "mlp", "in_features": 4, "widths": [3], "num_classes": 2, "norm": "x"}, "norm"),
    ],
)
def test_study_config_refuses_bad_new_models(model: dict[str, Any], message: str) -> None:
    from toroid.study import StudyConfigError

    raw = {"data": {"name": "fashion-mnist"}, "model": model, "optimizers": ["sgd"], "seeds": [0]}
    with pytest.raises(StudyConfigError, match=message):
        validate_config(raw)
