"""Random perturbations of a network's weights: multiplicative noise on every parameter,
or spherical noise that moves each cell on its own sphere."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.manifold.cells import cell_families, cell_matrix, set_cell_matrix_
from toroid.symmetry.slots import State
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec

Noise = Literal["multiplicative", "spherical"]
NOISES: tuple[str, ...] = ("multiplicative", "spherical")


def draw_noise(
    state: Mapping[str, torch.Tensor], names: list[str], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Standard normal noise for the named tensors, drawn in the given order on the CPU (so
    a seed gives the same noise on every device), in each tensor's dtype and device."""
    return {
        name: torch.randn(state[name].shape, generator=generator, dtype=torch.float64)
        .to(state[name].dtype)
        .to(state[name].device)
        for name in names
    }


def perturbed_state(
    state: Mapping[str, torch.Tensor],
    sigma: float,
    noise: Mapping[str, torch.Tensor],
    *,
    kind: Noise,
    spec: SymmetrySpec | None,
) -> State:
    """The parameters of `state` moved by relative size `sigma` along the standard normal
    `noise` (one tensor per perturbed parameter). `multiplicative`: theta (1 + sigma z).
    `spherical`: each cell c becomes |c| normalize(c/|c| + sigma z / sqrt(n_c)) (on a
    canonical network |c| = 1), parameters outside cells get multiplicative noise.
    Buffers (BatchNorm running statistics) are never perturbed."""
    if kind not in NOISES:
        raise InvalidArgumentError(f"noise must be one of {', '.join(NOISES)}, got {kind!r}")
    out = dict(state)
    in_cells: set[str] = set()
    if kind == "spherical":
        if spec is None:
            raise InvalidArgumentError("spherical noise needs the model's symmetry spec")
        for cell, size in cell_families(spec):
            rows = cell_matrix(state, cell, size)
            z = cell_matrix(noise, cell, size)
            norms = rows.norm(dim=1, keepdim=True)
            direction = rows / norms.clamp_min(1e-300)
            moved = direction + sigma * z / math.sqrt(rows.shape[1])
            moved = moved / moved.norm(dim=1, keepdim=True).clamp_min(1e-300)
            set_cell_matrix_(out, cell, size, moved * norms)
            in_cells.update(slot.tensor for slot in cell.members)
    for name, z in noise.items():
        if name not in in_cells:
            out[name] = state[name] * (1 + sigma * z)
    return out


def perturb(
    model: nn.Module,
    sigma: float,
    *,
    noise: Noise = "multiplicative",
    generator: torch.Generator,
    spec: SymmetrySpec | None = None,
) -> nn.Module:
    """A copy of `model` with its parameters (weights, biases, BatchNorm affine parameters)
    perturbed with relative size `sigma` (see `perturbed_state`). Spherical noise is meant
    for canonical networks and needs the spec (derived for built-in models). Running
    statistics are copied unchanged: recompute them before evaluating (DESIGN.md)."""
    if sigma < 0 or not math.isfinite(sigma):
        raise InvalidArgumentError(f"sigma must be a finite number >= 0, got {sigma}")
    if noise == "spherical" and spec is None:
        from toroid.symmetry.derive import spec_for

        spec = spec_for(model)
    state = model.state_dict()
    names = [name for name, _ in model.named_parameters()]
    z = draw_noise(state, names, generator)
    return with_state(model, perturbed_state(state, sigma, z, kind=noise, spec=spec))
