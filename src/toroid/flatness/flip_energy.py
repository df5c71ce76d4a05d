"""Flip local energy of a binary network: the mean increase of the error when each binary
weight is flipped independently with probability p, the binary counterpart of the local
energy under multiplicative noise (DESIGN.md, Binary networks)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, evaluate_sets, in_chunks, plan_or_loose, stack_states
from toroid.flatness.local_energy import LocalEnergy
from toroid.flatness.parts import SplitName, measured_parts
from toroid.manifold.cells import binary_vector, set_binary_vector_
from toroid.models.finite import check_finite_data, check_finite_model
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec


def check_ps(ps: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(p) for p in ps)
    if not values or any(not (math.isfinite(p) and 0.0 <= p <= 1.0) for p in values):
        raise InvalidArgumentError(f"ps must be flip probabilities in [0, 1], got {list(ps)}")
    if any(b <= a for a, b in pairwise(values)):
        raise InvalidArgumentError(f"ps must be strictly increasing, got {list(values)}")
    return values


def binary_spec(model: nn.Module, spec: SymmetrySpec | None) -> SymmetrySpec:
    """The model's spec, refusing a network without binary layers."""
    if spec is None:
        from toroid.symmetry.derive import spec_for

        spec = spec_for(model)
    if not spec.binary_tensors():
        raise InvalidArgumentError(
            f"{type(model).__name__} has no binary layers; flip measures need a binary "
            "network (e.g. mlp(..., binary=True))"
        )
    return spec


def flip_energy(
    model: nn.Module,
    data: Split | DataLike,
    *,
    ps: Sequence[float],
    samples: int = 8,
    split: SplitName = "train",
    seed: int = 0,
    spec: SymmetrySpec | None = None,
    bn_samples: int | None = 2000,
    bn_batch_size: int = 500,
    batch_size: int = 500,
    max_sets: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    plan: EvalPlan | None = None,
) -> LocalEnergy:
    """Flip local energy of the binary network `model` on `data` (a Split; training data
    alone for split="train"): a `LocalEnergy` with `noise="flip"`, the flip probabilities
    `ps` as its levels and the number of binary weights as its `weights`.

    The network is put in canonical form first (latent weights replaced by their signs, so
    that negating a weight flips it exactly; logits kept). For each of `samples` masks
    (seeded by `seed`) and each p, every binary weight (hidden and output layers;
    BatchNorm parameters are left alone) is flipped with probability p. Sample s draws one
    uniform u per weight (the s-th `torch.rand` of a CPU generator seeded with the seed,
    float64, over the weights in `binary_vector` order) and flips where u < p, for every p
    (common random numbers: the flips at a smaller p are a subset of those at a larger
    one). Every flipped network, and the unflipped one, gets its BatchNorm statistics
    recomputed on the training inputs (DESIGN.md's policy) and is evaluated with
    `evaluate_sets`. Nothing flips at p = 0, so dE(0) is exactly 0.

    How the networks are evaluated is `plan` (an `EvalPlan`; its `bn` must be
    "recompute") or, without one, the loose arguments (`bn_samples` training inputs drawn
    with `seed`, `bn_batch_size`, `batch_size`, `max_sets`, `device`: default the
    model's). An explicit plan wins: loose evaluation arguments changed from their
    defaults together with a plan are refused, and the BatchNorm subset is then drawn with
    `plan.seed` (`seed` still draws the masks)."""
    plan = plan_or_loose(
        plan,
        EvalPlan(seed=seed),
        bn_samples=bn_samples,
        bn_batch_size=bn_batch_size,
        batch_size=batch_size,
        max_sets=max_sets,
        device=device,
        recomputes="flip energy recomputes BatchNorm statistics of every flipped network",
    )
    values = check_ps(ps)
    if samples < 1:
        raise InvalidArgumentError(f"samples must be at least 1, got {samples}")
    parts = measured_parts(data, split)
    train = as_tensor_data(data.train if isinstance(data, Split) else data)
    check_finite_model(model)
    check_finite_data(train, what="the training data")
    spec = binary_spec(model, spec)
    state = canonical_state(model.state_dict(), spec, output="keep")
    if plan.device is not None:
        state = {k: v.to(plan.device) for k, v in state.items()}
    center = with_state(model, state).to(state[next(iter(state))].device)
    weights = binary_vector(state, spec)
    generator = torch.Generator().manual_seed(seed)
    uniforms = [
        torch.rand(weights.numel(), generator=generator, dtype=torch.float64).to(weights.device)
        for _ in range(samples)
    ]
    names = list(spec.binary_tensors())

    def flipped(p: float, s: int) -> dict[str, torch.Tensor]:
        out = dict(state)
        set_binary_vector_(out, spec, torch.where(uniforms[s] < p, -weights, weights))
        return {n: out[n] for n in names}

    # Set 0 is the unflipped network; then every (p, sample) pair, p = 0 included.
    jobs: list[tuple[int, int] | None] = [
        None,
        *((i, s) for i in range(len(values)) for s in range(samples)),
    ]

    def sets(begin: int, stop: int) -> dict[str, torch.Tensor]:
        return stack_states(
            [
                {n: state[n] for n in names} if job is None else flipped(values[job[0]], job[1])
                for job in jobs[begin:stop]
            ]
        )

    with progress_helper.task("flip local energy", len(jobs), enabled=progress) as reporter:
        measured = evaluate_sets(
            center,
            in_chunks(len(jobs), plan.max_sets, sets),
            parts,
            bn_data=train,
            plan=plan,
            on_chunk=reporter.advance,
        )
    errors = {name: metrics.error for name, metrics in measured.items()}

    base = {name: float(errors[name][0]) for name in parts}
    mean: dict[str, tuple[float, ...]] = {}
    stderr: dict[str, tuple[float, ...]] = {}
    raw: dict[str, tuple[tuple[float, ...], ...]] = {}
    for name in parts:
        increases = (errors[name][1:] - base[name]).view(len(values), samples)
        raw[name] = tuple(tuple(float(e) for e in row) for row in increases)
        mean[name] = tuple(float(row.mean()) for row in increases)
        stderr[name] = tuple(
            float(row.std() / math.sqrt(samples)) if samples > 1 else float("nan")
            for row in increases
        )
    return LocalEnergy(
        levels=values,
        noise="flip",
        samples=samples,
        base=base,
        mean=mean,
        stderr=stderr,
        raw=raw,
        weights=int(weights.numel()),
    )


__all__ = ["binary_spec", "check_ps", "flip_energy"]
