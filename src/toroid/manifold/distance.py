"""Distances between two networks on the toroid: per cell the angle between the two unit
vectors, summarized as `geodesic`, `mean_angle` or `overlap` (DESIGN.md, Mathematics)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.manifold.cells import cell_families, cell_matrix
from toroid.models.finite import check_finite_model
from toroid.symmetry.align import align as align_models
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.types import SymmetrySpec

DistanceKind = Literal["geodesic", "mean_angle", "overlap"]
KINDS: tuple[str, ...] = ("geodesic", "mean_angle", "overlap")
CellScope = Literal["auto", "all", "binary"]
SCOPES: tuple[str, ...] = ("auto", "all", "binary")

_DESCRIPTIONS = {
    "geodesic": "sqrt(sum_c theta_c^2)",
    "mean_angle": "sum_c n_c theta_c / sum_c n_c",
    "overlap": "sum_c n_c (1 - cos theta_c)/2 / sum_c n_c",
}


@dataclass(frozen=True)
class Distance:
    """One distance between two networks. `kind` says which one (always report it);
    `aligned` whether b was aligned to a; `cells` the number of cells (units of every cell
    family, plus the output layer's global cell); `per_layer` (when asked for) the same kind
    of distance restricted to each cell family, keyed by family name. For `geodesic` the
    per-family values' squares sum to the square of the total. `over`: "all" cells, or the
    "binary" cells alone (the +-1 weights of a binary network)."""

    value: float
    kind: DistanceKind
    aligned: bool
    cells: int
    per_layer: Mapping[str, float] | None = None
    over: Literal["all", "binary"] = "all"

    def __str__(self) -> str:
        how = "aligned" if self.aligned else "not aligned"
        what = "binary cells" if self.over == "binary" else "cells"
        head = (
            f"{self.kind} distance {self.value:.6g} "
            f"({_DESCRIPTIONS[self.kind]}; {self.cells} {what}, {how})"
        )
        if not self.per_layer:
            return head
        width = max(len(name) for name in self.per_layer)
        lines = [f"  {name:<{width}}  {value:.6g}" for name, value in self.per_layer.items()]
        return "\n".join([head, *lines])


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        valid = ", ".join(repr(k) for k in KINDS)
        raise InvalidArgumentError(f"kind must be one of {valid}, got {kind!r}")


def check_scope(over: str) -> None:
    if over not in SCOPES:
        valid = ", ".join(repr(k) for k in SCOPES)
        raise InvalidArgumentError(f"over must be one of {valid}, got {over!r}")


def check_same_architecture(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: str = "a and b"
) -> None:
    only = sorted(set(a) ^ set(b))
    if only:
        raise InvalidArgumentError(
            f"{what} have different architectures: {only[0]!r} is in only one of them"
        )
    for k in a:
        if a[k].shape != b[k].shape:
            raise InvalidArgumentError(
                f"{what} have different architectures: {k!r} has shape "
                f"{tuple(a[k].shape)} in one and {tuple(b[k].shape)} in the other"
            )


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by its norm; zero rows stay zero."""
    norm = x.norm(dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def cell_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, the angle in [0, pi] between a's and b's row (float64), computed as
    2 atan2(|u - v|, |u + v|) on the normalized rows u, v: exactly 0 for identical rows and
    accurate for tiny angles (arccos of the inner product loses half the digits there). A
    zero row has no direction: it is at pi/2 from every non-zero row and at 0 from a zero
    row, as arccos(a . b) would say."""
    u, v = normalize_rows(a.double()), normalize_rows(b.double())
    return 2 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1))


def _float64(model: nn.Module) -> nn.Module:
    """`model` itself when every floating tensor is float64, else a float64 copy."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == torch.float64 for t in tensors if t.is_floating_point()):
        return model
    return copy.deepcopy(model).double()


def _summarize(kind: str, thetas: list[torch.Tensor], dims: list[int]) -> float:
    if kind == "geodesic":
        return math.sqrt(sum(float(th.pow(2).sum()) for th in thetas))
    total = sum(dim * th.numel() for th, dim in zip(thetas, dims, strict=True))
    if kind == "mean_angle":
        weighted = sum(dim * float(th.sum()) for th, dim in zip(thetas, dims, strict=True))
    else:  # overlap: (1 - cos theta) / 2 = sin(theta / 2)^2, without cancellation
        halves = [float(torch.sin(th / 2).pow(2).sum()) for th in thetas]
        weighted = sum(dim * h for h, dim in zip(halves, dims, strict=True))
    return weighted / total if total else 0.0


def distance(
    a: nn.Module,
    b: nn.Module,
    *,
    kind: DistanceKind = "geodesic",
    per_layer: bool = False,
    align: bool = True,
    spec: SymmetrySpec | None = None,
    seed: int = 0,
    over: CellScope = "auto",
) -> Distance:
    """The `kind` distance between `a` and `b`; see `distances`."""
    result = distances(
        a, b, kinds=(kind,), per_layer=per_layer, align=align, spec=spec, seed=seed, over=over
    )
    return result[kind]


def distances(
    a: nn.Module,
    b: nn.Module,
    *,
    kinds: Sequence[DistanceKind] = ("geodesic", "mean_angle", "overlap"),
    per_layer: bool = False,
    align: bool = True,
    spec: SymmetrySpec | None = None,
    seed: int = 0,
    over: CellScope = "auto",
) -> dict[str, Distance]:
    """Several kinds of distance from one canonicalization and one alignment (keyed by
    kind): the distances between networks `a` and `b` (same architecture) on the toroid.

    Both are put in canonical form (output layer normalized) in float64 and, unless
    `align=False`, b is aligned to a by weight matching (`toroid.symmetry.align`, seeded by
    `seed`). Per cell c of dimension n_c (every unit of every cell family, and the output
    layer's global cell) theta_c is the angle between a_c and b_c (see `cell_angles`), and
    - `geodesic`: sqrt(sum_c theta_c^2), the Riemannian distance on the toroid;
    - `mean_angle`: sum_c n_c theta_c / sum_c n_c;
    - `overlap`: sum_c n_c (1 - cos theta_c) / 2 / sum_c n_c (the normalized Hamming
      distance for +-1 weights).
    With `per_layer`, the same kind of distance per cell family as well. Parameters outside
    cells (e.g. the hidden weights of a tanh network without BatchNorm, which have no scale
    symmetry) do not enter any of them.

    `over="binary"` restricts the sum to the binary cells (the +-1 weights of binary
    layers; canonical form stores them as +-1), where `overlap` is the normalized Hamming
    distance of the sign weights; `"all"` takes every cell, BatchNorm pairs included;
    `"auto"` (the default) means binary for a network with binary layers, else all."""
    if not kinds:
        raise InvalidArgumentError(f"kinds must name at least one of {', '.join(KINDS)}")
    for kind in kinds:
        check_kind(kind)
    check_scope(over)
    check_same_architecture(a.state_dict(), b.state_dict())
    check_finite_model(a, what="network a")
    check_finite_model(b, what="network b")
    from toroid.symmetry.derive import spec_for

    spec = spec or spec_for(a)
    binary = set(spec.binary_cells())
    if over == "binary" and not binary:
        raise InvalidArgumentError(
            f"over='binary' needs a network with binary layers; {type(a).__name__} has none"
        )
    scope: Literal["all", "binary"] = "all"
    if over == "binary" or (over == "auto" and binary):
        scope = "binary"
    a64, b64 = _float64(a), _float64(b)
    if align:
        result = align_models(b64, a64, spec=spec, seed=seed)
        state_a, state_b = result.reference.state_dict(), result.model.state_dict()
    else:
        state_a, state_b = (
            canonical_state(m.state_dict(), spec, output="normalize") for m in (a64, b64)
        )
    thetas: list[torch.Tensor] = []
    dims: list[int] = []
    names: list[str] = []
    for cell, size in cell_families(spec):
        if scope == "binary" and cell not in binary:
            continue
        rows_a, rows_b = cell_matrix(state_a, cell, size), cell_matrix(state_b, cell, size)
        thetas.append(cell_angles(rows_a, rows_b))
        dims.append(rows_a.shape[1])
        names.append(cell.name)
    cells = sum(th.numel() for th in thetas)
    if cells == 0:
        raise InvalidArgumentError(
            f"{type(a).__name__} has no cells (no scale-symmetric unit, no output layer): "
            "distances on the toroid are not defined for it"
        )
    out: dict[str, Distance] = {}
    for kind in kinds:
        breakdown = None
        if per_layer:
            breakdown = {
                name: _summarize(kind, [th], [dim])
                for name, th, dim in zip(names, thetas, dims, strict=True)
            }
        out[kind] = Distance(
            value=_summarize(kind, thetas, dims),
            kind=kind,
            aligned=align,
            cells=cells,
            per_layer=breakdown,
            over=scope,
        )
    return out


__all__ = [
    "KINDS",
    "SCOPES",
    "CellScope",
    "Distance",
    "DistanceKind",
    "cell_angles",
    "distance",
    "distances",
    "normalize_rows",
]
