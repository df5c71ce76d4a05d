"""Canonical form: every cell unit-norm, signs fixed by a deterministic rule, biases in
front of BatchNorm folded into its running mean, units read only through a LayerNorm or
GroupNorm centered over their blocks; the eval-mode function unchanged.
Binary cells (latent weights of binary layers) are replaced by their signs, +-1. Attention
layers: value bias folded into the output bias, key bias zeroed, every head's projections
replaced by the canonical factors of its circuits (`toroid.symmetry.attention`)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.symmetry.attention import factor_heads_, fold_attention_biases_, is_factored
from toroid.symmetry.slots import State, center_units, expand_span, span_matrix, unit_matrix
from toroid.symmetry.transform import flip_units_, scale_cell_, with_state
from toroid.symmetry.types import CellFamily, SymmetrySpec, UnitGroup

OutputMode = Literal["normalize", "keep"]


def fold_biases_(state: State, spec: SymmetrySpec) -> None:
    """A bias right in front of a BatchNorm only shifts its running mean: move it there."""
    for bias, bn in spec.bias_folds:
        state[f"{bn}.running_mean"] = state[f"{bn}.running_mean"] - state[bias]
        state[bias] = torch.zeros_like(state[bias])


def center_translations_(state: State, spec: SymmetrySpec) -> None:
    """Each translation family's members minus their mean over each block of units: the
    point of the translation orbit closest to the origin (commutes with permutations
    within and of blocks, and with the scales of the units' input columns)."""
    sizes = {g.name: g.size for g in spec.groups}
    for family in spec.translations:
        for slot in family.members:
            state[slot.tensor] = center_units(
                state[slot.tensor], slot, sizes[family.group], family.span
            )


def binarize_cell_(state: State, cell: CellFamily) -> None:
    """Latent binary weights replaced by the +-1 they compute with (+1 at 0, as the binary
    layers do): the function is unchanged, and two networks with the same binary weights
    get the same form whatever their latent magnitudes."""
    for slot in cell.members:
        latent = state[slot.tensor]
        state[slot.tensor] = torch.where(latent >= 0, 1.0, -1.0).to(latent.dtype)


def is_binarized(state: State, cell: CellFamily) -> bool:
    return all(bool((state[s.tensor].abs() == 1).all()) for s in cell.members)


def canonical_signs(state: State, group: UnitGroup) -> torch.Tensor:
    """+1 or -1 per unit: the sign of the sum of its sign-rule slices (input weights), ties
    broken by the sum of cubes, then +1. Permutation-invariant in the unit's inputs, so
    canonical forms commute with permutations."""
    rule = unit_matrix(state, group.sign_rule, group.size)
    first, second = rule.sum(dim=1), rule.pow(3).sum(dim=1)
    decided = torch.where(first != 0, first, second)
    return torch.where(decided < 0, -1.0, 1.0).to(rule.dtype)


def canonical_state(state: State, spec: SymmetrySpec, *, output: OutputMode) -> State:
    if output not in ("normalize", "keep"):
        raise InvalidArgumentError(f"output must be 'normalize' or 'keep', got {output!r}")
    out = dict(state)
    fold_biases_(out, spec)
    for att in spec.attention:
        fold_attention_biases_(out, att)
    # After the value-bias fold, which moves a constant into output biases it centers.
    center_translations_(out, spec)
    sizes = {g.name: g.size for g in spec.groups}
    for cell in spec.cells:
        assert cell.group is not None
        if cell.kind == "binary":
            binarize_cell_(out, cell)
            continue
        _factor_attention_in_(out, spec, cell)
        norms = span_matrix(out, cell.members, sizes[cell.group], cell.span).norm(dim=1)
        # A zero cell has no direction. Where it feeds its consumers directly the unit
        # outputs nothing, so zeroing what it feeds keeps the function and makes the form
        # unique; an absorbed zero cell (BatchNorm after it) is left as it is.
        dead = norms == 0
        factors = torch.where(dead, torch.ones_like(norms), 1.0 / norms)
        scale_cell_(out, spec, cell, factors)
        if dead.any():
            flip_units_(out, cell.compensate, expand_span((~dead).to(norms.dtype), cell.span))
    for group in spec.groups:
        if group.odd:
            flip_units_(out, group.flip, canonical_signs(out, group))
    if spec.output is not None and spec.output.kind == "binary":
        binarize_cell_(out, spec.output)  # the logits stay as they are: both modes
    elif output == "normalize" and spec.output is not None:
        _factor_attention_in_(out, spec, spec.output)
        norm = unit_matrix(out, spec.output.members, 1).norm(dim=1)
        if float(norm) > 0:
            scale_cell_(out, spec, spec.output, 1.0 / norm)
    for att in spec.attention:  # the input columns are final now (the cells are done)
        factor_heads_(out, att)
    return out


def _factor_attention_in_(state: State, spec: SymmetrySpec, cell: CellFamily) -> None:
    """Factor the attention layers whose output projection is a member of `cell` before its
    norm is taken: the factorization gives each output row the norm of its row of the
    value-output circuits, which no per-head linear map changes (the spec orders the cell
    after every cell that scales the layer's input columns)."""
    members = {s.tensor for s in cell.members}
    for att in spec.attention:
        if att.out_proj in members:
            factor_heads_(state, att)


def canonicalize(
    model: nn.Module, *, spec: SymmetrySpec | None = None, output: OutputMode = "normalize"
) -> nn.Module:
    """A copy of `model` in canonical form. With `output="normalize"` the output layer is
    scaled to unit norm too (predictions unchanged, logits up to one positive factor);
    with `"keep"` the logits are unchanged."""
    from toroid.symmetry.derive import spec_for

    spec = spec or spec_for(model)
    return with_state(model, canonical_state(model.state_dict(), spec, output=output))


def is_canonical(model: nn.Module, spec: SymmetrySpec | None = None, *, atol: float = 1e-6) -> bool:
    """Whether every hidden cell has unit norm (zero cells excepted; binary cells +-1), every
    sign follows the rule, every bias in front of a BatchNorm is folded, every translation
    family is centered and every attention layer holds its canonical factors. A float
    output layer is not checked (both output modes are canonical); a binary one must be +-1."""
    from toroid.symmetry.derive import spec_for

    spec = spec or spec_for(model)
    state = model.state_dict()
    sizes = {g.name: g.size for g in spec.groups}
    for bias, _ in spec.bias_folds:
        if state[bias].abs().max() > atol:
            return False
    if not all(is_binarized(state, c) for c in spec.binary_cells()):
        return False
    for family in spec.translations:
        for slot in family.members:
            offset = state[slot.tensor] - center_units(
                state[slot.tensor], slot, sizes[family.group], family.span
            )
            if offset.abs().max() > atol:
                return False
    for cell in spec.cells:
        assert cell.group is not None
        if cell.kind == "binary":
            continue
        norms = span_matrix(state, cell.members, sizes[cell.group], cell.span).norm(dim=1)
        if ((norms - 1).abs() > atol)[norms > 0].any():
            return False
    if not all(is_factored(state, att, atol=atol) for att in spec.attention):
        return False
    return all(bool((canonical_signs(state, g) > 0).all()) for g in spec.groups if g.odd)
