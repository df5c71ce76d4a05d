"""Shared by the optimizer tests: a closure on quadratics, whose steps can be computed by
hand, that follows toroid.optim.protocol.StepClosure."""

from __future__ import annotations

import torch


class QuadraticClosure:
    """f_k(w) = 1/2 w^T A w - b_k^T w on "minibatch" k (cycling through `bs`); records the
    minibatch each gradient evaluation used."""

    def __init__(self, param: torch.Tensor, a: torch.Tensor, bs: list[torch.Tensor]) -> None:
        self.param, self.a, self.bs = param, a, bs
        self.index = 0
        self.grad_evals = 0
        self.used: list[int] = []
        self.bn_flags: list[bool] = []

    def grad(self, w: torch.Tensor, k: int) -> torch.Tensor:
        return self.a @ w - self.bs[k % len(self.bs)]

    def __call__(self, *, update_bn_stats: bool = True) -> torch.Tensor:
        b = self.bs[self.index % len(self.bs)]
        self.param.grad = None
        with torch.enable_grad():
            loss = 0.5 * self.param @ self.a @ self.param - b @ self.param
            loss.backward()  # type: ignore[no-untyped-call]
        self.grad_evals += 1
        self.used.append(self.index)
        self.bn_flags.append(update_bn_stats)
        return loss.detach()

    def next_batch(self) -> None:
        self.index += 1


def quadratic(dim: int = 5, batches: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A symmetric positive definite A, `batches` vectors b_k and a start w0, in float64."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    a = m @ m.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64)
    bs = torch.randn(batches, dim, generator=gen, dtype=torch.float64)
    w0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    return a, bs, w0
