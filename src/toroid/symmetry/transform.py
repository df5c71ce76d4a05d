"""Group elements acting on a network: per-cell positive scales, translations of units
read through LayerNorm/GroupNorm, per-unit sign flips and per-group permutations, per-head
linear maps of attention layers, applied to a state dict exactly as the
function-preserving symmetries of DESIGN.md (and docs/symmetry.md) describe."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.symmetry.attention import move_heads_, random_invertible
from toroid.symmetry.slots import (
    State,
    add_to_units,
    expand_span,
    permute_units,
    scale_units,
    unit_rows,
)
from toroid.symmetry.types import CellFamily, Slot, SymmetrySpec, TranslationFamily, UnitGroup


@dataclass(frozen=True)
class HeadMaps:
    """The per-head linear symmetry of one attention layer: `query_key[h]` = A_h and
    `value_output[h]` = B_h, invertible (H, d, d) (W_Q,h -> A_h^T W_Q,h, W_K,h -> A_h^-1
    W_K,h; W_V,h -> B_h W_V,h, W_O,h -> W_O,h B_h^-1), and shifts (E) of the key bias and
    of the value bias (compensated in the output bias); None: no shift."""

    query_key: torch.Tensor
    value_output: torch.Tensor
    key_bias: torch.Tensor | None = None
    value_bias: torch.Tensor | None = None


@dataclass(frozen=True)
class SymmetryTransform:
    """One group element. Applied in this order: `scales` (cell name -> positive factor
    per cell, i.e. per unit unless the cell spans several, multiplying the cell and
    dividing its compensation), `output_scale`, `translations` (translation family name ->
    (blocks, n) shifts: row k, split like the members' slices of one unit, is added to every
    unit of block k), then `signs` (group -> +-1 per unit, in the original unit order), then
    `heads` (attention module -> its per-head maps, in the original head order), then
    `permutations` (group -> perm; new unit i is old unit perm[i])."""

    scales: Mapping[str, torch.Tensor] = field(default_factory=dict)
    signs: Mapping[str, torch.Tensor] = field(default_factory=dict)
    permutations: Mapping[str, torch.Tensor] = field(default_factory=dict)
    output_scale: float = 1.0
    heads: Mapping[str, HeadMaps] = field(default_factory=dict)
    translations: Mapping[str, torch.Tensor] = field(default_factory=dict)


def _bn_stat_slot(state: State, bn: str, stat: str, size: int) -> Slot:
    return Slot(f"{bn}.{stat}", 0, state[f"{bn}.{stat}"].numel() // size)


def scale_cell_(state: State, spec: SymmetrySpec, cell: CellFamily, factors: torch.Tensor) -> None:
    """Multiply each unit's cell by its factor and compensate so that the eval-mode function
    is unchanged. An absorbing BatchNorm sees its input scaled by the factor: its running
    mean scales with it, and running_var + eps with its square (eps folded in exactly).
    `factors` holds one factor per cell (per `cell.span` consecutive units)."""
    factors = expand_span(factors, cell.span)
    size = factors.numel()
    for slot in cell.members:
        state[slot.tensor] = scale_units(state[slot.tensor], slot, factors)
    for slot in cell.compensate:
        state[slot.tensor] = scale_units(state[slot.tensor], slot, 1.0 / factors)
    for bn in cell.batchnorm:
        eps = spec.bn_eps[bn]
        mean = _bn_stat_slot(state, bn, "running_mean", size)
        var = _bn_stat_slot(state, bn, "running_var", size)
        state[mean.tensor] = scale_units(state[mean.tensor], mean, factors)
        shifted = scale_units(state[var.tensor] + eps, var, factors * factors)
        state[var.tensor] = shifted - eps


def translate_units_(
    state: State, family: TranslationFamily, size: int, shifts: torch.Tensor
) -> None:
    """Add row k of `shifts` (blocks, n) to the member slices of every unit of block k."""
    per_unit = expand_rows(shifts, family.span)
    offset = 0
    for slot in family.members:
        width = unit_rows(state[slot.tensor], slot, size).shape[1]
        part = per_unit[:, offset : offset + width]
        state[slot.tensor] = add_to_units(state[slot.tensor], slot, size, part)
        offset += width


def expand_rows(rows: torch.Tensor, span: int) -> torch.Tensor:
    return rows if span == 1 else rows.repeat_interleave(span, dim=0)


def flip_units_(state: State, slots: tuple[Slot, ...], signs: torch.Tensor) -> None:
    for slot in slots:
        state[slot.tensor] = scale_units(state[slot.tensor], slot, signs)


def permute_group_(state: State, slots: tuple[Slot, ...], perm: torch.Tensor) -> None:
    for slot in slots:
        state[slot.tensor] = permute_units(state[slot.tensor], slot, perm)


def transform_state(state: State, spec: SymmetrySpec, transform: SymmetryTransform) -> State:
    """A new state dict: `transform` applied to `state`."""
    out = dict(state)
    cells = {c.name: c for c in spec.cells}
    for name, factors in transform.scales.items():
        if name not in cells:
            raise InvalidArgumentError(f"transform scales unknown cell {name!r}")
        scale_cell_(out, spec, cells[name], factors)
    if transform.output_scale != 1.0:
        if spec.output is None:
            raise InvalidArgumentError("transform scales the output layer, which this model lacks")
        scale_cell_(
            out, spec, spec.output, torch.tensor([transform.output_scale], dtype=torch.float64)
        )
    groups = {g.name: g for g in spec.groups}
    families = {t.name: t for t in spec.translations}
    for name, shifts in transform.translations.items():
        if name not in families:
            raise InvalidArgumentError(f"transform translates unknown family {name!r}")
        family = families[name]
        translate_units_(out, family, groups[family.group].size, shifts)
    for name, signs in transform.signs.items():
        group = groups.get(name)
        if group is None or not group.odd:
            raise InvalidArgumentError(
                f"transform flips signs of {name!r}, not a sign-symmetric group"
            )
        flip_units_(out, group.flip, signs)
    attention = {att.module: att for att in spec.attention}
    for name, maps in transform.heads.items():
        if name not in attention:
            raise InvalidArgumentError(f"transform moves the heads of {name!r}, not an attention")
        move_heads_(
            out,
            attention[name],
            query_key=maps.query_key,
            value_output=maps.value_output,
            key_bias=maps.key_bias,
            value_bias=maps.value_bias,
        )
    for name, perm in transform.permutations.items():
        if name not in groups:
            raise InvalidArgumentError(f"transform permutes unknown group {name!r}")
        permute_group_(out, groups[name].slots, perm)
    return out


def structured_randperm(group: UnitGroup, *, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of the group's units that respects its blocks: whole
    blocks permuted, and the units within each block (a plain permutation for blocks=1)."""
    if group.blocks == 1:
        return torch.randperm(group.size, generator=generator)
    span = group.size // group.blocks
    order = torch.randperm(group.blocks, generator=generator)
    inner = [torch.randperm(span, generator=generator) for _ in range(group.blocks)]
    return torch.cat([order[k] * span + inner[k] for k in range(group.blocks)])


def with_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` holding `state` (the input model is untouched)."""
    new = copy.deepcopy(model)
    new.load_state_dict(dict(state))
    return new


def apply_symmetry(
    model: nn.Module, transform: SymmetryTransform, spec: SymmetrySpec | None = None
) -> nn.Module:
    """A copy of `model` moved along its symmetry orbit by `transform`."""
    from toroid.symmetry.derive import spec_for

    spec = spec or spec_for(model)
    return with_state(model, transform_state(model.state_dict(), spec, transform))


def random_symmetry(
    model: nn.Module,
    *,
    seed: int,
    scale_range: tuple[float, float] = (0.1, 10.0),
    permutations: bool = True,
    spec: SymmetrySpec | None = None,
) -> tuple[nn.Module, SymmetryTransform]:
    """A random group element applied to `model`: log-uniform positive scales in
    `scale_range` for every cell (the output layer included, unless it is binary; a binary
    cell's latent weights are scaled), random signs for sign-symmetric groups, for every
    attention layer random invertible per-head maps (`random_invertible`, condition number
    below 9) and standard normal key and value bias shifts (with biases), random
    translations (normal, of the members' root-mean-square size) and, unless
    `permutations=False`, random permutations (attention heads included; of a group with
    blocks: within blocks and of whole blocks only)."""
    from toroid.symmetry.derive import spec_for

    low, high = scale_range
    if not 0 < low <= high:
        raise InvalidArgumentError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    spec = spec or spec_for(model)
    gen = torch.Generator().manual_seed(seed)
    sizes = {g.name: g.size for g in spec.groups}

    def log_uniform(n: int) -> torch.Tensor:
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))

    scales = {
        c.name: log_uniform(sizes[c.group] // c.span) for c in spec.cells if c.group is not None
    }
    signs = {
        g.name: torch.randint(0, 2, (g.size,), generator=gen).double() * 2 - 1
        for g in spec.groups
        if g.odd
    }
    perms = (
        {g.name: structured_randperm(g, generator=gen) for g in spec.groups} if permutations else {}
    )
    # A binary output layer's latent scale changes nothing (not even the logits).
    scalable_output = spec.output is not None and spec.output.kind == "output"
    output_scale = float(log_uniform(1)) if scalable_output else 1.0
    heads = {}
    for att in spec.attention:  # drawn after the rest: earlier draws stay as they were
        shifts = [
            torch.randn(att.embed_dim, generator=gen, dtype=torch.float64)
            if att.in_bias is not None
            else None
            for _ in range(2)
        ]
        heads[att.module] = HeadMaps(
            random_invertible(att.heads, att.head_dim, gen),
            random_invertible(att.heads, att.head_dim, gen),
            *shifts,
        )
    state = model.state_dict()
    translations = {}
    for family in spec.translations:  # drawn last: specs without them keep their draws
        size = sizes[family.group]
        rows = torch.cat(
            [unit_rows(state[s.tensor], s, size).double() for s in family.members], dim=1
        )
        rms = float(rows.pow(2).mean().sqrt()) or 1.0
        noise = torch.randn(size // family.span, rows.shape[1], generator=gen, dtype=torch.float64)
        translations[family.name] = rms * noise
    transform = SymmetryTransform(
        scales, signs, perms, output_scale, heads=heads, translations=translations
    )
    return apply_symmetry(model, transform, spec), transform
