"""The geodesic path on the toroid: slerp in every cell with the same t, parameters outside
cells interpolated linearly (DESIGN.md, Mathematics: geodesic path)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.manifold.cells import cell_families, cell_matrix, cell_tensors, set_cell_matrix_
from toroid.manifold.distance import cell_angles, check_same_architecture
from toroid.models.finite import check_finite_model
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


def slerp_coefficients(
    a: torch.Tensor, b: torch.Tensor, ts: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per t and row, the weights (alpha, beta), float64 (len(ts), rows), of a's and b's
    rows on the row-wise geodesic: `slerp_rows(a, b, t) = alpha[:, None] * a + beta[:, None]
    * b` for every t. The point at t is a combination of the two rows; only the weights
    depend on t, which is what lets many t be evaluated as one affine family.

    Directions are slerped with the angle of `cell_angles` (2 atan2(|u - v|, |u + v|)):
    sin((1 - t) theta) / sin theta * u + sin(t theta) / sin theta * v; norms are
    interpolated linearly, so unit rows (canonical cells) stay unit rows. Rows closer than
    `LINEAR_BELOW` are interpolated linearly and renormalized (no division by ~0); rows
    equal in a and b get (1, 0); a zero row in either is interpolated linearly; t = 0 and
    t = 1 give (1, 0) and (0, 1) exactly. Antipodal rows (theta = pi) have no unique
    geodesic and are not treated specially."""
    a, b = a.double(), b.double()
    t = torch.tensor([check_t(v) for v in ts], dtype=torch.float64, device=a.device)[:, None]
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    nonzero = (norm_a > 0) & (norm_b > 0)
    safe_a = torch.where(norm_a > 0, norm_a, 1.0)
    safe_b = torch.where(norm_b > 0, norm_b, 1.0)
    u, v = a / safe_a[:, None], b / safe_b[:, None]
    theta = cell_angles(u, v)
    norm = torch.lerp(norm_a, norm_b, t)

    small = theta < LINEAR_BELOW
    sin_theta = torch.where(small, 1.0, torch.sin(theta))
    arc_u, arc_v = torch.sin((1 - t) * theta) / sin_theta, torch.sin(t * theta) / sin_theta
    # |(1 - t) u + t v| for unit u and v, from their inner product: no (t, row, n_c) tensor.
    dot = (u * v).sum(dim=1)
    chord = torch.sqrt(((1 - t) ** 2 + t**2 + 2 * t * (1 - t) * dot).clamp_min(0.0))
    chord = torch.where(chord > 0, chord, 1.0)
    along_u = torch.where(small, (1 - t) / chord, arc_u)
    along_v = torch.where(small, t / chord, arc_v)
    alpha = torch.where(nonzero, along_u * norm / safe_a, 1 - t)
    beta = torch.where(nonzero, along_v * norm / safe_b, t.expand_as(along_v))
    same = (a == b).all(dim=1)
    alpha = torch.where(same, 1.0, alpha)
    beta = torch.where(same, 0.0, beta)
    ends = ((t == 0) | (t == 1)).expand_as(alpha)
    alpha = torch.where(ends, (t == 0).double().expand_as(alpha), alpha)
    beta = torch.where(ends, (t == 1).double().expand_as(beta), beta)
    return alpha, beta


def slerp_rows(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Row-wise spherical interpolation (float64) of a's and b's rows at t, with the weights
    of `slerp_coefficients`."""
    alpha, beta = slerp_coefficients(a, b, [t])
    return alpha[0, :, None] * a.double() + beta[0, :, None] * b.double()


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


def slerp_weights(
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    ts: Sequence[float],
    spec: SymmetrySpec,
) -> dict[str, torch.Tensor] | None:
    """The geodesic at every t as weights of its ends: for each tensor of a cell, a float64
    tensor w of shape (len(ts), 2, *s), s broadcastable to the tensor's shape (the unit's
    weight along the cell's axis), with `slerp_state(a, b, t)[name]` = w[k, 0] * a[name] +
    w[k, 1] * b[name] up to rounding; tensors outside cells are interpolated linearly,
    with weights (1 - t, t). None when some tensor belongs to two cells, which this
    per-tensor form cannot express."""
    check_same_architecture(state_a, state_b, "state_a and state_b")
    weights: dict[str, torch.Tensor] = {}
    for cell, size in cell_families(spec):
        alpha, beta = slerp_coefficients(
            cell_matrix(state_a, cell, size), cell_matrix(state_b, cell, size), ts
        )
        pair = torch.stack([alpha, beta], dim=1)  # (K, 2, units)
        for slot in cell.members:
            if slot.tensor in weights:
                return None
            tensor = state_a[slot.tensor]
            shape = [len(ts), 2] + [1] * tensor.dim()
            cells = size // cell.span
            if cells == 1:  # one cell for the whole tensor: one weight
                weights[slot.tensor] = pair.reshape(shape)
                continue
            shape[2 + slot.axis] = tensor.shape[slot.axis]
            per_index = pair.repeat_interleave(tensor.shape[slot.axis] // cells, dim=2)
            weights[slot.tensor] = per_index.reshape(shape)
    return weights


def slerp(a: nn.Module, b: nn.Module, t: float, *, spec: SymmetrySpec | None = None) -> nn.Module:
    """A new model (a copy of `a`) at t in [0, 1] on the geodesic path from a to b: per cell
    spherical interpolation with the same t, parameters outside cells linearly, integer
    buffers from a; t = 0 and t = 1 give a's and b's state exactly (see `slerp_state`).

    a and b must already be canonical and aligned (e.g. `align(b, a)`'s `reference` and
    `model`); slerp does neither. The BatchNorm running statistics of the result are linear
    placeholders: recompute them (`toroid.evaluate.recompute_bn`) before evaluating, as
    DESIGN.md's BatchNorm policy requires for every moved network."""
    from toroid.symmetry.derive import spec_for

    check_finite_model(a, what="network a")
    check_finite_model(b, what="network b")
    spec = spec or spec_for(a)
    return with_state(a, slerp_state(a.state_dict(), b.state_dict(), t, spec))


def geodesic_midpoint(a: nn.Module, b: nn.Module, *, spec: SymmetrySpec | None = None) -> nn.Module:
    """`slerp(a, b, 0.5)`: the midpoint of the geodesic between canonical, aligned a and b
    (recompute its BatchNorm statistics before evaluating)."""
    return slerp(a, b, 0.5, spec=spec)


__all__ = [
    "geodesic_midpoint",
    "slerp",
    "slerp_coefficients",
    "slerp_rows",
    "slerp_state",
    "slerp_weights",
]
