"""Flip paths between two binary networks: starting from a, the weights where the aligned
b differs are flipped one by one in a random order until the network is b; the error is
profiled along the way, for several orders (DESIGN.md, Binary networks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate import evaluate_in_chunks, stack_states
from toroid.flatness.flip_energy import binary_spec
from toroid.flatness.parts import SplitName, measured_parts
from toroid.manifold.cells import binary_vector, set_binary_vector_
from toroid.manifold.distance import check_same_architecture
from toroid.manifold.geodesic import slerp_state
from toroid.paths.profile import BarrierKind, barrier
from toroid.symmetry.align import align as align_models
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.slots import State
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec

Metric = Literal["error", "loss"]


@dataclass(frozen=True)
class FlipPath:
    """Error and loss profiles of flip paths from a to b (b aligned to a).

    Point j of every order has flipped `flips[j]` of the `differing` binary weights (the
    Hamming distance of a and aligned b, out of `weights`), t[j] = flips[j] / differing
    (two points, t = 0 and 1, when nothing differs).
    `error[split][o][j]` and `loss[split][o][j]`: order o at point j; every order starts
    at a and ends at b (the same two evaluations). BatchNorm statistics are recomputed at
    every point, the endpoints included."""

    t: tuple[float, ...]
    flips: tuple[int, ...]
    differing: int
    weights: int
    error: Mapping[str, tuple[tuple[float, ...], ...]]
    loss: Mapping[str, tuple[tuple[float, ...], ...]]

    @property
    def orders(self) -> int:
        return len(next(iter(self.error.values())))

    def _profiles(self, split: str, metric: Metric) -> tuple[tuple[float, ...], ...]:
        profiles = self.error if metric == "error" else self.loss
        if split not in profiles:
            raise InvalidArgumentError(
                f"split {split!r} was not measured; measured: {', '.join(profiles)}"
            )
        return profiles[split]

    def barriers(
        self,
        split: str = "train",
        kind: BarrierKind = "max_minus_mean",
        metric: Metric = "error",
    ) -> tuple[float, ...]:
        """The named barrier (`toroid.paths.barrier`) of every order's profile."""
        return tuple(barrier(self.t, p, kind=kind) for p in self._profiles(split, metric))

    def mean_barrier(
        self,
        split: str = "train",
        kind: BarrierKind = "max_minus_mean",
        metric: Metric = "error",
    ) -> float:
        values = self.barriers(split, kind, metric)
        return sum(values) / len(values)

    def max_barrier(
        self,
        split: str = "train",
        kind: BarrierKind = "max_minus_mean",
        metric: Metric = "error",
    ) -> float:
        return max(self.barriers(split, kind, metric))

    def mean_profile(self, split: str = "train", metric: Metric = "error") -> tuple[float, ...]:
        """The profile averaged over orders, point by point."""
        profiles = self._profiles(split, metric)
        return tuple(sum(column) / len(column) for column in zip(*profiles, strict=True))


def flip_counts(differing: int, points: int) -> tuple[int, ...]:
    """Up to `points` distinct flip counts from 0 to `differing`, as evenly spaced as
    integers allow (fewer when fewer weights differ; 0 and 0 when none does)."""
    if differing == 0:
        return (0, 0)
    return tuple(sorted({round(j * differing / (points - 1)) for j in range(points)}))


def flip_path(
    a: nn.Module,
    b: nn.Module,
    *,
    data: Split | DataLike,
    seed: int = 0,
    orders: int = 4,
    points: int = 11,
    split: SplitName = "both",
    align: bool = True,
    spec: SymmetrySpec | None = None,
    bn_samples: int | None = 2000,
    bn_batch_size: int = 500,
    batch_size: int = 500,
    max_sets: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FlipPath:
    """Flip paths between the binary networks `a` and `b` (one architecture), profiled on
    `data` (a Split; training data alone for split="train").

    Both are put in canonical form (latent weights replaced by their signs) and, unless
    `align=False`, b is aligned to a (weight matching on the sign weights, seeded by
    `seed`). For each of `orders` random orders of the binary weights where the two differ
    (order o: the o-th `torch.randperm` of their positions in `binary_vector`, from a CPU
    generator seeded with `seed`), the path visits up to `points` networks with evenly
    spaced numbers of those weights switched from a's sign to b's (`flip_counts`); the
    BatchNorm affine parameters, which the binary weights do not carry, follow the
    geodesic between a's and b's at the same fraction t (slerp of the normalized BatchNorm
    pairs). Every point gets its BatchNorm statistics recomputed on `bn_samples` training
    inputs and is evaluated with `evaluate_many`, on `device` (default: a's). With
    `align=False` b's own canonical form is used (canonical signs, no permutation)."""
    if orders < 1:
        raise InvalidArgumentError(f"orders must be at least 1, got {orders}")
    if points < 2:
        raise InvalidArgumentError(f"points must be at least 2 (the endpoints), got {points}")
    check_same_architecture(a.state_dict(), b.state_dict())
    checked = binary_spec(a, spec)
    parts = measured_parts(data, split)
    train = as_tensor_data(data.train if isinstance(data, Split) else data)
    if align:
        result = align_models(b, a, spec=checked, seed=seed)
        state_a, state_b = result.reference.state_dict(), result.model.state_dict()
    else:
        state_a, state_b = (
            canonical_state(m.state_dict(), checked, output="normalize") for m in (a, b)
        )
    target = device if device is not None else next(iter(state_a.values())).device
    state_a = {k: v.to(target) for k, v in state_a.items()}
    state_b = {k: v.to(target) for k, v in state_b.items()}
    center = with_state(a, state_a).to(target)

    vec_a, vec_b = binary_vector(state_a, checked), binary_vector(state_b, checked)
    differ = torch.nonzero(vec_a != vec_b).flatten()
    counts = flip_counts(int(differ.numel()), points)
    ts = tuple(c / differ.numel() for c in counts) if differ.numel() else (0.0, 1.0)
    points = len(counts)
    generator = torch.Generator().manual_seed(seed)
    order_index = [
        differ[torch.randperm(differ.numel(), generator=generator).to(differ.device)]
        for _ in range(orders)
    ]
    names = [n for n, p in a.named_parameters() if p.is_floating_point()]

    def point(order: int, j: int) -> State:
        state = slerp_state(state_a, state_b, ts[j], checked)
        chosen = order_index[order][: counts[j]]
        vector = vec_a.clone()
        vector[chosen] = vec_b[chosen]
        set_binary_vector_(state, checked, vector)
        return {n: state[n] for n in names}

    # Set 0 is a, set 1 is b; then the interior points of every order.
    jobs: list[tuple[int, int]] = [(0, 0), (0, points - 1)]
    jobs += [(o, j) for o in range(orders) for j in range(1, points - 1)]
    with progress_helper.task("flip path", len(jobs), enabled=progress) as reporter:
        measured = evaluate_in_chunks(
            center,
            lambda begin, stop: stack_states([point(o, j) for o, j in jobs[begin:stop]]),
            len(jobs),
            parts,
            chunk_size=max_sets,
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
    losses = {name: metrics.loss for name, metrics in measured.items()}

    def profiles(values: torch.Tensor) -> tuple[tuple[float, ...], ...]:
        interior = values[2:].view(orders, points - 2)
        return tuple(
            (float(values[0]), *(float(v) for v in interior[o]), float(values[1]))
            for o in range(orders)
        )

    return FlipPath(
        t=ts,
        flips=counts,
        differing=int(differ.numel()),
        weights=int(vec_a.numel()),
        error={name: profiles(errors[name]) for name in parts},
        loss={name: profiles(losses[name]) for name in parts},
    )


__all__ = ["FlipPath", "flip_counts", "flip_path"]
