"""Parameter sets that lie on an affine family: theta_k = base + sum_d c[k, d] v_d.

Local energy evaluates theta (1 + sigma_i z_s) = theta + sigma_i (theta * z_s) for every
sigma i and noise draw s: K = sigmas x samples sets spanned by only `samples` directions.
Handing `evaluate_many` the family instead of K stacked copies lets it compute the input
layer once per direction instead of once per set (the layer is linear in its weights and
its input is the same for every set), which is most of an MLP's work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from toroid.errors import InvalidArgumentError


@dataclass(frozen=True)
class AffineFamily:
    """K parameter sets `base[name] + sum_d coefficients[k, d] * directions[name][d]`.

    `base` maps state-dict names to unstacked tensors; `directions` maps a subset of those
    names to tensors stacked along a first axis of length D (names without directions are
    the same in every set); `coefficients` is (K, D)."""

    base: Mapping[str, torch.Tensor]
    directions: Mapping[str, torch.Tensor]
    coefficients: torch.Tensor

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

    def __len__(self) -> int:
        return int(self.coefficients.shape[0])

    def rows(self, start: int, stop: int) -> AffineFamily:
        """Sets start..stop-1, keeping only the directions they use."""
        coefficients = self.coefficients[start:stop]
        used = (coefficients != 0).any(dim=0).nonzero().flatten()
        return AffineFamily(
            self.base,
            {name: value[used] for name, value in self.directions.items()},
            coefficients[:, used],
        )

    def stacked(self, *, exclude: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
        """Every set's tensors that vary, stacked along a first axis of length K (the
        layout `evaluate_many` takes), except the names in `exclude`."""
        out = {}
        for name, value in self.directions.items():
            if name in exclude:
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
