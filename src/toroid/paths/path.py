"""Paths between two networks: t in [0, 1] -> parameters, in canonical, aligned coordinates
(or the original ones, as the baseline that shows what symmetry removal changes).

Straight lines, single-bend chains and quadratic Bezier curves are affine combinations of
their anchors, `sum_j w_j(t) theta_j` with weights summing to one; the weights are exact at
the ends (t = 0 gives the first anchor, t = 1 the last, bit for bit), and many t at once go
to `evaluate_sets` as an `AffineFamily`. The geodesic slerps every cell (DESIGN.md), which
is a combination of its two ends too, with weights per cell: it goes as a family weighed
per unit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from toroid.errors import InvalidArgumentError
from toroid.evaluate import AffineFamily
from toroid.manifold.cells import cell_families, cell_matrix
from toroid.manifold.distance import cell_angles, check_same_architecture, normalize_rows
from toroid.manifold.geodesic import check_t, slerp_state, slerp_weights
from toroid.models.finite import check_finite_state
from toroid.symmetry.align import align as align_models
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.slots import State
from toroid.symmetry.transform import transform_state, with_state
from toroid.symmetry.types import SymmetrySpec

PathKind = Literal["linear", "raw-linear", "geodesic", "polychain", "bezier"]
PATH_KINDS: tuple[str, ...] = ("linear", "raw-linear", "geodesic", "polychain", "bezier")


@dataclass(frozen=True)
class Endpoints:
    """Two networks in the coordinates where paths are drawn: `a` canonical and `b`
    canonical and aligned to a (both with their own output layers, so the endpoints keep
    their losses), or both untouched (`raw`)."""

    a: State
    b: State
    spec: SymmetrySpec | None
    raw: bool


def endpoints(
    a: nn.Module,
    b: nn.Module,
    *,
    raw: bool = False,
    spec: SymmetrySpec | None = None,
    seed: int = 0,
) -> Endpoints:
    """Canonicalize a and b (output layer kept) and align b to a by weight matching
    (seeded); with `raw=True`, take their states as they are."""
    state_a, state_b = a.state_dict(), b.state_dict()
    check_same_architecture(state_a, state_b, "a and b")
    check_finite_state(state_a, what="network a")
    check_finite_state(state_b, what="network b")
    if raw:
        return Endpoints(dict(state_a), dict(state_b), spec, raw=True)
    from toroid.symmetry.derive import spec_for

    spec = spec or spec_for(a)
    alignment = align_models(b, a, spec=spec, seed=seed)
    canonical_a = canonical_state(state_a, spec, output="keep")
    canonical_b = canonical_state(state_b, spec, output="keep")
    aligned_b = transform_state(canonical_b, spec, alignment.transform())
    return Endpoints(canonical_a, aligned_b, spec, raw=False)


def _floating(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def anchor_family(
    anchors: Sequence[State],
    coefficients: torch.Tensor,
    unit_coefficients: Mapping[str, torch.Tensor] | None = None,
) -> AffineFamily:
    """The sets sum_j coefficients[k, j] anchor_j of the anchors' floating tensors (a zero
    base and one direction per anchor), with per-unit weights where given."""
    names = _floating(anchors[0])
    units = unit_coefficients or {}
    return AffineFamily(
        {k: torch.zeros_like(anchors[0][k]) for k in names},
        {k: torch.stack([anchor[k] for anchor in anchors]) for k in names},
        coefficients,
        {k: w for k, w in units.items() if k in names},
    )


class Path:
    """A path t in [0, 1] -> network of `template`'s architecture. `state_at(t)` and
    `at(t)` give one point; `sets(ts)` many points in the layout `evaluate_sets` takes.
    BatchNorm running statistics along the path are placeholders (combined like the
    parameters): recompute them before evaluating (DESIGN.md's BatchNorm policy), as
    `profile` does."""

    kind: str

    def __init__(self, template: nn.Module, anchors: Sequence[State]) -> None:
        self.template = template
        self.anchors = tuple(anchors)

    @property
    def a(self) -> State:
        return self.anchors[0]

    @property
    def b(self) -> State:
        return self.anchors[-1]

    def state_at(self, t: float) -> State:
        raise NotImplementedError

    def anchor_weights(self, t: float) -> tuple[float, ...]:
        """How much each anchor weighs in the point at t: the weights with which REPAIR
        interpolates the anchors' unit statistics (`toroid.paths.repair`); they sum to one
        and are exact at the ends."""
        raise NotImplementedError(f"a {self.kind} path does not say how its anchors weigh")

    def at(self, t: float) -> nn.Module:
        """A new model at t (BatchNorm statistics to be recomputed)."""
        return with_state(self.template, self.state_at(t))

    def sets(self, ts: Sequence[float]) -> AffineFamily | dict[str, torch.Tensor]:
        """The floating tensors at every t, for `evaluate_sets`."""
        states = [self.state_at(t) for t in ts]
        return {k: torch.stack([s[k] for s in states]) for k in _floating(self.a)}

    def to(self, device: str | torch.device) -> Path:
        """A copy of the path on `device` (this one is left where it is)."""
        moved = copy.copy(self)
        moved.template = copy.deepcopy(self.template).to(device)
        moved.anchors = tuple({k: v.to(device) for k, v in a.items()} for a in self.anchors)
        return moved


class AffinePath(Path):
    """sum_j w_j(t) anchor_j, with `weights(t)` exact at the ends."""

    def weights(self, t: float) -> tuple[float, ...]:
        raise NotImplementedError

    def anchor_weights(self, t: float) -> tuple[float, ...]:
        return self.weights(check_t(t))

    def state_at(self, t: float) -> State:
        t = check_t(t)
        w = self.weights(t)
        out: State = {}
        for key, value in self.a.items():
            if not value.is_floating_point():
                out[key] = value.clone()
                continue
            exact = [j for j, wj in enumerate(w) if wj == 1.0]
            if exact:  # an anchor itself, bit for bit
                out[key] = self.anchors[exact[0]][key].clone()
                continue
            combined = torch.zeros_like(value, dtype=torch.float64)
            for wj, anchor in zip(w, self.anchors, strict=True):
                if wj != 0.0:
                    combined += wj * anchor[key].double()
            out[key] = combined.to(value.dtype)
        return out

    def sets(self, ts: Sequence[float]) -> AffineFamily:
        coefficients = torch.tensor(
            [self.weights(check_t(t)) for t in ts], dtype=torch.float64
        ).reshape(len(ts), len(self.anchors))
        return anchor_family(self.anchors, coefficients)


def linear_weights(t: float) -> tuple[float, float]:
    """Weights of (a, b) on the straight line at t."""
    return (1.0 - t, t)


class LinearPath(AffinePath):
    """(1 - t) a + t b."""

    kind = "linear"

    def weights(self, t: float) -> tuple[float, ...]:
        return linear_weights(t)


class RawLinearPath(LinearPath):
    """(1 - t) a + t b in the networks' original coordinates."""

    kind = "raw-linear"


def polychain_weights(t: float) -> tuple[float, float, float]:
    """Weights of (a, bend, b) on the single-bend chain at t."""
    if t <= 0.5:
        return (1.0 - 2 * t, 2 * t, 0.0)
    return (0.0, 2.0 - 2 * t, 2 * t - 1.0)


def bezier_weights(t: float) -> tuple[float, float, float]:
    """Weights of (a, control point, b) on the quadratic Bezier curve at t."""
    return ((1 - t) ** 2, 2 * t * (1 - t), t**2)


class PolyChainPath(AffinePath):
    """Two straight segments a -> bend (t <= 1/2) -> b (Garipov et al. 2018)."""

    kind = "polychain"

    def weights(self, t: float) -> tuple[float, ...]:
        return polychain_weights(t)


class BezierPath(AffinePath):
    """The quadratic Bezier curve (1 - t)^2 a + 2 t (1 - t) bend + t^2 b."""

    kind = "bezier"

    def weights(self, t: float) -> tuple[float, ...]:
        return bezier_weights(t)


class GeodesicPath(Path):
    """Slerp in every cell with the same t, other parameters linearly (`slerp_state`)."""

    kind = "geodesic"

    def __init__(self, template: nn.Module, anchors: Sequence[State], spec: SymmetrySpec) -> None:
        super().__init__(template, anchors)
        self.spec = spec

    def state_at(self, t: float) -> State:
        return slerp_state(self.a, self.b, t, self.spec)

    def anchor_weights(self, t: float) -> tuple[float, ...]:
        """(1 - t, t): the cells move with their slerp weights, but the point at t is
        still the fraction t of the way from a to b."""
        return linear_weights(check_t(t))

    def sets(self, ts: Sequence[float]) -> AffineFamily | dict[str, torch.Tensor]:
        """Every t as a combination of the two ends: per cell with its slerp weights
        (`slerp_weights`), elsewhere (1 - t, t); the stacked states where some tensor
        belongs to two cells."""
        weights = slerp_weights(self.a, self.b, ts, self.spec)
        if weights is None:
            return super().sets(ts)
        linear = torch.tensor(
            [linear_weights(check_t(t)) for t in ts], dtype=torch.float64
        ).reshape(len(ts), 2)
        return anchor_family(self.anchors, linear, weights)

    def length(self) -> float:
        """sqrt(sum_c theta_c^2) over every cell: the Riemannian length of the path (the
        geodesic distance of its ends in their current alignment)."""
        total = 0.0
        for cell, size in cell_families(self.spec):
            u = normalize_rows(cell_matrix(self.a, cell, size).double())
            v = normalize_rows(cell_matrix(self.b, cell, size).double())
            total += float(cell_angles(u, v).pow(2).sum())
        return math.sqrt(total)


def _template(model: nn.Module, state: State) -> nn.Module:
    return with_state(model, state).eval()


def linear(
    a: nn.Module,
    b: nn.Module,
    *,
    raw: bool = False,
    spec: SymmetrySpec | None = None,
    seed: int = 0,
) -> LinearPath:
    """The straight line from a to b in canonical coordinates, b aligned to a; with
    `raw=True` in the original coordinates (no canonicalization, no alignment)."""
    ends = endpoints(a, b, raw=raw, spec=spec, seed=seed)
    kind = RawLinearPath if raw else LinearPath
    return kind(_template(a, ends.a), [ends.a, ends.b])


def geodesic(
    a: nn.Module, b: nn.Module, *, spec: SymmetrySpec | None = None, seed: int = 0
) -> GeodesicPath:
    """The geodesic on the toroid from canonical a to canonical b aligned to a."""
    ends = endpoints(a, b, spec=spec, seed=seed)
    assert ends.spec is not None
    return GeodesicPath(_template(a, ends.a), [ends.a, ends.b], ends.spec)


def _bend_state(bend: nn.Module, like: State) -> State:
    state = bend.state_dict()
    check_same_architecture(like, state, "the bend and the endpoints")
    return {k: v.to(like[k].device) for k, v in state.items()}


def polychain(
    a: nn.Module,
    bend: nn.Module,
    b: nn.Module,
    *,
    spec: SymmetrySpec | None = None,
    seed: int = 0,
) -> PolyChainPath:
    """a -> bend -> b in straight segments, a canonical and b aligned to it. The bend is
    used as it is: it must live in those coordinates, as the bends of `fit_bend` and
    `retrain_midpoint` do."""
    ends = endpoints(a, b, spec=spec, seed=seed)
    return PolyChainPath(_template(a, ends.a), [ends.a, _bend_state(bend, ends.a), ends.b])


def bezier(
    a: nn.Module,
    bend: nn.Module,
    b: nn.Module,
    *,
    spec: SymmetrySpec | None = None,
    seed: int = 0,
) -> BezierPath:
    """The quadratic Bezier curve with control point `bend` (see `polychain`)."""
    ends = endpoints(a, b, spec=spec, seed=seed)
    return BezierPath(_template(a, ends.a), [ends.a, _bend_state(bend, ends.a), ends.b])


def make_path(
    kind: str,
    a: nn.Module,
    b: nn.Module,
    *,
    bend: nn.Module | None = None,
    spec: SymmetrySpec | None = None,
    seed: int = 0,
) -> Path:
    """The path of `kind` (one of PATH_KINDS) between a and b; polychain and bezier need
    `bend`."""
    if kind not in PATH_KINDS:
        raise InvalidArgumentError(f"unknown path kind {kind!r}; valid: {', '.join(PATH_KINDS)}")
    if kind in ("polychain", "bezier"):
        if bend is None:
            raise InvalidArgumentError(f"a {kind} path needs a bend (see fit_bend)")
        make = polychain if kind == "polychain" else bezier
        return make(a, bend, b, spec=spec, seed=seed)
    if kind == "geodesic":
        return geodesic(a, b, spec=spec, seed=seed)
    return linear(a, b, raw=kind == "raw-linear", spec=spec, seed=seed)


def uniform_ts(points: int) -> tuple[float, ...]:
    """`points` evenly spaced t in [0, 1], both ends exact."""
    if points < 2:
        raise InvalidArgumentError(f"points must be at least 2, got {points}")
    return tuple(i / (points - 1) for i in range(points))
