"""The cells of a network as matrices (one unit vector per row), read from and written
back into a state dict: the coordinates of the toroid."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from toroid.symmetry.slots import State, span_matrix, unit_rows
from toroid.symmetry.types import CellFamily, SymmetrySpec


def cell_families(spec: SymmetrySpec) -> Iterator[tuple[CellFamily, int]]:
    """Every cell family of the spec with its number of units (cells, unless a cell spans
    several units: `cell.span`); the output layer's global cell last, as a family of one."""
    sizes = {g.name: g.size for g in spec.groups}
    for cell in spec.cells:
        assert cell.group is not None
        yield cell, sizes[cell.group]
    if spec.output is not None:
        yield spec.output, 1


def cell_matrix(state: Mapping[str, torch.Tensor], cell: CellFamily, size: int) -> torch.Tensor:
    """(size / span, n_c): row k is cell k's vector (unit k's, or the concatenation of the
    units of block k when a cell spans `cell.span` units); `size` counts units."""
    return span_matrix(state, cell.members, size, cell.span)


def set_cell_matrix_(state: State, cell: CellFamily, size: int, rows: torch.Tensor) -> None:
    """Write `rows` (size / span, n_c) back into the member slices of `state` (new
    tensors); `size` counts units."""
    rows = rows.reshape(size, -1)
    offset = 0
    for slot in cell.members:
        current = state[slot.tensor]
        width = unit_rows(current, slot, size).shape[1]
        block = rows[:, offset : offset + width].to(current.dtype)
        moved_shape = current.movedim(slot.axis, 0).shape
        state[slot.tensor] = block.reshape(moved_shape).movedim(0, slot.axis).contiguous()
        offset += width


def cell_tensors(spec: SymmetrySpec) -> set[str]:
    """Names of the tensors that cells are made of."""
    return {slot.tensor for cell, _ in cell_families(spec) for slot in cell.members}


def binary_vector(state: Mapping[str, torch.Tensor], spec: SymmetrySpec) -> torch.Tensor:
    """The weights of every binary cell (hidden layers, then the output layer), flattened
    into one vector: the coordinates of a binary network, +-1 once it is canonical."""
    return torch.cat([state[name].reshape(-1) for name in spec.binary_tensors()])


def set_binary_vector_(state: State, spec: SymmetrySpec, vector: torch.Tensor) -> None:
    """Write a `binary_vector` back into the binary tensors of `state` (new tensors)."""
    offset = 0
    for name in spec.binary_tensors():
        current = state[name]
        block = vector[offset : offset + current.numel()]
        state[name] = block.reshape(current.shape).to(current.dtype, copy=True)
        offset += current.numel()
