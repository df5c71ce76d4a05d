"""A seeded, shuffled minibatch iterator over in-memory tensors, and tensor augmentation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from toroid.data.tensordata import DataLike, as_tensor_data
from toroid.errors import InvalidArgumentError


def iterate_batches(
    data: DataLike,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    merge_single_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(x, y)` minibatches; with `shuffle`, one permutation per pass drawn from
    `generator` (which must then be given, so that the order is reproducible).

    With `merge_single_last`, a last minibatch that would hold a single example (which
    BatchNorm cannot train on) is merged into the one before it, which then holds
    `batch_size + 1` examples; every other size is unaffected."""
    data = as_tensor_data(data)
    if batch_size <= 0:
        raise InvalidArgumentError(f"batch_size must be positive, got {batch_size}")
    n = len(data)
    if shuffle:
        if generator is None:
            raise InvalidArgumentError(
                "shuffle=True needs a torch.Generator for a reproducible order"
            )
        order = torch.randperm(n, generator=generator).to(data.x.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    merge = merge_single_last and not drop_last and n > 1 and n % batch_size == 1
    for start in range(0, stop, batch_size):
        end = start + batch_size
        if merge and end == n - 1:
            end = n
        if order is None:
            yield data.x[start:end], data.y[start:end]
        else:
            idx = order[start:end]
            yield data.x[idx], data.y[idx]
        if end == n:
            break


def random_crop_flip(
    x: torch.Tensor, *, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crops of zero-padded images (N, C, H, W) and random horizontal flips, drawn
    per example from `generator` (which lives on the CPU; indices move to x's device)."""
    if x.dim() != 4:
        raise InvalidArgumentError(
            f"random_crop_flip needs images (N, C, H, W), got {tuple(x.shape)}"
        )
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out


def batch_count(n: int, batch_size: int, *, merge_single_last: bool = False) -> int:
    """How many minibatches `iterate_batches` yields for `n` examples (drop_last=False)."""
    count = -(-n // batch_size)
    if merge_single_last and n > 1 and n % batch_size == 1:
        count -= 1
    return count
