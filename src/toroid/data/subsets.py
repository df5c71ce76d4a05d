"""Class-balanced, seeded subsets and per-channel normalization with training statistics."""

from __future__ import annotations

import torch

from toroid.errors import DataError, InvalidArgumentError


def balanced_indices(
    labels: torch.Tensor, size: int, *, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Sorted indices of `size` examples, `size // num_classes` per class (the remainder
    going to classes drawn at random), each class's examples drawn at random."""
    if size <= 0:
        raise InvalidArgumentError(f"subset size must be positive, got {size}")
    if size > labels.numel():
        raise DataError(f"asked for {size} examples but only {labels.numel()} are available")
    per_class = torch.full((num_classes,), size // num_classes, dtype=torch.long)
    extra = torch.randperm(num_classes, generator=generator)[: size % num_classes]
    per_class[extra] += 1
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls, as_tuple=True)[0]
        want = int(per_class[cls])
        if want > members.numel():
            raise DataError(
                f"class {cls} has {members.numel()} examples, fewer than the {want} that a "
                f"class-balanced subset of {size} needs; choose at most "
                f"{int(torch.bincount(labels, minlength=num_classes).min()) * num_classes}"
            )
        order = torch.randperm(members.numel(), generator=generator)[:want]
        chosen.append(members[order])
    return torch.sort(torch.cat(chosen)).values


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per index of axis 1, over every other axis."""
    if x.dim() < 2:
        raise InvalidArgumentError(
            f"inputs need a batch and a channel axis, got shape {tuple(x.shape)}"
        )
    dims = [d for d in range(x.dim()) if d != 1]
    # float32 is enough: torch reduces with cascaded sums (tested against float64).
    std, mean = torch.std_mean(x.float(), dim=dims)
    return mean, std.clamp_min(1e-8)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean.view(shape)) / std.view(shape)
