"""Local energy: the mean increase of the error under random weight perturbations of
relative size sigma, the flatness measure of Pittorino et al. (2022) and Baldassi et al."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate import (
    AffineFamily,
    evaluate_in_chunks,
    multiplicative_family,
    stack_states,
)
from toroid.flatness.parts import SplitName, measured_parts
from toroid.manifold.perturb import NOISES, Noise, draw_noise, perturbed_state
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec


@dataclass(frozen=True)
class LocalEnergy:
    """dE(sigma) = E_z[err(theta perturbed by sigma z)] - err(theta), per split.

    `mean[split][i]` and `stderr[split][i]` belong to `sigmas[i]`; `raw[split][i][s]` is the
    increase for noise sample s (the same noise direction z_s for every sigma: common
    random numbers, so curves are smooth in sigma). `base[split]` is err(theta), computed
    with the same BatchNorm recomputation as the perturbed networks."""

    sigmas: tuple[float, ...]
    noise: str
    samples: int
    base: Mapping[str, float]
    mean: Mapping[str, tuple[float, ...]]
    stderr: Mapping[str, tuple[float, ...]]
    raw: Mapping[str, tuple[tuple[float, ...], ...]]

    def _curve(self, split: str) -> tuple[float, ...]:
        if split not in self.mean:
            raise InvalidArgumentError(
                f"split {split!r} was not measured; measured: {', '.join(self.mean)}"
            )
        return self.mean[split]

    def at(self, sigma: float, split: str = "train") -> float:
        """Mean dE at `sigma`, linearly interpolated between measured sigmas."""
        curve = self._curve(split)
        if not self.sigmas[0] <= sigma <= self.sigmas[-1]:
            raise InvalidArgumentError(
                f"sigma {sigma} is outside the measured range [{self.sigmas[0]}, {self.sigmas[-1]}]"
            )
        for i in range(len(self.sigmas) - 1):
            lo, hi = self.sigmas[i], self.sigmas[i + 1]
            if lo <= sigma <= hi:
                w = 0.0 if hi == lo else (sigma - lo) / (hi - lo)
                return (1 - w) * curve[i] + w * curve[i + 1]
        return curve[-1]

    def sigma_at(self, threshold: float, split: str = "train") -> float | None:
        """The smallest sigma where the mean dE reaches `threshold` (linear interpolation),
        or None if it never does in the measured range: a flatness radius."""
        curve = self._curve(split)
        for i, value in enumerate(curve):
            if value >= threshold:
                if i == 0:
                    return self.sigmas[0]
                lo, hi = curve[i - 1], value
                w = (threshold - lo) / (hi - lo)
                return self.sigmas[i - 1] + w * (self.sigmas[i] - self.sigmas[i - 1])
        return None


def local_energy(
    model: nn.Module,
    data: Split | DataLike,
    *,
    sigmas: Sequence[float],
    samples: int = 8,
    noise: Noise = "multiplicative",
    split: SplitName = "train",
    seed: int = 0,
    spec: SymmetrySpec | None = None,
    canonical: bool = True,
    bn_samples: int | None = 2000,
    bn_batch_size: int = 500,
    batch_size: int = 500,
    max_sets: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> LocalEnergy:
    """Local energy of `model` on `data` (a Split; training data alone for split="train").

    The network is first put in canonical form (output layer kept, so errors and losses are
    its own), then, for each of `samples` noise draws z_s (seeded) and each sigma, its
    parameters (weights, biases, BatchNorm affine parameters; never running statistics) are
    perturbed: `multiplicative` theta (1 + sigma z), or `spherical` (each cell moved on its
    sphere). Every perturbed network, and the unperturbed one, gets its BatchNorm statistics
    recomputed on `bn_samples` training inputs (DESIGN.md's policy) and is evaluated with
    `evaluate_many`, on `device` (default: the model's), `max_sets` networks at a time
    (memory grows with it). Multiplicative noise goes to `evaluate_many` as an affine
    family, so the input layer costs one pass per noise draw, not one per network.
    dE at sigma = 0 is exactly 0."""
    values = tuple(float(s) for s in sigmas)
    if not values or any(not math.isfinite(s) or s < 0 for s in values):
        raise InvalidArgumentError(f"sigmas must be finite numbers >= 0, got {list(sigmas)}")
    if any(b <= a for a, b in pairwise(values)):
        raise InvalidArgumentError(f"sigmas must be strictly increasing, got {list(values)}")
    if samples < 1:
        raise InvalidArgumentError(f"samples must be at least 1, got {samples}")
    if noise not in NOISES:
        raise InvalidArgumentError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
    if split not in ("train", "test", "both"):
        raise InvalidArgumentError(f"split must be train, test or both, got {split!r}")
    parts = measured_parts(data, split)
    train = as_tensor_data(data.train if isinstance(data, Split) else data)

    if noise == "spherical" and not canonical:
        raise InvalidArgumentError(
            "spherical noise moves the cells of the canonical network; use canonical=True"
        )
    if canonical:
        if spec is None:
            from toroid.symmetry.derive import spec_for

            spec = spec_for(model)
        state = canonical_state(model.state_dict(), spec, output="keep")
    else:
        state = dict(model.state_dict())
    if device is not None:
        state = {k: v.to(device) for k, v in state.items()}
    center = with_state(model, state).to(state[next(iter(state))].device)
    names = [name for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    directions = [draw_noise(state, names, generator) for _ in range(samples)]

    # (sigma, sample) pairs for every sigma > 0, sample-major and in chunks of whole noise
    # draws where they fit, so that a chunk spans few noise directions (input-layer reuse);
    # the unperturbed network last.
    pairs = [(i, s) for s in range(samples) for i, sigma in enumerate(values) if sigma > 0]
    jobs: list[tuple[int, int] | None] = [*pairs, None]
    per_draw = max(1, len(pairs) // samples)
    chunk_size = max_sets // per_draw * per_draw if per_draw <= max_sets else max_sets
    family = (
        multiplicative_family(
            {n: state[n] for n in names},
            directions,
            [None if job is None else (values[job[0]], job[1]) for job in jobs],
        )
        if noise == "multiplicative"
        else None
    )

    def sets(begin: int, stop: int) -> AffineFamily | dict[str, torch.Tensor]:
        if family is not None:
            return family.rows(begin, stop)
        return stack_states(
            [
                {n: state[n] for n in names}
                if job is None
                else {
                    n: v
                    for n, v in perturbed_state(
                        state, values[job[0]], directions[job[1]], kind=noise, spec=spec
                    ).items()
                    if n in directions[job[1]]
                }
                for job in jobs[begin:stop]
            ]
        )

    with progress_helper.task(f"local energy ({noise})", len(jobs), enabled=progress) as reporter:
        measured = evaluate_in_chunks(
            center,
            sets,
            len(jobs),
            parts,
            chunk_size=chunk_size,
            bn="recompute",
            bn_data=train,
            bn_samples=bn_samples,
            bn_batch_size=bn_batch_size,
            batch_size=batch_size,
            seed=seed,
            max_sets=max_sets,
            on_chunk=reporter.advance,
        )
    errors = {name: metrics.error for name, metrics in measured.items()}

    position = {job: k for k, job in enumerate(jobs) if job is not None}
    base = {name: float(errors[name][-1]) for name in parts}
    mean: dict[str, tuple[float, ...]] = {}
    stderr: dict[str, tuple[float, ...]] = {}
    raw: dict[str, tuple[tuple[float, ...], ...]] = {}
    for name in parts:
        per_sigma: list[tuple[float, ...]] = []
        for i, sigma in enumerate(values):
            if sigma == 0:
                per_sigma.append((0.0,) * samples)
                continue
            index = [position[(i, s)] for s in range(samples)]
            per_sigma.append(tuple(float(errors[name][k]) - base[name] for k in index))
        raw[name] = tuple(per_sigma)
        mean[name] = tuple(sum(r) / samples for r in per_sigma)
        stderr[name] = tuple(
            float(torch.tensor(r, dtype=torch.float64).std() / math.sqrt(samples))
            if samples > 1
            else float("nan")
            for r in per_sigma
        )
    return LocalEnergy(values, noise, samples, base, mean, stderr, raw)
