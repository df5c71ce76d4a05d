"""Flip paths between two binary networks: starting from a, the weights where the aligned
b differs are flipped one by one in a random order until the network is b; the error is
profiled along the way, for several orders, as one `Profile` (DESIGN.md, Binary networks)."""

from __future__ import annotations

import torch
from torch import nn

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, evaluate_sets, in_chunks, plan_or_loose, stack_states
from toroid.flatness.flip_energy import binary_spec
from toroid.flatness.parts import SplitName, measured_parts
from toroid.manifold.cells import binary_vector, set_binary_vector_
from toroid.manifold.distance import check_same_architecture
from toroid.manifold.geodesic import slerp_state
from toroid.models.finite import check_finite_model
from toroid.paths.profile import Profile
from toroid.symmetry.align import align as align_models
from toroid.symmetry.canonical import canonical_state
from toroid.symmetry.slots import State
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec


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
    plan: EvalPlan | None = None,
) -> Profile:
    """Flip paths between the binary networks `a` and `b` (one architecture), profiled on
    `data` (a Split; training data alone for split="train"), as one `Profile` of kind
    "flip": the mean curves over orders, every order's curve in `per_order`, and the flip
    counts (`flips`, `differing`, `weights`).

    Both are put in canonical form (latent weights replaced by their signs) and, unless
    `align=False`, b is aligned to a (weight matching on the sign weights, seeded by
    `seed`). For each of `orders` random orders of the binary weights where the two differ
    (order o: the o-th `torch.randperm` of their positions in `binary_vector`, from a CPU
    generator seeded with `seed`), the path visits up to `points` networks with evenly
    spaced numbers of those weights switched from a's sign to b's (`flip_counts`); point
    j has flipped `flips[j]` of the `differing` weights and sits at t = flips[j] /
    differing (two points, t = 0 and 1, when nothing differs). The BatchNorm affine
    parameters, which the binary weights do not carry, follow the geodesic between a's and
    b's at the same fraction t (slerp of the normalized BatchNorm pairs). Every order
    starts at a and ends at b (the same two evaluations). Every point gets its BatchNorm
    statistics recomputed on the training inputs and is evaluated with `evaluate_sets`.
    With `align=False` b's own canonical form is used (canonical signs, no permutation).
    A Profile always has the training curves: split="test" measures the training data too.

    How the points are evaluated is `plan` (an `EvalPlan`; its `bn` must be "recompute")
    or, without one, the loose arguments (`bn_samples` training inputs drawn with `seed`,
    `bn_batch_size`, `batch_size`, `max_sets`, `device`: default a's). An explicit plan
    wins: loose evaluation arguments changed from their defaults together with a plan are
    refused, and the BatchNorm subset is then drawn with `plan.seed` (`seed` still aligns
    and draws the orders)."""
    plan = plan_or_loose(
        plan,
        EvalPlan(seed=seed),
        bn_samples=bn_samples,
        bn_batch_size=bn_batch_size,
        batch_size=batch_size,
        max_sets=max_sets,
        device=device,
        recomputes="flip paths recompute BatchNorm statistics at every point",
    )
    if orders < 1:
        raise InvalidArgumentError(f"orders must be at least 1, got {orders}")
    if points < 2:
        raise InvalidArgumentError(f"points must be at least 2 (the endpoints), got {points}")
    check_same_architecture(a.state_dict(), b.state_dict())
    check_finite_model(a, what="network a")
    check_finite_model(b, what="network b")
    checked = binary_spec(a, spec)
    # A Profile always carries the training curves.
    parts = measured_parts(data, "both" if split == "test" else split)
    train = as_tensor_data(data.train if isinstance(data, Split) else data)
    if align:
        result = align_models(b, a, spec=checked, seed=seed)
        state_a, state_b = result.reference.state_dict(), result.model.state_dict()
    else:
        state_a, state_b = (
            canonical_state(m.state_dict(), checked, output="normalize") for m in (a, b)
        )
    target = plan.device if plan.device is not None else next(iter(state_a.values())).device
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
        measured = evaluate_sets(
            center,
            in_chunks(
                len(jobs),
                plan.max_sets,
                lambda begin, stop: stack_states([point(o, j) for o, j in jobs[begin:stop]]),
            ),
            parts,
            bn_data=train,
            plan=plan,
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

    per_order = {
        f"{name}_{metric}": profiles(values[name])
        for name in parts
        for metric, values in (("error", errors), ("loss", losses))
    }
    mean = {metric: _mean_curve(curves) for metric, curves in per_order.items()}
    return Profile(
        kind="flip",
        ts=ts,
        train_error=mean["train_error"],
        train_loss=mean["train_loss"],
        test_error=mean.get("test_error"),
        test_loss=mean.get("test_loss"),
        bn=plan.bn,
        per_order=per_order,
        flips=counts,
        differing=int(differ.numel()),
        weights=int(vec_a.numel()),
    )


def _mean_curve(curves: tuple[tuple[float, ...], ...]) -> tuple[float, ...]:
    """The curves averaged point by point."""
    return tuple(sum(column) / len(column) for column in zip(*curves, strict=True))


__all__ = ["flip_counts", "flip_path"]
