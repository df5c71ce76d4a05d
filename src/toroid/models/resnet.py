"""CIFAR-style ResNets of basic blocks: ResNet-20/32 (three stages) and ResNet-18 (four)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from toroid.models.config import (
    attach_config,
    check_choice,
    check_positive,
    initialization_seed,
)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is the identity,
    or a 1x1 conv + BN projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        stage_widths: list[int],
        blocks_per_stage: list[int],
        in_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stage_widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_widths[0])
        stages: list[nn.Module] = []
        channels = stage_widths[0]
        for index, (width, blocks) in enumerate(zip(stage_widths, blocks_per_stage, strict=True)):
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(channels, width, stride if b == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        logits: torch.Tensor = self.fc(torch.flatten(self.pool(out), 1))
        return logits


def resnet(
    depth: Literal[20, 32, 18] = 20,
    *,
    width: int = 1,
    in_channels: int = 3,
    num_classes: int = 10,
    seed: int | None = None,
) -> ResNet:
    """ResNet-20/32: stages of 16, 32, 64 channels (times `width`) with (depth-2)/6 blocks
    each; ResNet-18: 64..512 channels (times `width`), two blocks per stage, CIFAR stem.

    `seed`: the initialization is drawn from it, leaving the global generator as it was;
    None (the default) draws from the global generator.
    """
    if seed is not None:
        with initialization_seed(seed):
            return resnet(depth, width=width, in_channels=in_channels, num_classes=num_classes)
    check_choice("depth", depth, (20, 32, 18))
    check_positive("width", width)
    if depth == 18:
        widths, blocks = [64 * width, 128 * width, 256 * width, 512 * width], [2, 2, 2, 2]
    else:
        n = (depth - 2) // 6
        widths, blocks = [16 * width, 32 * width, 64 * width], [n, n, n]
    model = ResNet(widths, blocks, in_channels, num_classes)
    return attach_config(  # type: ignore[return-value]
        model,
        {
            "name": "resnet",
            "depth": depth,
            "width": width,
            "in_channels": in_channels,
            "num_classes": num_classes,
        },
    )
