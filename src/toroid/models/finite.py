"""One shared check that weights and data are finite, called once per measurement on its
inputs (never per chunk: one fused reduction and a single device sync for all tensors)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from toroid.data.tensordata import DataLike, as_tensor_data
from toroid.errors import NonFiniteError


@torch.no_grad()
def _first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, torch.Tensor] | None:
    floating = [(n, t) for n, t in named if t.is_floating_point() and t.numel()]
    if not floating:
        return None
    # One flag per tensor, stacked on each device and copied to the CPU once per device:
    # a single synchronization in the usual one-device case.
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(floating):
        by_device.setdefault(t.device, []).append(i)
    # The sum is finite exactly when no entry is NaN/inf, unless the finite entries
    # overflow it: a reduction without a mask as large as the tensor, re-checked exactly
    # (entry by entry) only for tensors whose sum is not finite.
    flags = torch.ones(len(floating), dtype=torch.bool)
    for indices in by_device.values():
        sums = torch.stack([floating[i][1].sum() for i in indices])
        flags[indices] = torch.isfinite(sums).cpu()
    for i in (~flags).nonzero().flatten().tolist():
        if bool(torch.isfinite(floating[i][1]).all()):
            flags[i] = True
    if bool(flags.all()):
        return None
    return floating[int((~flags).nonzero()[0])]


def _describe(what: str, name: str, tensor: torch.Tensor, noun: str = "values") -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    parts = [f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else ""]
    counted = " and ".join(p for p in parts if p)
    subject = f"{name!r} of {what}" if name else what
    return (
        f"{subject} has non-finite {noun} ({counted} of {tensor.numel()} entries); "
        "measurements need finite weights and inputs"
    )


def check_finite_state(state: Mapping[str, torch.Tensor], *, what: str = "the weights") -> None:
    """Raise NonFiniteError naming the first floating tensor of `state` holding NaN/inf."""
    found = _first_non_finite(state.items())
    if found is not None:
        raise NonFiniteError(_describe(what, *found))


def check_finite_model(model: nn.Module, *, what: str = "the model") -> None:
    """Parameters and buffers (BatchNorm running statistics included) must be finite."""
    found = _first_non_finite([*model.named_parameters(), *model.named_buffers()])
    if found is not None:
        raise NonFiniteError(_describe(what, *found))


def check_finite_data(data: DataLike, *, what: str = "the data") -> None:
    """Floating inputs of `data` must be finite."""
    x = as_tensor_data(data).x
    found = _first_non_finite([("", x)])
    if found is not None:
        raise NonFiniteError(_describe(what, "", found[1], "inputs"))
