"""Per-unit views of state-dict tensors along a slot's axis: the tensor math every
symmetry operation is built from (gather a unit's slices, scale or permute units)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from toroid.symmetry.types import Slot

State = dict[str, torch.Tensor]


def unit_rows(tensor: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """A (size, d) view-like matrix: row i holds unit i's slice of `tensor`."""
    moved = tensor.movedim(slot.axis, 0)
    if not slot.whole:
        moved = moved[slot.start : slot.stop]
    return moved.reshape(size, -1)


def unit_matrix(
    state: Mapping[str, torch.Tensor], slots: Iterable[Slot], size: int
) -> torch.Tensor:
    """Row i: the concatenation of unit i's slices over `slots` (its cell vector)."""
    parts = [unit_rows(state[s.tensor], s, size) for s in slots]
    return torch.cat(parts, dim=1) if parts else torch.zeros(size, 0)


def _expand(factors: torch.Tensor, tensor: torch.Tensor, slot: Slot) -> torch.Tensor:
    per_index = factors.to(tensor.dtype).repeat_interleave(slot.block)
    if not slot.whole:  # factor 1 outside the slot's range
        ones = torch.ones(tensor.shape[slot.axis], dtype=tensor.dtype, device=per_index.device)
        per_index = torch.cat(
            [ones[: slot.start], per_index, ones[slot.start + per_index.numel() :]]
        )
    shape = [1] * tensor.dim()
    shape[slot.axis] = -1
    return per_index.view(shape)


def scale_units(tensor: torch.Tensor, slot: Slot, factors: torch.Tensor) -> torch.Tensor:
    """`tensor` with unit i's slice multiplied by factors[i]."""
    return tensor * _expand(factors, tensor, slot)


def permute_units(tensor: torch.Tensor, slot: Slot, perm: torch.Tensor) -> torch.Tensor:
    """`tensor` whose unit i slice is the old unit perm[i] slice."""
    block = torch.arange(slot.block, device=perm.device)
    index = (perm[:, None] * slot.block + block[None, :]).reshape(-1).to(tensor.device)
    if not slot.whole:  # the identity outside the slot's range
        full = torch.arange(tensor.shape[slot.axis], device=tensor.device)
        full[slot.start : slot.start + index.numel()] = index + slot.start
        index = full
    return tensor.index_select(slot.axis, index)


def span_matrix(
    state: Mapping[str, torch.Tensor], slots: Iterable[Slot], size: int, span: int
) -> torch.Tensor:
    """Row k: the concatenation of the `unit_matrix` rows of units k*span .. (k+1)*span - 1
    (the vector of a cell that holds `span` consecutive units)."""
    return unit_matrix(state, slots, size).reshape(size // span, -1)


def expand_span(factors: torch.Tensor, span: int) -> torch.Tensor:
    """One factor per block of `span` units -> one per unit."""
    return factors if span == 1 else factors.repeat_interleave(span)


def add_to_units(tensor: torch.Tensor, slot: Slot, size: int, rows: torch.Tensor) -> torch.Tensor:
    """`tensor` with row i of `rows` (size, d: unit i's slice, as `unit_rows` reads it)
    added to unit i's slice."""
    moved = tensor.movedim(slot.axis, 0)
    shifted = moved + rows.to(tensor.dtype).reshape(moved.shape)
    return shifted.movedim(0, slot.axis).contiguous()


def center_units(tensor: torch.Tensor, slot: Slot, size: int, span: int) -> torch.Tensor:
    """`tensor` minus, in each block of `span` consecutive units, the mean of the block's
    unit slices (the representative of a translation orbit)."""
    rows = unit_rows(tensor, slot, size)
    blocks = rows.reshape(size // span, span, -1)
    mean = blocks.mean(dim=1, keepdim=True).expand_as(blocks).reshape(size, -1)
    return add_to_units(tensor, slot, size, -mean)
