"""The two-segment chain between binary networks: a -> M -> b through a bend M obtained by
re-training the flip midpoint (half of the differing weights switched), each segment a
flip path (DESIGN.md, Binary networks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from toroid.data.tensordata import DataLike, Split
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, plan_or_loose
from toroid.flatness.flip_energy import binary_spec
from toroid.flatness.parts import SplitName
from toroid.manifold.cells import binary_vector, set_binary_vector_
from toroid.manifold.geodesic import slerp_state
from toroid.models.finite import check_finite_model
from toroid.paths.flip import flip_path
from toroid.paths.profile import METRICS, Metric, Profile
from toroid.symmetry.align import align as align_models
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec
from toroid.train import fit


@dataclass(frozen=True)
class FlipChain:
    """`bend`: the re-trained midpoint; `first` and `second`: the flip-path profiles
    a -> bend and bend -> b; `epochs` and `reached_zero_train_error` describe the
    re-training."""

    bend: nn.Module
    first: Profile
    second: Profile
    epochs: int
    reached_zero_train_error: bool

    def profile(self) -> Profile:
        """The whole chain as one flip `Profile` of kind "flip-chain": the first segment at
        t / 2, the second at 1/2 + t / 2 (the bend once, as the first segment's end); order
        o of the chain is order o of the first segment followed by order o of the second;
        `flips` counts from a through the bend to b, and `differing` is the sum of the
        segments' Hamming distances."""
        first, second = self.first, self.second
        metrics = [m for m in METRICS if getattr(first, m) is not None]
        curves = {m: first.values(m) + second.values(m)[1:] for m in metrics}
        per_order: dict[str, tuple[tuple[float, ...], ...]] = {
            m: tuple(a + b[1:] for a, b in zip(first.curves(m), second.curves(m), strict=True))
            for m in metrics
        }
        flips = differing = None
        if first.flips is not None and second.flips is not None:
            flips = first.flips + tuple(first.flips[-1] + f for f in second.flips[1:])
        if first.differing is not None and second.differing is not None:
            differing = first.differing + second.differing
        return Profile(
            kind="flip-chain",
            ts=tuple(t / 2 for t in first.ts) + tuple(0.5 + t / 2 for t in second.ts[1:]),
            train_error=curves["train_error"],
            train_loss=curves["train_loss"],
            test_error=curves.get("test_error"),
            test_loss=curves.get("test_loss"),
            bn=first.bn,
            per_order=per_order,
            flips=flips,
            differing=differing,
            weights=first.weights,
        )

    def mean_profile(self, split: str = "train") -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(t, error) along the chain, the error averaged over orders (see `profile`)."""
        whole = self.profile()
        return whole.ts, whole.values(_error_of(split))

    def max_error(self, split: str = "train") -> float:
        """The largest error at any evaluated point of any order on either segment (the
        bend counted as the end of the first and the start of the second)."""
        metric = _error_of(split)
        return max(path.max_barrier("max", metric) for path in (self.first, self.second))


def _error_of(split: str) -> Metric:
    if split == "train":
        return "train_error"
    if split == "test":
        return "test_error"
    raise InvalidArgumentError(f"split must be 'train' or 'test', got {split!r}")


def flip_midpoint(
    a: nn.Module, b: nn.Module, *, seed: int = 0, spec: SymmetrySpec | None = None
) -> nn.Module:
    """Canonical a with a random half (seeded) of the binary weights where b (aligned to a)
    differs switched to b's signs; BatchNorm parameters at the geodesic midpoint."""
    check_finite_model(a, what="network a")
    check_finite_model(b, what="network b")
    checked = binary_spec(a, spec)
    result = align_models(b, a, spec=checked, seed=seed)
    state_a, state_b = result.reference.state_dict(), result.model.state_dict()
    vec_a, vec_b = binary_vector(state_a, checked), binary_vector(state_b, checked)
    differ = torch.nonzero(vec_a != vec_b).flatten()
    generator = torch.Generator().manual_seed(seed)
    chosen = differ[torch.randperm(differ.numel(), generator=generator)[: differ.numel() // 2]]
    state = slerp_state(state_a, state_b, 0.5, checked)
    vector = vec_a.clone()
    vector[chosen] = vec_b[chosen]
    set_binary_vector_(state, checked, vector)
    return with_state(a, state)


def flip_chain(
    a: nn.Module,
    b: nn.Module,
    data: Split | DataLike,
    *,
    optimizer: str | Mapping[str, Any] = "sgd",
    epochs: int = 40,
    batch_size: int | None = None,
    schedule: Literal["constant", "cosine", "step"] = "cosine",
    seed: int = 0,
    orders: int = 4,
    points: int = 11,
    bn_samples: int | None = 2000,
    spec: SymmetrySpec | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    plan: EvalPlan | None = None,
) -> FlipChain:
    """Re-train the flip midpoint of a and b with `fit` (to zero training error or
    `epochs`, on `device`), then profile the flip paths a -> bend and bend -> b (each
    aligned to its start) with `orders` random orders and `points` points each.

    The flip paths are evaluated as `plan` says (an `EvalPlan`; on `device` when its
    `device` is None) or, without one, with BatchNorm statistics recomputed on
    `bn_samples` training inputs drawn with `seed`, on `device`. An explicit plan wins;
    `bn_samples` changed from its default together with a plan is refused. `batch_size`
    is the training minibatch size, not an evaluation setting."""
    plan = plan_or_loose(plan, EvalPlan(seed=seed, device=device), bn_samples=bn_samples)
    if plan.device is None:
        plan = replace(plan, device=device)
    checked = binary_spec(a, spec)
    midpoint = flip_midpoint(a, b, seed=seed, spec=checked)
    trained = fit(
        midpoint,
        data,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        schedule=schedule,
        seed=seed,
        device=device,
        progress=progress,
    )
    bend = trained.model.cpu().eval()
    split: SplitName = "both" if isinstance(data, Split) and data.test is not None else "train"
    first, second = (
        flip_path(
            start,
            end,
            data=data,
            seed=seed,
            orders=orders,
            points=points,
            split=split,
            spec=checked,
            progress=progress,
            plan=plan,
        )
        for start, end in ((a, bend), (bend, b))
    )
    return FlipChain(bend, first, second, trained.epochs, trained.reached_zero_train_error)
