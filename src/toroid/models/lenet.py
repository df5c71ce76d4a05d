"""LeNet-5: two conv/pool stages and three fully connected layers; or its binary variant."""

from __future__ import annotations

from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models.config import attach_config, check_positive, initialization_seed
from toroid.models.layers import BinaryConv2d, BinaryLinear
from toroid.models.mlp import Activation, activation_module, binary_key, resolve_activation


def lenet5(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    batchnorm: bool = True,
    activation: Activation | None = None,
    binary: bool = False,
    seed: int | None = None,
) -> nn.Sequential:
    """conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> fc(num_classes), with
    BatchNorm after every hidden layer by default and relu unless `activation` says
    otherwise. 28x28 inputs are padded by 2 as in the original 32x32 design; any
    input_size >= 28 works.

    `binary=True`: binary conv/linear layers (sign of latent weights) and sign activations;
    each conv stage is conv -> average pool -> BatchNorm -> Sign (average, not max, pooling
    keeps the per-unit sign symmetry, and pooling before the sign keeps every activation
    +-1); the output layer is a BinaryLinear followed by BatchNorm1d(num_classes).

    `seed`: the initialization is drawn from it, leaving the global generator as it was;
    None (the default) draws from the global generator.
    """
    if seed is not None:
        with initialization_seed(seed):
            return lenet5(
                in_channels=in_channels,
                num_classes=num_classes,
                input_size=input_size,
                batchnorm=batchnorm,
                activation=activation,
                binary=binary,
            )
    check_positive("in_channels", in_channels)
    check_positive("num_classes", num_classes)
    resolved = resolve_activation(activation, binary=binary, batchnorm=batchnorm)
    if input_size < 28:
        raise InvalidArgumentError(f"lenet5 needs input_size >= 28, got {input_size}")
    pad = 2 if input_size < 32 else 0
    side = ((input_size + 2 * pad - 4) // 2 - 4) // 2
    config = {
        "name": "lenet5",
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_size": input_size,
        "batchnorm": batchnorm,
        "activation": resolved,
        **binary_key(binary),
    }
    if binary:
        return attach_config(  # type: ignore[return-value]
            _binary_lenet5(in_channels, num_classes, pad, side), config
        )
    bias = not batchnorm

    def norm(kind: type[nn.Module], n: int) -> list[nn.Module]:
        return [kind(n)] if batchnorm else []

    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 6, 5, padding=pad, bias=bias),
        *norm(nn.BatchNorm2d, 6),
        activation_module(resolved),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=bias),
        *norm(nn.BatchNorm2d, 16),
        activation_module(resolved),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120, bias=bias),
        *norm(nn.BatchNorm1d, 120),
        activation_module(resolved),
        nn.Linear(120, 84, bias=bias),
        *norm(nn.BatchNorm1d, 84),
        activation_module(resolved),
        nn.Linear(84, num_classes),
    ]
    return attach_config(nn.Sequential(*layers), config)  # type: ignore[return-value]


def _binary_lenet5(in_channels: int, num_classes: int, pad: int, side: int) -> nn.Sequential:
    return nn.Sequential(
        BinaryConv2d(in_channels, 6, 5, padding=pad, bias=False),
        nn.AvgPool2d(2),
        nn.BatchNorm2d(6),
        activation_module("sign"),
        BinaryConv2d(6, 16, 5, bias=False),
        nn.AvgPool2d(2),
        nn.BatchNorm2d(16),
        activation_module("sign"),
        nn.Flatten(),
        BinaryLinear(16 * side * side, 120, bias=False),
        nn.BatchNorm1d(120),
        activation_module("sign"),
        BinaryLinear(120, 84, bias=False),
        nn.BatchNorm1d(84),
        activation_module("sign"),
        BinaryLinear(84, num_classes, bias=False),
        nn.BatchNorm1d(num_classes),
    )
