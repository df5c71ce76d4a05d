"""Profiles (errors and losses sampled along a path) and barriers (named summaries)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, Literal

import torch

from toroid import progress as progress_helper
from toroid.data.tensordata import DataLike, Split, TensorData, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate import (
    BNPolicy,
    EvalPlan,
    ManyMetrics,
    SetChunk,
    evaluate_sets,
    in_chunks,
    plan_or_loose,
)
from toroid.models.finite import check_finite_data, check_finite_state
from toroid.paths.path import Path, uniform_ts
from toroid.paths.repair import PathRepair

BarrierKind = Literal["max_minus_mean", "max_minus_linear", "max"]
BARRIER_KINDS: tuple[BarrierKind, ...] = ("max_minus_mean", "max_minus_linear", "max")
Metric = Literal["train_error", "test_error", "train_loss", "test_loss"]
METRICS: tuple[Metric, ...] = ("train_error", "test_error", "train_loss", "test_loss")


def barrier(
    ts: Sequence[float], values: Sequence[float], *, kind: BarrierKind = "max_minus_mean"
) -> float:
    """A barrier of the profile `values` at `ts` (sorted, from 0 to 1), DESIGN.md:
    `max_minus_mean` = max_t E(t) - (E(0) + E(1)) / 2; `max_minus_linear` =
    max_t [E(t) - ((1 - t) E(0) + t E(1))]; `max` = max_t E(t)."""
    if kind not in BARRIER_KINDS:
        raise InvalidArgumentError(
            f"barrier kind must be one of {', '.join(BARRIER_KINDS)}, got {kind!r}"
        )
    if len(ts) != len(values) or len(ts) < 2:
        raise InvalidArgumentError(
            f"a profile needs at least two points and one value per t; got {len(ts)} ts and "
            f"{len(values)} values"
        )
    if ts[0] != 0.0 or ts[-1] != 1.0 or any(b <= a for a, b in pairwise(ts)):
        raise InvalidArgumentError("ts must increase strictly from 0 to 1")
    start, end = values[0], values[-1]
    if kind == "max":
        return max(values)
    if kind == "max_minus_mean":
        return max(values) - (start + end) / 2
    return max(v - ((1 - t) * start + t * end) for t, v in zip(ts, values, strict=True))


@dataclass(frozen=True)
class Profile:
    """Eval-mode errors and losses at `ts` along a path of `kind` (test values None when
    no test data was given). BatchNorm statistics were recomputed at every point
    (`bn="recompute"`) unless `bn` says otherwise ("repair": recomputed, and the other
    units renormalized by REPAIR).

    A path with random elements (a flip path: the order in which weights are flipped) is
    measured once per draw ("order"): then `train_error` etc. are the mean curves over
    orders, point by point, and `per_order[metric][o]` is order o's own curve (None for a
    path without orders, whose curve is its own single "order"). Flip paths also carry
    `flips` (binary weights flipped at each point), `differing` (the Hamming distance of
    the endpoints, the flips at t = 1) and `weights` (binary weights in all)."""

    kind: str
    ts: tuple[float, ...]
    train_error: tuple[float, ...]
    train_loss: tuple[float, ...]
    test_error: tuple[float, ...] | None
    test_loss: tuple[float, ...] | None
    bn: str
    per_order: Mapping[str, tuple[tuple[float, ...], ...]] | None = None
    flips: tuple[int, ...] | None = None
    differing: int | None = None
    weights: int | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """The measured splits: ("train",) or ("train", "test")."""
        return ("train",) if self.test_error is None else ("train", "test")

    @property
    def orders(self) -> int:
        """How many curves the profile averages (1 for a path without orders)."""
        if self.per_order is None:
            return 1
        return len(self.per_order["train_error"])

    def values(self, metric: Metric = "train_error") -> tuple[float, ...]:
        """The (mean) curve of `metric` at `ts`."""
        if metric not in METRICS:
            raise InvalidArgumentError(
                f"metric must be one of {', '.join(METRICS)}, got {metric!r}"
            )
        values: tuple[float, ...] | None = getattr(self, metric)
        if values is None:
            raise InvalidArgumentError(f"{metric} was not measured: the profile has no test data")
        return values

    def curves(self, metric: Metric = "train_error") -> tuple[tuple[float, ...], ...]:
        """Every order's curve of `metric`; the one curve of a path without orders."""
        mean = self.values(metric)
        return (mean,) if self.per_order is None else self.per_order[metric]

    def stderr(self, metric: Metric = "train_error") -> tuple[float, ...]:
        """The standard error over orders of `metric` at each t (NaN with one order)."""
        curves = self.curves(metric)
        if len(curves) < 2:
            return tuple(math.nan for _ in self.ts)
        spread = torch.tensor(curves, dtype=torch.float64).std(dim=0) / math.sqrt(len(curves))
        return tuple(float(v) for v in spread)

    def barrier(
        self, kind: BarrierKind = "max_minus_mean", metric: Metric = "train_error"
    ) -> float:
        """The named barrier (see `barrier`) of the (mean) curve of `metric`."""
        return barrier(self.ts, self.values(metric), kind=kind)

    def barriers(
        self, kind: BarrierKind = "max_minus_mean", metric: Metric = "train_error"
    ) -> tuple[float, ...]:
        """The named barrier of every order's curve (one value without orders)."""
        return tuple(barrier(self.ts, curve, kind=kind) for curve in self.curves(metric))

    def mean_barrier(
        self, kind: BarrierKind = "max_minus_mean", metric: Metric = "train_error"
    ) -> float:
        """The mean over orders of the per-order barriers (not the barrier of the mean
        curve, which `barrier` gives); equal to `barrier` without orders."""
        values = self.barriers(kind, metric)
        return sum(values) / len(values)

    def max_barrier(
        self, kind: BarrierKind = "max_minus_mean", metric: Metric = "train_error"
    ) -> float:
        """The largest per-order barrier; with kind="max", the largest value of `metric`
        at any point of any order."""
        return max(self.barriers(kind, metric))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the profile and its barriers (and, with orders, the per-order curves
        and flip counts)."""
        metrics = [m for m in METRICS if getattr(self, m) is not None]
        record: dict[str, Any] = {
            "kind": self.kind,
            "bn": self.bn,
            "ts": list(self.ts),
            **{m: list(getattr(self, m)) for m in metrics},
            "barriers": {m: {k: self.barrier(k, m) for k in BARRIER_KINDS} for m in metrics},
        }
        if self.per_order is not None:
            record["per_order"] = {m: [list(c) for c in self.per_order[m]] for m in metrics}
        for name in ("flips", "differing", "weights"):
            value = getattr(self, name)
            if value is not None:
                record[name] = list(value) if isinstance(value, tuple) else value
        return record


def _parts(data: Split | DataLike) -> tuple[dict[str, TensorData], TensorData]:
    if isinstance(data, Split):
        parts = {"train": data.train}
        if data.test is not None and len(data.test) > 0:
            parts["test"] = data.test
        return parts, data.train
    train = as_tensor_data(data)
    return {"train": train}, train


_DEFAULT_PLAN = EvalPlan(max_sets=32)


def profile(
    path: Path,
    data: Split | DataLike,
    *,
    points: int = 21,
    ts: Sequence[float] | None = None,
    refine: int = 0,
    refine_metric: Metric = "train_error",
    bn: BNPolicy = "recompute",
    bn_samples: int | None = 2000,
    bn_batch_size: int = 500,
    batch_size: int = 500,
    seed: int = 0,
    max_sets: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
    plan: EvalPlan | None = None,
) -> Profile:
    """Errors and losses along `path` on `data` (a Split: train and test; or training data
    alone) at `points` evenly spaced t (or the given `ts`), every point evaluated with
    `evaluate_sets`. `refine` rounds then add the midpoints on both sides of the current
    maximum of `refine_metric`, to find the top of a barrier more exactly.

    How the points are evaluated is `plan` (an `EvalPlan`) or, without one, the loose
    arguments: `bn` ("recompute": BatchNorm statistics re-estimated at every point on
    `bn_samples` training inputs drawn with `seed`, in minibatches of `bn_batch_size`),
    `batch_size`, `max_sets` points at a time, on `device` (default: the path's). An
    explicit plan wins; loose arguments changed from their defaults together with a plan
    are refused.

    `bn="repair"` adds REPAIR (Jordan et al. 2023; `toroid.paths.repair`) to the
    recomputation: at every point, the units of the Linear/Conv layers that no BatchNorm
    follows (the output layer excepted) get the mean and standard deviation of their
    pre-activations interpolated from the anchors' (a straight line: (1 - t) A + t B),
    measured on the same `bn_samples` inputs; models whose layers it cannot correct (e.g.
    writers of a residual stream) are refused."""
    plan = plan_or_loose(
        plan,
        _DEFAULT_PLAN,
        bn=bn,
        bn_samples=bn_samples,
        bn_batch_size=bn_batch_size,
        batch_size=batch_size,
        seed=seed,
        max_sets=max_sets,
        device=device,
    )
    if refine < 0:
        raise InvalidArgumentError(f"refine must be >= 0, got {refine}")
    grid = tuple(sorted({float(t) for t in ts})) if ts is not None else uniform_ts(points)
    if not grid or grid[0] != 0.0 or grid[-1] != 1.0:
        raise InvalidArgumentError(f"ts must include both ends, 0 and 1; got {list(grid)}")
    if refine_metric not in METRICS:
        raise InvalidArgumentError(
            f"refine_metric must be one of {', '.join(METRICS)}, got {refine_metric!r}"
        )
    for i, anchor in enumerate(path.anchors):
        check_finite_state(anchor, what=f"the path's anchor {i} (0: start, last: end)")
    if plan.device is not None:
        path = path.to(plan.device)
    parts, train = _parts(data)
    check_finite_data(train, what="the training data")
    if refine_metric.startswith("test") and "test" not in parts:
        raise InvalidArgumentError(f"refine_metric={refine_metric!r} needs test data")
    results: dict[float, dict[str, tuple[float, float]]] = {}
    sets: Callable[[Sequence[float]], SetChunk] = path.sets
    evaluation = plan
    if plan.bn == "repair":
        repair = PathRepair(path, train, plan=plan)
        if repair.layout.repaired:  # else REPAIR is the recomputation alone, bit for bit
            sets = repair.sets
        # The repaired points' BatchNorm statistics are re-estimated as every moved
        # network's are; REPAIR's own part is in the weights.
        evaluation = replace(plan, bn="recompute")

    def measure(new: Sequence[float], reporter: progress_helper.Reporter) -> None:
        points = list(new)
        measured = evaluate_sets(
            path.template,
            in_chunks(len(points), plan.max_sets, lambda b, e: sets(points[b:e])),
            parts,
            bn_data=train,
            plan=evaluation,
            on_chunk=reporter.advance,
        )
        for k, t in enumerate(points):
            results[t] = {name: _pair(m, k) for name, m in measured.items()}

    with progress_helper.task(
        f"{path.kind} path profile", len(grid) + 2 * refine, enabled=progress
    ) as reporter:
        measure(grid, reporter)
        for _ in range(refine):
            ordered = sorted(results)
            split, index = refine_metric.split("_")
            curve = [results[t][split][0 if index == "error" else 1] for t in ordered]
            top = max(range(len(ordered)), key=lambda i: curve[i])
            new = [
                (ordered[j] + ordered[j + 1]) / 2
                for j in (top - 1, top)
                if 0 <= j < len(ordered) - 1
            ]
            new = [t for t in new if t not in results]
            if new:
                measure(new, reporter)
    ordered = sorted(results)
    test = "test" in parts
    return Profile(
        kind=path.kind,
        ts=tuple(ordered),
        train_error=tuple(results[t]["train"][0] for t in ordered),
        train_loss=tuple(results[t]["train"][1] for t in ordered),
        test_error=tuple(results[t]["test"][0] for t in ordered) if test else None,
        test_loss=tuple(results[t]["test"][1] for t in ordered) if test else None,
        bn=plan.bn,
    )


def _pair(metrics: ManyMetrics, k: int) -> tuple[float, float]:
    return float(metrics.error[k]), float(metrics.loss[k])


__all__ = [
    "BARRIER_KINDS",
    "METRICS",
    "BarrierKind",
    "Metric",
    "Profile",
    "barrier",
    "profile",
]
