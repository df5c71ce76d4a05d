"""Replicated SGD: each replica's step on its own minibatch by hand, the exact coupling
against a slow Euler integration, a very large coupling keeping the replicas on the center,
the center as fit's output with recomputed BatchNorm statistics, errors."""

from __future__ import annotations

import pytest
import torch

from tests.optim_helpers import QuadraticClosure, quadratic
from toroid.data import Split, load
from toroid.errors import InvalidArgumentError
from toroid.evaluate import recompute_bn
from toroid.models import build
from toroid.optim import ReplicatedSGD, make_optimizer, resolve_optimizer
from toroid.train import derive_seed, fit
from toroid.train.closure import BatchClosure


@pytest.fixture(scope="module")
def small() -> Split:
    return load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=240, test_samples=60, seed=0
    )


def small_mlp(seed: int = 0) -> torch.nn.Module:
    return build({"name": "mlp", "in_features": 12, "widths": [32], "num_classes": 3}, seed=seed)


def test_without_coupling_each_replica_takes_an_sgd_step_on_its_own_minibatch() -> None:
    a, bs, w0 = quadratic(batches=3)
    lr = 0.1
    w = torch.nn.Parameter(w0.clone())
    opt = ReplicatedSGD([w], y=3, lr=lr, momentum=0.0, gamma0=0.0, gamma1=0.0)
    closure = QuadraticClosure(w, a, list(bs))
    opt.step(closure)  # type: ignore[arg-type]
    replicas = opt.state[w]["replicas"]
    for k in range(3):
        assert torch.allclose(replicas[k], w0 - lr * (a @ w0 - bs[k]), rtol=0, atol=1e-12)
    assert torch.equal(w.detach(), w0)  # the uncoupled center stays where it was
    assert closure.used == [0, 1, 2] and closure.grad_evals == 3


def euler_coupling(
    replicas: torch.Tensor, center: torch.Tensor, gamma: float, time: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The slow, obviously correct baseline: gradient flow of gamma/2 sum_a |w_a - c|^2 on
    replicas and center together, integrated with many tiny Euler steps."""
    r, c = replicas.clone(), center.clone()
    dt = time / steps
    for _ in range(steps):
        r, c = r - dt * gamma * (r - c), c - dt * gamma * (c - r).sum(dim=0)
    return r, c


def test_coupling_is_the_exact_flow_of_the_elastic_term() -> None:
    dim, y, lr, gamma = 4, 3, 0.1, 2.0
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(y, dim, generator=gen, dtype=torch.float64)
    center0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(center0.clone())
    opt = ReplicatedSGD([w], y=y, lr=lr, momentum=0.0, gamma0=gamma, gamma1=gamma)
    opt.state[w]["replicas"] = start.clone()
    opt.state[w]["momentum"] = torch.zeros_like(start)
    zero = torch.zeros(dim, dim, dtype=torch.float64)  # a flat loss: only the coupling acts
    opt.step(QuadraticClosure(w, zero, [torch.zeros(dim, dtype=torch.float64)]))  # type: ignore[arg-type]
    r, c = euler_coupling(start, center0, gamma, lr, steps=20000)
    assert torch.allclose(opt.state[w]["replicas"], r, atol=1e-4)
    assert torch.allclose(w.detach(), c, atol=1e-4)
    conserved = start.sum(dim=0) + center0
    assert torch.allclose(opt.state[w]["replicas"].sum(dim=0) + w.detach(), conserved)


def run_steps(model: torch.nn.Module, data: Split, opt: torch.optim.Optimizer, steps: int) -> None:
    x, y = data.train.x, data.train.y
    batches = [(x[i : i + 24], y[i : i + 24]) for i in range(0, 240, 24)]
    closure = BatchClosure(model, iter(batches), lambda: iter(batches))
    model.train()
    for _ in range(steps):
        closure.next_batch()
        opt.step(closure)  # type: ignore[arg-type]


def spread(opt: torch.optim.Optimizer, model: torch.nn.Module) -> float:
    return max(
        float((opt.state[p]["replicas"] - p.detach()).abs().max()) for p in model.parameters()
    )


def test_a_very_large_coupling_keeps_the_replicas_on_the_center(small: Split) -> None:
    model = small_mlp()
    strong = ReplicatedSGD(model.parameters(), y=3, lr=0.1, gamma0=1e9, gamma1=1e9)
    run_steps(model, small, strong, steps=5)
    assert spread(strong, model) == 0.0
    # without coupling the same run leaves replicas apart and the center where it started
    free_model = small_mlp()
    start = [p.detach().clone() for p in free_model.parameters()]
    free = ReplicatedSGD(free_model.parameters(), y=3, lr=0.1, gamma0=0.0, gamma1=0.0)
    run_steps(free_model, small, free, steps=5)
    assert spread(free, free_model) > 1e-3
    assert all(torch.equal(p, s) for p, s in zip(free_model.parameters(), start, strict=True))


def test_fit_returns_the_center_with_recomputed_batchnorm_statistics(small: Split) -> None:
    result = fit(small_mlp(), small, optimizer="rsgd", epochs=2, seed=3, progress=False)
    bn = result.model[2]
    recomputed = recompute_bn(result.model, small.train, seed=derive_seed(3, "batchnorm"))
    assert torch.equal(bn.running_mean, recomputed[2].running_mean)
    assert torch.equal(bn.running_var, recomputed[2].running_var)
    assert int(bn.num_batches_tracked) == 1  # one cumulative pass, not the replicas' EMA
    assert result.grad_evals == 2 * 3  # 2 minibatches per epoch -> one step of 3 replicas


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"y": 0}, "y must be an integer >= 1, got 0"),
        ({"y": True}, "y must be an integer >= 1, got True"),
        ({"gamma0": -1.0}, "gamma0 must be a finite number >= 0, got -1.0"),
        ({"gamma0": 2.0, "gamma1": 1.0}, "gamma1 .* must be >= gamma0"),
        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
        ({"nesterov": 1}, "nesterov must be true or false, got 1"),
    ],
)
def test_bad_hyperparameters(config: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        make_optimizer(resolve_optimizer({"name": "rsgd", **config}), [torch.zeros(1)])


def test_replicas_of_a_binary_network_step_from_their_clipped_latent_weights() -> None:
    """Binary layers clip latent weights to [-1, 1] in the forward; each replica must take
    its step from the clipped values, or its latent weights drift without bound."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    model = build(
        {"name": "mlp", "in_features": 8, "widths": [6], "num_classes": 2, "binary": True},
        seed=0,
    ).train()
    lr = 50.0  # large enough that steps leave [-1, 1]
    opt = ReplicatedSGD(model.parameters(), y=2, lr=lr, momentum=0.0, gamma0=0.0, gamma1=0.0)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    closure = BatchClosure(model, iter(batches * 40), lambda: iter(batches * 40))
    weight = model.get_submodule("1").weight
    drifted: list[bool] = []
    for _ in range(5):
        closure.next_batch()
        before = opt.state[weight]["replicas"].clone() if opt.state[weight] else None
        opt.step(closure)
        replicas = opt.state[weight]["replicas"]
        if before is not None:
            # Without momentum the buffer is this step's gradient: the step started from
            # the clipped replica, not from the drifted one.
            grads = opt.state[weight]["momentum"]
            torch.testing.assert_close(replicas + lr * grads, before.clamp(-1, 1))
            drifted.append(bool((before.abs() > 1).any()))
    assert any(drifted)  # the clipping mattered
