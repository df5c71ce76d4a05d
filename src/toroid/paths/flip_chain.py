"""The two-segment chain between binary networks: a -> M -> b through a bend M obtained by
re-training the flip midpoint (half of the differing weights switched), each segment a
flip path (DESIGN.md, Binary networks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from toroid.data.tensordata import DataLike, Split
from toroid.flatness.flip_energy import binary_spec
from toroid.manifold.cells import binary_vector, set_binary_vector_
from toroid.manifold.geodesic import slerp_state
from toroid.paths.flip import FlipPath, flip_path
from toroid.symmetry.align import align as align_models
from toroid.symmetry.transform import with_state
from toroid.symmetry.types import SymmetrySpec
from toroid.train import fit


@dataclass(frozen=True)
class FlipChain:
    """`bend`: the re-trained midpoint; `first` and `second`: the flip paths a -> bend and
    bend -> b; `epochs` and `reached_zero_train_error` describe the re-training."""

    bend: nn.Module
    first: FlipPath
    second: FlipPath
    epochs: int
    reached_zero_train_error: bool

    def mean_profile(self, split: str = "train") -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(t, error) along the chain, the error averaged over orders: the first segment
        at t / 2, the second at 1/2 + t / 2 (the bend once)."""
        first, second = self.first.mean_profile(split), self.second.mean_profile(split)
        ts = tuple(t / 2 for t in self.first.t) + tuple(0.5 + t / 2 for t in self.second.t[1:])
        return ts, first + second[1:]

    def max_error(self, split: str = "train") -> float:
        """The largest error at any evaluated point of any order on either segment."""
        return max(
            max(max(order) for order in path.error[split]) for path in (self.first, self.second)
        )


def flip_midpoint(
    a: nn.Module, b: nn.Module, *, seed: int = 0, spec: SymmetrySpec | None = None
) -> nn.Module:
    """Canonical a with a random half (seeded) of the binary weights where b (aligned to a)
    differs switched to b's signs; BatchNorm parameters at the geodesic midpoint."""
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
) -> FlipChain:
    """Re-train the flip midpoint of a and b with `fit` (to zero training error or
    `epochs`), then profile the flip paths a -> bend and bend -> b (each aligned to its
    start) with `orders` random orders and `points` points each."""
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
    options: dict[str, Any] = {
        "seed": seed,
        "orders": orders,
        "points": points,
        "split": "both" if isinstance(data, Split) and data.test is not None else "train",
        "spec": checked,
        "bn_samples": bn_samples,
        "device": device,
        "progress": progress,
    }
    first = flip_path(a, bend, data=data, **options)
    second = flip_path(bend, b, data=data, **options)
    return FlipChain(bend, first, second, trained.epochs, trained.reached_zero_train_error)
