"""Synthetic classification data of any input shape, for tests and quick experiments."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from toroid.errors import InvalidArgumentError

SyntheticKind = Literal["mixture", "teacher"]


def synthetic_tensors(
    *,
    kind: SyntheticKind = "mixture",
    input_shape: Sequence[int] = (16,),
    num_classes: int = 4,
    train_samples: int = 512,
    test_samples: int = 512,
    separation: float = 3.0,
    teacher_width: int = 32,
    data_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, str]:
    """Train and test tensors of one synthetic problem.

    `mixture`: one Gaussian per class, means drawn with norm about `separation`, unit noise;
    classes exactly balanced. `teacher`: standard normal inputs labelled by the argmax of a
    random one-hidden-layer tanh network (classes only roughly balanced).
    """
    if kind not in ("mixture", "teacher"):
        raise InvalidArgumentError(f"synthetic kind must be 'mixture' or 'teacher', got {kind!r}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise InvalidArgumentError(f"input_shape must be positive sizes, got {input_shape!r}")
    if num_classes < 2:
        raise InvalidArgumentError(f"num_classes must be at least 2, got {num_classes}")
    for label, value in (("train_samples", train_samples), ("test_samples", test_samples)):
        if value < num_classes:
            raise InvalidArgumentError(f"{label} must be at least num_classes, got {value}")
    dim = math.prod(shape)
    gen = torch.Generator().manual_seed(int(data_seed))
    total = train_samples + test_samples
    if kind == "mixture":
        means = torch.randn(num_classes, dim, generator=gen) * (separation / math.sqrt(dim))
        y = torch.cat(
            [
                (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
                for n in (train_samples, test_samples)
            ]
        )
        x = means[y] + torch.randn(total, dim, generator=gen) / math.sqrt(dim) * 1.0
    else:
        w1 = torch.randn(dim, teacher_width, generator=gen) / math.sqrt(dim)
        w2 = torch.randn(teacher_width, num_classes, generator=gen) / math.sqrt(teacher_width)
        x = torch.randn(total, dim, generator=gen)
        y = torch.argmax(torch.tanh(x @ w1) @ w2, dim=1)
    x = x.reshape(total, *shape)
    description = (
        f"synthetic(kind={kind}, input_shape={shape}, num_classes={num_classes}, "
        f"data_seed={data_seed})"
    )
    return (
        x[:train_samples],
        y[:train_samples],
        x[train_samples:],
        y[train_samples:],
        num_classes,
        description,
    )
