"""Error and loss of a model on in-memory data, in eval mode, in batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toroid.data.tensordata import DataLike, as_tensor_data
from toroid.errors import InvalidArgumentError


@dataclass(frozen=True)
class Metrics:
    """Classification error (fraction wrong), mean cross-entropy loss, number of examples."""

    error: float
    loss: float
    n: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
) -> Metrics:
    """Eval-mode error and loss over all of `data`; the model's train/eval flags are
    restored afterwards and its parameters and buffers are not changed."""
    data = as_tensor_data(data)
    if batch_size <= 0:
        raise InvalidArgumentError(f"batch_size must be positive, got {batch_size}")
    if len(data) == 0:
        raise InvalidArgumentError("cannot evaluate on an empty dataset")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        wrong = torch.zeros((), dtype=torch.long, device=device)
        for start in range(0, len(data), batch_size):
            x = data.x[start : start + batch_size].to(device)
            y = data.y[start : start + batch_size].to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            wrong += (logits.argmax(dim=1) != y).sum()
    finally:
        for module, mode in modes.items():
            module.train(mode)
    n = len(data)
    return Metrics(error=int(wrong) / n, loss=float(loss_sum) / n, n=n)
