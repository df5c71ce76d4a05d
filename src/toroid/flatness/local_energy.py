"""Local energy: the mean increase of the error under random weight perturbations of
relative size sigma, the flatness measure of Pittorino et al. (2022) and Baldassi et al."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate import (
    AffineFamily,
    EvalPlan,
    evaluate_sets,
    in_chunks,
    multiplicative_family,
    plan_or_loose,
    stack_states,
)
from toroid.flatness.parts import SplitName, measured_parts
from toroid.manifold.perturb import NOISES, draw_noise, perturbed_state
from toroid.models.finite import check_finite_data, check_finite_model
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec

EnergyNoise = Literal["multiplicative", "spherical", "additive", "flip"]
ENERGY_NOISES: tuple[str, ...] = ("multiplicative", "spherical", "additive", "flip")
# The noises of `local_energy`: the perturbations of `toroid.manifold.perturb`, and additive
# noise theta + sigma z, the usual one outside the symmetry-aware setting.
ContinuousNoise = Literal["multiplicative", "spherical", "additive"]
CONTINUOUS_NOISES: tuple[str, ...] = (*NOISES, "additive")


@dataclass(frozen=True)
class LocalEnergy:
    """dE(level) = E[err(theta perturbed at that level)] - err(theta), per split: the result
    of every local energy, continuous or binary.

    `levels` are the noise levels: the relative sizes sigma for `noise="multiplicative"`
    and `"spherical"`, the absolute standard deviation sigma for `"additive"`
    (`local_energy`), the flip probabilities p for `noise="flip"`
    (`flip_energy`). `mean[split][i]` and `stderr[split][i]` belong to `levels[i]`;
    `raw[split][i][s]` is the increase for noise sample s (the same noise draw for every
    level: common random numbers, so curves are smooth in the level). `base[split]` is
    err(theta), computed with the same BatchNorm recomputation as the perturbed networks.
    `weights`: the number of binary weights a flip energy flips (None otherwise)."""

    levels: tuple[float, ...]
    noise: EnergyNoise
    samples: int
    base: Mapping[str, float]
    mean: Mapping[str, tuple[float, ...]]
    stderr: Mapping[str, tuple[float, ...]]
    raw: Mapping[str, tuple[tuple[float, ...], ...]]
    weights: int | None = None

    def __post_init__(self) -> None:
        if self.noise not in ENERGY_NOISES:
            raise InvalidArgumentError(
                f"noise must be one of {', '.join(ENERGY_NOISES)}, got {self.noise!r}"
            )

    def _curve(self, split: str) -> tuple[float, ...]:
        if split not in self.mean:
            raise InvalidArgumentError(
                f"split {split!r} was not measured; measured: {', '.join(self.mean)}"
            )
        return self.mean[split]

    def at(self, level: float, split: str = "train") -> float:
        """Mean dE at `level`, linearly interpolated between measured levels."""
        curve = self._curve(split)
        levels = self.levels
        if not levels[0] <= level <= levels[-1]:
            raise InvalidArgumentError(
                f"level {level} is outside the measured range [{levels[0]}, {levels[-1]}]"
            )
        for i in range(len(levels) - 1):
            lo, hi = levels[i], levels[i + 1]
            if lo <= level <= hi:
                w = 0.0 if hi == lo else (level - lo) / (hi - lo)
                return (1 - w) * curve[i] + w * curve[i + 1]
        return curve[-1]

    def level_at(self, threshold: float, split: str = "train") -> float | None:
        """The smallest level where the mean dE reaches `threshold` (linear interpolation),
        or None if it never does in the measured range: a flatness radius."""
        curve = self._curve(split)
        levels = self.levels
        for i, value in enumerate(curve):
            if value >= threshold:
                if i == 0:
                    return levels[0]
                lo, hi = curve[i - 1], value
                w = (threshold - lo) / (hi - lo)
                return levels[i - 1] + w * (levels[i] - levels[i - 1])
        return None


_DEFAULT_PLAN = EvalPlan(max_sets=32)


def _additive_family(
    base: Mapping[str, torch.Tensor],
    noise: Sequence[Mapping[str, torch.Tensor]],
    sets: Sequence[tuple[float, int] | None],
) -> AffineFamily:
    """The family theta + sigma z_s: one direction z_s per noise draw, one set per entry of
    `sets`, (sigma, s) or None for the unperturbed network."""
    names = list(noise[0])
    directions = {name: torch.stack([z[name] for z in noise]) for name in names}
    coefficients = torch.zeros(len(sets), len(noise), dtype=torch.float64)
    for k, entry in enumerate(sets):
        if entry is not None:
            coefficients[k, entry[1]] = entry[0]
    return AffineFamily(dict(base), directions, coefficients)


def local_energy(
    model: nn.Module,
    data: Split | DataLike,
    *,
    sigmas: Sequence[float],
    samples: int = 8,
    noise: ContinuousNoise = "multiplicative",
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
    plan: EvalPlan | None = None,
) -> LocalEnergy:
    """Local energy of `model` on `data` (a Split; training data alone for split="train"),
    a `LocalEnergy` whose levels are the sigmas.

    The network is first put in canonical form (output layer kept, so errors and losses are
    its own), then, for each of `samples` noise draws z_s (seeded by `seed`) and each
    sigma, its parameters (weights, biases, BatchNorm affine parameters; never running
    statistics) are perturbed: `multiplicative` theta (1 + sigma z), `spherical` (each
    cell moved on its sphere), or `additive` theta + sigma z, z ~ N(0, I) per parameter, in
    the coordinates the network has after the `canonical` step (`canonical=False`: its
    raw weights, the plain Gaussian-perturbation flatness; note that it is not invariant
    under the scale symmetries, so the same function measures differently at different
    points of its orbit). Every perturbed network, and the unperturbed one, gets its
    BatchNorm statistics recomputed on the training inputs (DESIGN.md's policy) and is
    evaluated with `evaluate_sets`. Multiplicative and additive noise go to `evaluate_sets`
    as an affine family, so the input layer costs one pass per noise draw, not one per network.
    dE at sigma = 0 is exactly 0.

    How the networks are evaluated is `plan` (an `EvalPlan`; its `bn` must be
    "recompute") or, without one, the loose arguments: `bn_samples` training inputs drawn
    with `seed`, in minibatches of `bn_batch_size`; `batch_size`; `max_sets` networks at a
    time (memory grows with it); on `device` (default: the model's). An explicit plan
    wins: loose evaluation arguments changed from their defaults together with a plan are
    refused, and the BatchNorm subset is then drawn with `plan.seed` (`seed` still draws
    the noise)."""
    plan = plan_or_loose(
        plan,
        replace(_DEFAULT_PLAN, seed=seed),
        bn_samples=bn_samples,
        bn_batch_size=bn_batch_size,
        batch_size=batch_size,
        max_sets=max_sets,
        device=device,
        recomputes="local energy recomputes BatchNorm statistics of every perturbed network",
    )
    values = tuple(float(s) for s in sigmas)
    if not values or any(not math.isfinite(s) or s < 0 for s in values):
        raise InvalidArgumentError(f"sigmas must be finite numbers >= 0, got {list(sigmas)}")
    if any(b <= a for a, b in pairwise(values)):
        raise InvalidArgumentError(f"sigmas must be strictly increasing, got {list(values)}")
    if samples < 1:
        raise InvalidArgumentError(f"samples must be at least 1, got {samples}")
    if noise not in CONTINUOUS_NOISES:
        raise InvalidArgumentError(
            f"noise must be one of {', '.join(CONTINUOUS_NOISES)}, got {noise!r}"
        )
    if split not in ("train", "test", "both"):
        raise InvalidArgumentError(f"split must be train, test or both, got {split!r}")
    parts = measured_parts(data, split)
    train = as_tensor_data(data.train if isinstance(data, Split) else data)
    check_finite_model(model)
    check_finite_data(train, what="the training data")

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
    if plan.device is not None:
        state = {k: v.to(plan.device) for k, v in state.items()}
    center = with_state(model, state).to(state[next(iter(state))].device)
    names = [name for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    directions = [draw_noise(state, names, generator) for _ in range(samples)]

    # (sigma, sample) pairs for every sigma > 0, sample-major and in chunks of whole noise
    # draws where they fit, so that a chunk spans few noise directions (input-layer reuse);
    # the unperturbed network last.
    pairs = [(i, s) for s in range(samples) for i, sigma in enumerate(values) if sigma > 0]
    jobs: list[tuple[int, int] | None] = [*pairs, None]
    per_draw, most = max(1, len(pairs) // samples), plan.max_sets
    chunk_size = most // per_draw * per_draw if per_draw <= most else most
    entries = [None if job is None else (values[job[0]], job[1]) for job in jobs]
    family: AffineFamily | None = None
    if noise == "multiplicative":
        family = multiplicative_family({n: state[n] for n in names}, directions, entries)
    elif noise == "additive":
        family = _additive_family({n: state[n] for n in names}, directions, entries)

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
                        state, values[job[0]], directions[job[1]], kind="spherical", spec=spec
                    ).items()
                    if n in directions[job[1]]
                }
                for job in jobs[begin:stop]
            ]
        )

    with progress_helper.task(f"local energy ({noise})", len(jobs), enabled=progress) as reporter:
        measured = evaluate_sets(
            center,
            in_chunks(len(jobs), chunk_size, sets),
            parts,
            bn_data=train,
            plan=plan,
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
