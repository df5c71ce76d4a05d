"""VGG for small images: 3x3 conv [-> BN] -> ReLU stacks, max-pools, one linear classifier."""

from __future__ import annotations

from typing import Literal

from torch import nn

from toroid.models.config import (
    attach_config,
    check_choice,
    check_positive,
    initialization_seed,
)

VGG_LAYOUTS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def vgg(
    depth: Literal[11, 13, 16] = 11,
    *,
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = 10,
    batchnorm: bool = True,
    seed: int | None = None,
) -> nn.Sequential:
    """VGG-`depth` with every channel count multiplied by `width`; pools use ceil mode and
    a global average pool precedes the classifier, so 28x28 and 32x32 inputs both work.

    `seed`: the initialization is drawn from it, leaving the global generator as it was;
    None (the default) draws from the global generator.
    """
    if seed is not None:
        with initialization_seed(seed):
            return vgg(
                depth,
                width=width,
                in_channels=in_channels,
                num_classes=num_classes,
                batchnorm=batchnorm,
            )
    check_choice("depth", depth, tuple(VGG_LAYOUTS))
    check_positive("width", width)
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG_LAYOUTS[depth]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            continue
        out = max(1, round(int(item) * width))
        layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return attach_config(  # type: ignore[return-value]
        nn.Sequential(*layers),
        {
            "name": "vgg",
            "depth": depth,
            "width": width,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "batchnorm": batchnorm,
        },
    )
