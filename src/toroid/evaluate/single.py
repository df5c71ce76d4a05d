"""Error and loss of a model on in-memory data, in eval mode, in batches; and the
recomputation of BatchNorm running statistics that every moved network needs."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from toroid.data.tensordata import DataLike, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.models.finite import check_finite_data, check_finite_model


@dataclass(frozen=True)
class Metrics:
    """Classification error (fraction wrong), mean cross-entropy loss, number of examples."""

    error: float
    loss: float
    n: int


BNPolicy = Literal["keep", "recompute", "repair"]
"""How moved networks get their activation statistics back: "keep" the stored BatchNorm
statistics; "recompute" them on training inputs (DESIGN.md's BatchNorm policy); "repair":
recompute, and renormalize the units no BatchNorm follows to the statistics interpolated
from a path's ends (REPAIR, Jordan et al. 2023). "repair" needs a path: only
`toroid.paths.profile` applies it; everything else refuses it."""
BN_POLICIES: tuple[BNPolicy, ...] = ("keep", "recompute", "repair")


def inputs_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Inputs on `reference`'s device and, when floating, in its dtype (a float64 model
    evaluated on the float32 tensors the loaders return)."""
    if x.is_floating_point():
        return x.to(device=reference.device, dtype=reference.dtype)
    return x.to(reference.device)


def bn_subset(n: int, *, samples: int | None, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the fixed, seeded subset of `samples` of `n` inputs (all when None) whose
    minibatches of `batch_size` re-estimate BatchNorm statistics. Refuses a last minibatch
    of a single input, whose variance is undefined."""
    if batch_size <= 0:
        raise InvalidArgumentError(f"bn batch size must be positive, got {batch_size}")
    if samples is not None and samples <= 0:
        raise InvalidArgumentError(f"bn samples must be positive or None, got {samples}")
    if samples is None or samples >= n:
        index = torch.arange(n)
    else:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples]
    if index.numel() % batch_size == 1:
        raise InvalidArgumentError(
            f"{index.numel()} BatchNorm samples in minibatches of {batch_size} leave a last "
            "minibatch of one input, whose variance is undefined; change bn_samples or the "
            "bn batch size"
        )
    return index


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    bn: BNPolicy = "keep",
    bn_data: DataLike | None = None,
    bn_samples: int | None = 2000,
    bn_batch_size: int = 500,
    batch_size: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Metrics:
    """Eval-mode error and loss over all of `data`; the model's train/eval flags are
    restored afterwards and its parameters and buffers are not changed.

    `bn="recompute"` first re-estimates BatchNorm running statistics (`recompute_bn`) on
    `bn_samples` inputs of `bn_data` (the training inputs; defaults to `data`) drawn with
    `seed`, in minibatches of `bn_batch_size` (the statistics depend on it; the evaluation
    batch size does not change any result), as every moved network needs; `"keep"` (the
    default, right for a trained network) uses the stored statistics. With `device`, a
    copy of the model is moved there; by default everything runs on the model's device."""
    if bn not in ("keep", "recompute"):
        why = " ('repair' needs a path's ends: see toroid.paths.profile)" if bn == "repair" else ""
        raise InvalidArgumentError(f"bn must be 'keep' or 'recompute', got {bn!r}{why}")
    check_finite_model(model)
    check_finite_data(data, what="the evaluation data")
    if bn == "recompute":
        model = recompute_bn(
            model,
            data if bn_data is None else bn_data,
            samples=bn_samples,
            batch_size=bn_batch_size,
            seed=seed,
        )
    data = as_tensor_data(data)
    if batch_size <= 0:
        raise InvalidArgumentError(f"batch_size must be positive, got {batch_size}")
    if len(data) == 0:
        raise InvalidArgumentError("cannot evaluate on an empty dataset")
    first = next(model.parameters(), None)
    if device is not None and first is not None and first.device != torch.device(device):
        model = copy.deepcopy(model).to(device)
        first = next(model.parameters())
    reference = first if first is not None else torch.zeros((), device=device or "cpu")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        loss_sum = torch.zeros((), dtype=torch.float64, device=reference.device)
        wrong = torch.zeros((), dtype=torch.long, device=reference.device)
        for start in range(0, len(data), batch_size):
            x = inputs_like(data.x[start : start + batch_size], reference)
            y = data.y[start : start + batch_size].to(reference.device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            wrong += (logits.argmax(dim=1) != y).sum()
    finally:
        for module, mode in modes.items():
            module.train(mode)
    n = len(data)
    return Metrics(error=int(wrong) / n, loss=float(loss_sum) / n, n=n)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn(
    model: nn.Module,
    data: DataLike,
    *,
    samples: int | None = 2000,
    batch_size: int = 500,
    seed: int = 0,
) -> nn.Module:
    """A copy of `model` (in eval mode) whose BatchNorm running statistics are re-estimated
    from scratch on a fixed, seeded subset of `samples` inputs of `data` (all when None),
    as a cumulative average over batches, BatchNorms in train mode and everything else
    (dropout) in eval mode, without gradients. DESIGN.md's BatchNorm policy: whenever
    parameters are moved, statistics are recomputed, never interpolated."""
    data = as_tensor_data(data)
    check_finite_model(model)
    check_finite_data(data, what="the BatchNorm data")
    index = bn_subset(len(data), samples=samples, batch_size=batch_size, seed=seed)
    new = copy.deepcopy(model).eval()
    norms = _batchnorms(new)
    if not norms:
        return new
    reference = next(new.parameters())
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
        bn.train()
    try:
        for start in range(0, index.numel(), batch_size):
            chosen = index[start : start + batch_size].to(data.x.device)
            new(inputs_like(data.x[chosen], reference))
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
            bn.eval()
    return new
