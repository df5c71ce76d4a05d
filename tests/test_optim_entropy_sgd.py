"""Entropy-SGD: outer steps against hand computations on quadratics (L = 1 and L = 2, with
and without noise), gamma scoping, minibatch and gradient-evaluation counts, errors."""

from __future__ import annotations

import math

import pytest
import torch

from tests.optim_helpers import QuadraticClosure, quadratic
from toroid.errors import InvalidArgumentError
from toroid.optim import EntropySGD, make_optimizer, resolve_optimizer

HP = {"lr": 0.7, "momentum": 0.9, "inner_lr": 0.1, "alpha": 0.75, "weight_decay": 0.01}


def test_one_outer_step_with_one_langevin_step_and_no_noise() -> None:
    a, bs, w0 = quadratic()
    w = torch.nn.Parameter(w0.clone())
    opt = EntropySGD([w], L=1, noise=0.0, gamma0=0.5, gamma1=0.5, nesterov=True, **HP)
    closure = QuadraticClosure(w, a, list(bs))
    opt.step(closure)  # type: ignore[arg-type]
    # x' = x - eta' (grad f(x) + wd x) (the coupling vanishes at x' = x); mu = (1-a) x + a x';
    # first Nesterov step: buffer = x - mu, move lr (1 + m) (x - mu)
    x_inner = w0 - HP["inner_lr"] * (a @ w0 - bs[0] + HP["weight_decay"] * w0)
    mu = (1 - HP["alpha"]) * w0 + HP["alpha"] * x_inner
    expected = w0 - HP["lr"] * (1 + HP["momentum"]) * (w0 - mu)
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-12)
    assert closure.grad_evals == 1 and closure.index == 0  # one minibatch, not moved on


def test_two_langevin_steps_use_two_minibatches_and_the_coupling() -> None:
    a, bs, w0 = quadratic(batches=2)
    gamma, eta, alpha, lr = 0.8, 0.1, 0.6, 0.5
    w = torch.nn.Parameter(w0.clone())
    opt = EntropySGD(
        [w],
        lr=lr,
        momentum=0.0,
        inner_lr=eta,
        L=2,
        gamma0=gamma,
        gamma1=gamma,
        noise=0.0,
        alpha=alpha,
    )
    closure = QuadraticClosure(w, a, list(bs))
    opt.step(closure)  # type: ignore[arg-type]
    x1 = w0 - eta * (a @ w0 - bs[0])
    x2 = x1 - eta * (a @ x1 - bs[1] + gamma * (x1 - w0))
    mu = (1 - alpha) * ((1 - alpha) * w0 + alpha * x1) + alpha * x2
    expected = w0 - lr * (w0 - mu)
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-12)
    assert closure.used == [0, 1] and closure.grad_evals == 2


def test_langevin_noise_has_scale_sqrt_inner_lr_times_noise() -> None:
    a, bs, w0 = quadratic()
    eta, noise = 0.04, 0.3
    w = torch.nn.Parameter(w0.clone())
    opt = EntropySGD([w], lr=1.0, momentum=0.0, inner_lr=eta, L=1, noise=noise, alpha=1.0)
    torch.manual_seed(7)
    opt.step(QuadraticClosure(w, a, list(bs)))  # type: ignore[arg-type]
    torch.manual_seed(7)
    z = torch.randn(w0.shape, dtype=torch.float64)
    # alpha = 1 and lr = 1: x moves onto the chain's last point
    expected = w0 - eta * (a @ w0 - bs[0]) + math.sqrt(eta) * noise * z
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-12)


def test_gamma_is_scoped_geometrically_with_progress() -> None:
    opt = EntropySGD(torch.nn.Linear(2, 2).parameters(), gamma0=1e-4, gamma1=1.0)
    group = opt.param_groups[0]
    assert opt.gamma(group) == pytest.approx(1e-4)  # no progress reported: the start
    opt.set_progress(0.5)
    assert opt.gamma(group) == pytest.approx(1e-2)
    opt.set_progress(1.0)
    assert opt.gamma(group) == pytest.approx(1.0)
    with pytest.raises(InvalidArgumentError, match="progress must be in"):
        opt.set_progress(1.5)


def test_preset_defaults() -> None:
    config = resolve_optimizer("esgd")
    assert (config["L"], config["alpha"], config["noise"], config["inner_lr"]) == (
        5,
        0.75,
        1e-4,
        0.1,
    )
    opt = make_optimizer(resolve_optimizer("esgd", L=3), torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, EntropySGD) and opt.chain_length == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"L": 0}, "L must be an integer >= 1, got 0"),
        ({"L": 2.5}, "L must be an integer >= 1, got 2.5"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\]"),
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\], got 1.5"),
        ({"gamma0": 1.0, "gamma1": 0.1}, "gamma1 .* must be >= gamma0"),
        ({"gamma0": 0.0, "gamma1": 0.1}, "gamma0 must be > 0 when gamma1 > gamma0"),
        ({"inner_lr": 0.0}, "inner_lr must be a finite number > 0, got 0.0"),
        ({"noise": -1.0}, "noise must be a finite number >= 0"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
        ({"lr": -1.0}, "lr must be a positive number"),
    ],
)
def test_bad_hyperparameters(config: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        make_optimizer(resolve_optimizer({"name": "esgd", **config}), [torch.zeros(1)])


def test_step_without_a_closure_is_an_error() -> None:
    opt = EntropySGD(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(InvalidArgumentError, match="Entropy-SGD needs a closure"):
        opt.step()
