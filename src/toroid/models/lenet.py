"""LeNet-5: two conv/pool stages and three fully connected layers; or its binary variant."""

from __future__ import annotations

from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models.config import attach_config, check_positive, initialization_seed
from toroid.models.layers import BinaryConv2d, BinaryLinear
from toroid.models.mlp import Activation, activation_module, binary_key, resolve_activation
from toroid.models.norms import (
    LENET_NORMS,
    Norm,
    norm_keys,
    norm_layer,
    resolve_groups,
    resolve_norm,
)

# The hidden widths: two conv stages' channels, then two fully connected layers.
WIDTHS = (6, 16, 120, 84)


def lenet5(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    batchnorm: bool | None = None,
    norm: Norm | None = None,
    groups: int | None = None,
    activation: Activation | None = None,
    binary: bool = False,
    seed: int | None = None,
) -> nn.Sequential:
    """conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> fc(num_classes), with
    a norm after every hidden layer and relu unless `activation` says otherwise. 28x28
    inputs are padded by 2 as in the original 32x32 design; any input_size >= 28 works.

    `norm`: 'batchnorm' (the default; `batchnorm=True` says the same), 'groupnorm' or
    'none' (`batchnorm=False`). GroupNorm splits every hidden layer (conv channels and
    fully connected units alike) into `groups` groups (default 2; it must divide 6, 16,
    120 and 84, so 1 or 2; 1 normalizes each sample over the whole layer). A layer that
    feeds a BatchNorm has no bias (BN absorbs it); one that feeds a GroupNorm keeps it.

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
                norm=norm,
                groups=groups,
                activation=activation,
                binary=binary,
            )
    check_positive("in_channels", in_channels)
    check_positive("num_classes", num_classes)
    resolved_norm = resolve_norm(norm, batchnorm=batchnorm, valid=LENET_NORMS, binary=binary)
    resolved_groups = resolve_groups(resolved_norm, groups, WIDTHS)
    has_bn = resolved_norm == "batchnorm"
    resolved = resolve_activation(activation, binary=binary, batchnorm=has_bn)
    if input_size < 28:
        raise InvalidArgumentError(f"lenet5 needs input_size >= 28, got {input_size}")
    pad = 2 if input_size < 32 else 0
    side = ((input_size + 2 * pad - 4) // 2 - 4) // 2
    config = {
        "name": "lenet5",
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_size": input_size,
        "batchnorm": has_bn,
        "activation": resolved,
        **binary_key(binary),
        **norm_keys(resolved_norm, resolved_groups),
    }
    if binary:
        return attach_config(  # type: ignore[return-value]
            _binary_lenet5(in_channels, num_classes, pad, side), config
        )
    bias = not has_bn

    def norm_after(n: int, *, spatial: bool) -> list[nn.Module]:
        if resolved_norm == "none":
            return []
        return [norm_layer(resolved_norm, n, spatial=spatial, groups=resolved_groups)]

    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 6, 5, padding=pad, bias=bias),
        *norm_after(6, spatial=True),
        activation_module(resolved),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=bias),
        *norm_after(16, spatial=True),
        activation_module(resolved),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120, bias=bias),
        *norm_after(120, spatial=False),
        activation_module(resolved),
        nn.Linear(120, 84, bias=bias),
        *norm_after(84, spatial=False),
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
