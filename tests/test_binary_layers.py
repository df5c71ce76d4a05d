"""Binary layers and models: +-1 forward, straight-through gradients, latent clipping,
configs and checkpoints, batched evaluation, and training to zero error through fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from toroid import checkpoint
from toroid.data import Split, load
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, evaluate, evaluate_sets, stack_states
from toroid.models import (
    BinaryConv2d,
    BinaryLinear,
    build,
    is_binary,
    lenet5,
    mlp,
    model_config,
)
from toroid.models.layers import binarize, sign_ste
from toroid.train import fit


@pytest.fixture(scope="module")
def small() -> Split:
    return load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=240, test_samples=120, seed=0
    )


def binary_mlp(seed: int = 0, widths: tuple[int, ...] = (64,)) -> torch.nn.Module:
    config = {"name": "mlp", "in_features": 12, "widths": list(widths), "num_classes": 3}
    return build({**config, "binary": True}, seed=seed)


# ---------------------------------------------------------------- forward and gradient


def test_sign_and_binarize_are_pm1_with_plus_one_at_zero() -> None:
    x = torch.tensor([-2.0, -0.5, -0.0, 0.0, 0.3, 3.0])
    expected = torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    assert torch.equal(sign_ste(x), expected)
    assert torch.equal(binarize(x), expected)


def test_sign_gradient_is_the_hardtanh_straight_through_estimator() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    upstream = torch.arange(1.0, 8.0)
    (sign_ste(x) * upstream).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, upstream * torch.tensor([0.0, 1, 1, 1, 1, 1, 0]))


def test_binarize_gradient_is_the_identity() -> None:
    w = torch.tensor([-3.0, -0.2, 0.0, 0.7, 5.0], requires_grad=True)
    upstream = torch.tensor([0.5, -1.0, 2.0, 3.0, -4.0])
    (binarize(w) * upstream).sum().backward()
    assert w.grad is not None
    assert torch.equal(w.grad, upstream)


def test_binary_linear_matches_a_linear_layer_with_sign_weights() -> None:
    """Forward: F.linear with sign(w); backward: the latent weight receives the gradient
    of the +-1 weight (straight through), checked against autograd on a leaf sign weight."""
    torch.manual_seed(0)
    layer = BinaryLinear(5, 3, bias=True)
    x = torch.randn(7, 5)
    upstream = torch.randn(7, 3)
    (layer(x) * upstream).sum().backward()
    signs = torch.where(layer.weight >= 0, 1.0, -1.0).detach().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    baseline = F.linear(x, signs, bias)
    (baseline * upstream).sum().backward()
    assert torch.equal(layer(x), baseline)
    assert layer.weight.grad is not None and signs.grad is not None
    torch.testing.assert_close(layer.weight.grad, signs.grad, rtol=0, atol=0)
    assert layer.bias.grad is not None and bias.grad is not None
    torch.testing.assert_close(layer.bias.grad, bias.grad, rtol=0, atol=0)


def test_binary_conv_matches_a_conv_with_sign_weights() -> None:
    torch.manual_seed(1)
    layer = BinaryConv2d(2, 4, 3, padding=1, bias=False)
    x = torch.randn(3, 2, 6, 6)
    upstream = torch.randn(3, 4, 6, 6)
    (layer(x) * upstream).sum().backward()
    signs = torch.where(layer.weight >= 0, 1.0, -1.0).detach().requires_grad_()
    baseline = F.conv2d(x, signs, padding=1)
    (baseline * upstream).sum().backward()
    assert torch.equal(layer(x), baseline)
    assert layer.weight.grad is not None and signs.grad is not None
    torch.testing.assert_close(layer.weight.grad, signs.grad, rtol=0, atol=0)


def test_latent_weights_are_clipped_in_training_forward_and_on_mode_switch() -> None:
    layer = BinaryLinear(4, 2, bias=False)
    wild = torch.tensor([[3.0, -0.5, -2.0, 0.25], [-7.0, 1.5, 0.0, -1.0]])
    clipped = wild.clamp(-1, 1)
    x = torch.randn(5, 4)
    expected = F.linear(x, torch.where(wild >= 0, 1.0, -1.0))

    with torch.no_grad():
        layer.weight.copy_(wild)
    layer.eval()  # a mode switch clips
    assert torch.equal(layer.weight, clipped)

    with torch.no_grad():
        layer.weight.copy_(wild)
    assert torch.equal(layer(x), expected)  # an eval-mode forward leaves the weights alone
    assert torch.equal(layer.weight, wild)

    layer.train()
    with torch.no_grad():
        layer.weight.copy_(wild)
    assert torch.equal(layer(x), expected)  # clipping never changes the signs
    assert torch.equal(layer.weight, clipped)


# ---------------------------------------------------------------- models and configs


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: mlp(12, [9, 7], 4, binary=True), (5, 12)),
        (lambda: lenet5(binary=True), (2, 1, 28, 28)),
    ],
)
def test_binary_models_round_trip_through_config_and_checkpoint(
    make: object, shape: tuple[int, ...], tmp_path: Path
) -> None:
    model = make()  # type: ignore[operator]
    assert is_binary(model)
    config = model_config(model)
    assert config["binary"] is True and config["activation"] == "sign"
    rebuilt = build(config, seed=0)
    assert model_config(rebuilt) == config
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]
    x = torch.randn(*shape)
    model.train()
    model(x)  # running statistics away from their initial values
    model.eval()
    checkpoint.save(model, tmp_path / "ckpt")
    loaded, meta = checkpoint.load(tmp_path / "ckpt")
    assert meta["model"] == config
    assert is_binary(loaded)
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    assert torch.equal(loaded(x), model(x))


def test_float_model_configs_are_unchanged() -> None:
    """No 'binary' key for float models: old checkpoints and resumable runs still match."""
    assert model_config(mlp(4, [3], 2)) == {
        "name": "mlp",
        "in_features": 4,
        "widths": [3],
        "num_classes": 2,
        "batchnorm": True,
        "activation": "relu",
    }
    assert "binary" not in model_config(lenet5())
    assert not is_binary(mlp(4, [3], 2, activation="sign"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "relu"}, "sign activations"),
        ({"batchnorm": False}, "batchnorm=True"),
        ({"binary": "yes"}, "binary must be"),
    ],
)
def test_bad_binary_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    arguments = {"binary": True, **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        mlp(4, [3], 2, **arguments)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=message):
        lenet5(**arguments)  # type: ignore[arg-type]


def test_evaluate_sets_equals_evaluate_on_binary_networks(small: Split) -> None:
    """The vmap path (batched sign activations and weights) against the one-at-a-time loop,
    BatchNorm statistics recomputed."""
    model = binary_mlp(widths=(16, 8))
    gen = torch.Generator().manual_seed(3)
    states = []
    for _ in range(3):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name, value in state.items():
            if name.endswith("weight"):
                state[name] = value + 0.5 * torch.randn(value.shape, generator=gen)
        states.append(state)
    names = [n for n, _ in model.named_parameters()]
    many = evaluate_sets(
        model,
        stack_states([{n: s[n] for n in names} for s in states]),
        {"test": small.test},
        bn_data=small.train,
        plan=EvalPlan(bn_samples=None, bn_batch_size=120),
    )["test"]
    for k, state in enumerate(states):
        one = build(model_config(model))
        one.load_state_dict(state)
        single = evaluate(
            one, small.test, bn="recompute", bn_data=small.train, bn_samples=None, bn_batch_size=120
        )
        assert float(many.error[k]) == single.error
        assert float(many.loss[k]) == pytest.approx(single.loss, rel=1e-5)
    assert len(set(many.error.tolist())) > 1  # the three sets are different networks


# ---------------------------------------------------------------- training


def test_binary_mlp_reaches_zero_training_error_through_fit(small: Split) -> None:
    """BinaryConnect through the ordinary trainer: Adam's steps of about lr per weight push
    latent weights past 1 within a few steps, so the clipping must be active (some latent
    weights sit at exactly +-1) for the bounds to hold."""
    result = fit(
        binary_mlp(seed=0),
        small,
        optimizer={"name": "adam", "lr": 0.1},
        epochs=40,
        batch_size=32,
        seed=0,
        progress=False,
    )
    assert result.reached_zero_train_error
    assert evaluate(result.model, small.train).error == 0.0
    latent = [m.weight.detach() for m in result.model.modules() if isinstance(m, BinaryLinear)]
    assert all(float(w.abs().max()) <= 1.0 for w in latent)
    assert any(bool((w.abs() == 1.0).any()) for w in latent)


@pytest.mark.parametrize("optimizer", ["sam", "rsgd"])
def test_flatness_seeking_optimizers_train_binary_networks_unchanged(
    optimizer: str, small: Split
) -> None:
    """Presets with their own step logic (a perturbed second gradient, replicas) go
    through the latent weights like plain SGD."""
    model = binary_mlp(seed=1, widths=(32,))
    result = fit(model, small, optimizer=optimizer, epochs=15, batch_size=32, progress=False)
    assert result.reached_zero_train_error
    latent = [m.weight.detach() for m in result.model.modules() if isinstance(m, BinaryLinear)]
    assert all(float(w.abs().max()) <= 1.0 for w in latent)
