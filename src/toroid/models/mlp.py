"""Fully connected classifier: Linear [-> BatchNorm] -> activation per hidden layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from toroid.models.config import attach_config, check_choice, check_positive

Activation = Literal["relu", "tanh"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def activation_module(name: str) -> nn.Module:
    check_choice("activation", name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]()


def mlp(
    in_features: int,
    widths: Sequence[int],
    num_classes: int,
    *,
    batchnorm: bool = True,
    activation: Activation = "relu",
) -> nn.Sequential:
    """Flatten, then one Linear [-> BatchNorm1d] -> activation per width, then a Linear
    output layer with bias. A Linear that feeds a BatchNorm has no bias (BN absorbs it)."""
    check_positive("in_features", in_features)
    check_positive("num_classes", num_classes)
    for width in widths:
        check_positive("each width", width)
    check_choice("activation", activation, tuple(ACTIVATIONS))
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = in_features
    for width in widths:
        layers.append(nn.Linear(fan_in, width, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(activation_module(activation))
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    model = nn.Sequential(*layers)
    return attach_config(  # type: ignore[return-value]
        model,
        {
            "name": "mlp",
            "in_features": int(in_features),
            "widths": [int(w) for w in widths],
            "num_classes": int(num_classes),
            "batchnorm": batchnorm,
            "activation": activation,
        },
    )
