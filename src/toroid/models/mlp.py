"""Fully connected classifier: Linear [-> norm] -> activation per hidden layer; or its
binary variant, BinaryLinear -> BatchNorm -> Sign per hidden layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.models.config import (
    attach_config,
    check_choice,
    check_positive,
    initialization_seed,
)
from toroid.models.layers import BinaryLinear, Sign
from toroid.models.norms import MLP_NORMS, Norm, norm_keys, norm_layer, resolve_norm

Activation = Literal["relu", "tanh", "sign", "gelu", "silu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sign": Sign,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def activation_module(name: str) -> nn.Module:
    check_choice("activation", name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]()


def resolve_activation(
    activation: Activation | None, *, binary: bool, batchnorm: bool
) -> Activation:
    """The activation a model uses: relu by default, sign for binary networks, which also
    need BatchNorm (the per-unit threshold in front of every sign)."""
    if not isinstance(binary, bool):
        raise InvalidArgumentError(f"binary must be true or false, got {binary!r}")
    if not binary:
        resolved: Activation = "relu" if activation is None else activation
        check_choice("activation", resolved, tuple(ACTIVATIONS))
        return resolved
    if activation not in (None, "sign"):
        raise InvalidArgumentError(
            f"binary networks use sign activations; got activation={activation!r} "
            "(leave it unset or pass 'sign')"
        )
    if not batchnorm:
        raise InvalidArgumentError(
            "binary networks need batchnorm=True: BatchNorm is the threshold of each sign unit"
        )
    return "sign"


def binary_key(binary: bool) -> dict[str, Any]:
    # Float models keep the config they always had (old checkpoints and resumable runs
    # match it); only binary models carry the key.
    return {"binary": True} if binary else {}


def mlp(
    in_features: int,
    widths: Sequence[int],
    num_classes: int,
    *,
    batchnorm: bool | None = None,
    norm: Norm | None = None,
    activation: Activation | None = None,
    binary: bool = False,
    seed: int | None = None,
) -> nn.Sequential:
    """Flatten, then one Linear [-> norm] -> activation (default relu) per width, then a
    Linear output layer with bias. `norm`: 'batchnorm' (the default; `batchnorm=True` says
    the same), 'layernorm', 'rmsnorm' or 'none' (`batchnorm=False`). A Linear that feeds a
    BatchNorm has no bias (BN absorbs it); one that feeds a LayerNorm or RMSNorm keeps it.

    `binary=True`: BinaryLinear (sign of latent weights) -> BatchNorm1d -> Sign per width,
    then a BinaryLinear output layer followed by BatchNorm1d(num_classes), the per-class
    scale and offset of the logits (the error depends only on their argmax).

    `seed`: the initialization is drawn from it, leaving the global generator as it was;
    None (the default) draws from the global generator.
    """
    if seed is not None:
        with initialization_seed(seed):
            return mlp(
                in_features,
                widths,
                num_classes,
                batchnorm=batchnorm,
                norm=norm,
                activation=activation,
                binary=binary,
            )
    check_positive("in_features", in_features)
    check_positive("num_classes", num_classes)
    for width in widths:
        check_positive("each width", width)
    resolved_norm = resolve_norm(norm, batchnorm=batchnorm, valid=MLP_NORMS, binary=binary)
    has_bn = resolved_norm == "batchnorm"
    resolved = resolve_activation(activation, binary=binary, batchnorm=has_bn)
    linear = BinaryLinear if binary else nn.Linear
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = in_features
    for width in widths:
        layers.append(linear(fan_in, width, bias=not has_bn))
        if resolved_norm != "none":
            layers.append(norm_layer(resolved_norm, width, spatial=False))
        layers.append(activation_module(resolved))
        fan_in = width
    if binary:
        layers += [BinaryLinear(fan_in, num_classes, bias=False), nn.BatchNorm1d(num_classes)]
    else:
        layers.append(nn.Linear(fan_in, num_classes))
    model = nn.Sequential(*layers)
    return attach_config(  # type: ignore[return-value]
        model,
        {
            "name": "mlp",
            "in_features": int(in_features),
            "widths": [int(w) for w in widths],
            "num_classes": int(num_classes),
            "batchnorm": has_bn,
            "activation": resolved,
            **binary_key(binary),
            **norm_keys(resolved_norm),
        },
    )
