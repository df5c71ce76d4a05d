"""Parameter sets that lie on an affine family: theta_k = base + sum_d c[k, d] v_d.

Local energy evaluates theta (1 + sigma_i z_s) = theta + sigma_i (theta * z_s) for every
sigma i and noise draw s: K = sigmas x samples sets spanned by only `samples` directions.
Handing `evaluate_sets` the family instead of K stacked copies lets it compute the input
layer once per direction instead of once per set (the layer is linear in its weights and
its input is the same for every set), which is most of an MLP's work.

A tensor may also weigh the directions differently along its axes (`unit_coefficients`):
the geodesic slerps every cell with its own angle, so unit u's row at t is
alpha_u(t) a_u + beta_u(t) b_u. The input layer is still computed once per direction as
long as its weights vary only per output unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from toroid.errors import InvalidArgumentError


@dataclass(frozen=True)
class AffineFamily:
    """K parameter sets `base[name] + sum_d coefficients[k, d] * directions[name][d]`.

    `base` maps state-dict names to unstacked tensors; `directions` maps a subset of those
    names to tensors stacked along a first axis of length D (names without directions are
    the same in every set); `coefficients` is (K, D). `unit_coefficients` replaces the
    scalar coefficients of some tensors by (K, D, *s) tensors, s broadcastable to the
    tensor's shape: set k's tensor is then base + sum_d unit_coefficients[k, d] *
    directions[d], elementwise."""

    base: Mapping[str, torch.Tensor]
    directions: Mapping[str, torch.Tensor]
    coefficients: torch.Tensor
    unit_coefficients: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coefficients.dim() != 2:
            raise InvalidArgumentError(
                f"coefficients must be a (K, D) matrix, got shape {tuple(self.coefficients.shape)}"
            )
        count = self.coefficients.shape[1]
        for name, value in self.directions.items():
            if name not in self.base:
                raise InvalidArgumentError(f"direction {name!r} has no base tensor")
            if tuple(value.shape) != (count, *self.base[name].shape):
                raise InvalidArgumentError(
                    f"directions[{name!r}] has shape {tuple(value.shape)}; expected "
                    f"({count}, {', '.join(map(str, self.base[name].shape))})"
                )
        sets = self.coefficients.shape[0]
        for name, value in self.unit_coefficients.items():
            if name not in self.directions:
                raise InvalidArgumentError(f"unit coefficients {name!r} have no direction")
            shape = tuple(self.base[name].shape)
            if (
                value.dim() != 2 + len(shape)
                or tuple(value.shape[:2]) != (sets, count)
                or any(s not in (1, n) for s, n in zip(value.shape[2:], shape, strict=True))
            ):
                raise InvalidArgumentError(
                    f"unit_coefficients[{name!r}] has shape {tuple(value.shape)}; expected "
                    f"({sets}, {count}, ...) broadcastable to {shape}"
                )

    def __len__(self) -> int:
        return int(self.coefficients.shape[0])

    def rows(self, start: int, stop: int) -> AffineFamily:
        """Sets start..stop-1, keeping only the directions they use."""
        coefficients = self.coefficients[start:stop]
        units = {name: value[start:stop] for name, value in self.unit_coefficients.items()}
        used_mask = (coefficients != 0).any(dim=0)
        for value in units.values():
            used_mask |= (value != 0).flatten(2).any(dim=2).any(dim=0)
        used = used_mask.nonzero().flatten()
        return AffineFamily(
            self.base,
            {name: value[used] for name, value in self.directions.items()},
            coefficients[:, used],
            {name: value[:, used] for name, value in units.items()},
        )

    def to(self, device: str | torch.device) -> AffineFamily:
        """The same family with every tensor on `device`."""
        return AffineFamily(
            {name: value.to(device) for name, value in self.base.items()},
            {name: value.to(device) for name, value in self.directions.items()},
            self.coefficients.to(device),
            {name: value.to(device) for name, value in self.unit_coefficients.items()},
        )

    def weights_of(self, name: str) -> torch.Tensor:
        """The (K, D, *s) coefficients of tensor `name` (s all ones where they are scalar)."""
        if name in self.unit_coefficients:
            return self.unit_coefficients[name]
        trailing = [1] * self.base[name].dim()
        return self.coefficients.view(*self.coefficients.shape, *trailing)

    def stacked(self, *, exclude: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
        """Every set's tensors that vary, stacked along a first axis of length K (the
        layout `evaluate_sets` takes), except the names in `exclude`."""
        out = {}
        for name, value in self.directions.items():
            if name in exclude:
                continue
            if name in self.unit_coefficients:
                weights = self.unit_coefficients[name].to(dtype=value.dtype, device=value.device)
                combined = self.base[name].expand(weights.shape[0], *value.shape[1:]).clone()
                for d in range(value.shape[0]):
                    combined.addcmul_(weights[:, d], value[d])
                out[name] = combined
                continue
            coefficients = self.coefficients.to(dtype=value.dtype, device=value.device)
            combined = torch.tensordot(coefficients, value, dims=1)
            out[name] = combined + self.base[name].unsqueeze(0)
        return out


def multiplicative_family(
    base: Mapping[str, torch.Tensor],
    noise: Sequence[Mapping[str, torch.Tensor]],
    sets: Sequence[tuple[float, int] | None],
) -> AffineFamily:
    """The family of multiplicative perturbations theta (1 + sigma z_s): one direction
    theta * z_s per noise draw, and one set per entry of `sets`, either (sigma, s) or None
    for the unperturbed network."""
    if not noise:
        raise InvalidArgumentError("need at least one noise draw")
    names = list(noise[0])
    directions = {name: torch.stack([base[name] * z[name] for z in noise]) for name in names}
    coefficients = torch.zeros(len(sets), len(noise), dtype=torch.float64)
    for k, entry in enumerate(sets):
        if entry is not None:
            sigma, sample = entry
            coefficients[k, sample] = sigma
    return AffineFamily(dict(base), directions, coefficients)
