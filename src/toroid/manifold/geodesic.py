"""The geodesic path on the toroid: slerp in every cell with the same t, parameters outside
cells interpolated linearly (DESIGN.md, Mathematics: geodesic path)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.manifold.cells import cell_families, cell_matrix, cell_tensors, set_cell_matrix_
from toroid.manifold.distance import cell_angles, check_same_architecture, normalize_rows
from toroid.symmetry.slots import State
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec

# Below this angle (radians) a cell is interpolated linearly and renormalized: the chord
# and the arc then differ by O(theta^3), far below float64 resolution.
LINEAR_BELOW = 1e-7


def check_t(t: float) -> float:
    value = float(t)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidArgumentError(f"t must be a number in [0, 1], got {t!r}")
    return value


def slerp_rows(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Row-wise spherical interpolation (float64) of a's and b's rows at t.

    Directions are slerped with the angle of `cell_angles` (2 atan2(|u - v|, |u + v|)):
    sin((1 - t) theta) / sin theta * u + sin(t theta) / sin theta * v; norms are
    interpolated linearly, so unit rows (canonical cells) stay unit rows. Rows closer than
    `LINEAR_BELOW` are interpolated linearly and renormalized (no division by ~0); rows
    equal in a and b are returned unchanged; a zero row in either is interpolated linearly.
    Antipodal rows (theta = pi) have no unique geodesic and are not treated specially."""
    a, b = a.double(), b.double()
    norm_a, norm_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    nonzero = (norm_a > 0) & (norm_b > 0)
    u, v = normalize_rows(a), normalize_rows(b)
    theta = cell_angles(u, v)[:, None]
    norm = torch.lerp(norm_a, norm_b, t)

    small = theta < LINEAR_BELOW
    sin_theta = torch.where(small, 1.0, torch.sin(theta))
    arc = (torch.sin((1 - t) * theta) * u + torch.sin(t * theta) * v) / sin_theta
    chord = normalize_rows(torch.lerp(u, v, t))
    direction = torch.where(small, chord, arc)
    out = torch.where(nonzero, direction * norm, torch.lerp(a, b, t))
    same = (a == b).all(dim=1, keepdim=True)
    return torch.where(same, a, out)


def slerp_state(
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    t: float,
    spec: SymmetrySpec,
) -> State:
    """The state dict of the geodesic path from `state_a` to `state_b` at t in [0, 1].

    Both are assumed canonical and aligned (b aligned to a): this function neither
    canonicalizes nor aligns (the paths layer does that first). Per cell, `slerp_rows` with
    the same t everywhere (computed in float64, stored in each tensor's dtype); every other
    floating tensor linearly, `torch.lerp(a, b, t)` (tanh-layer weights without BatchNorm,
    folded biases, and the BatchNorm running statistics, which are placeholders: they must
    be recomputed before evaluation, `toroid.evaluate.recompute_bn`, DESIGN.md's BatchNorm
    policy); integer buffers (num_batches_tracked) are a's. t = 0 gives a's tensors and
    t = 1 b's, exactly (copies)."""
    t = check_t(t)
    check_same_architecture(state_a, state_b, "state_a and state_b")
    if t == 0.0:
        return {k: v.clone() for k, v in state_a.items()}
    if t == 1.0:
        return {k: v.clone() for k, v in state_b.items()}
    in_cells = cell_tensors(spec)
    out: State = {}
    for key, value in state_a.items():
        if key in in_cells:
            out[key] = value  # replaced below; set_cell_matrix_ reads its shape and dtype
        elif value.is_floating_point():
            out[key] = torch.lerp(value, state_b[key].to(value.dtype), t)
        else:
            out[key] = value.clone()
    for cell, size in cell_families(spec):
        rows = slerp_rows(cell_matrix(state_a, cell, size), cell_matrix(state_b, cell, size), t)
        set_cell_matrix_(out, cell, size, rows)
    return out


def slerp(a: nn.Module, b: nn.Module, t: float, *, spec: SymmetrySpec | None = None) -> nn.Module:
    """A new model (a copy of `a`) at t in [0, 1] on the geodesic path from a to b: per cell
    spherical interpolation with the same t, parameters outside cells linearly, integer
    buffers from a; t = 0 and t = 1 give a's and b's state exactly (see `slerp_state`).

    a and b must already be canonical and aligned (e.g. `align(b, a)`'s `reference` and
    `model`); slerp does neither. The BatchNorm running statistics of the result are linear
    placeholders: recompute them (`toroid.evaluate.recompute_bn`) before evaluating, as
    DESIGN.md's BatchNorm policy requires for every moved network."""
    from toroid.symmetry.derive import spec_for

    spec = spec or spec_for(a)
    return with_state(a, slerp_state(a.state_dict(), b.state_dict(), t, spec))


def geodesic_midpoint(a: nn.Module, b: nn.Module, *, spec: SymmetrySpec | None = None) -> nn.Module:
    """`slerp(a, b, 0.5)`: the midpoint of the geodesic between canonical, aligned a and b
    (recompute its BatchNorm statistics before evaluating)."""
    return slerp(a, b, 0.5, spec=spec)


__all__ = ["geodesic_midpoint", "slerp", "slerp_rows", "slerp_state"]
