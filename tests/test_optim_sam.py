"""SAM and ASAM: the step against a hand computation on a quadratic, BatchNorm statistics
updated once per step, the base optimizer's state shared, bad hyperparameters."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.optim_helpers import QuadraticClosure, quadratic
from toroid.errors import InvalidArgumentError
from toroid.models import mlp
from toroid.optim import SAM, make_optimizer, resolve_optimizer
from toroid.train.closure import BatchClosure


def sgd_base(lr: float, momentum: float) -> object:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


@pytest.mark.parametrize("adaptive", [False, True])
def test_step_is_the_hand_computation_on_a_quadratic(adaptive: bool) -> None:
    a, bs, w0 = quadratic()
    rho, lr, momentum = 0.3, 0.1, 0.9
    w = torch.nn.Parameter(w0.clone())
    opt = SAM([w], base=sgd_base(lr, momentum), rho=rho, adaptive=adaptive)  # type: ignore[arg-type]
    closure = QuadraticClosure(w, a, list(bs))
    expected, buffer = w0.clone(), torch.zeros_like(w0)
    for _ in range(3):
        g = a @ expected - bs[0]
        if adaptive:  # ASAM: e = rho |w|^2 g / || |w| g ||
            e = rho * expected.abs() ** 2 * g / (expected.abs() * g).norm()
        else:
            e = rho * g / g.norm()
        g_sharp = a @ (expected + e) - bs[0]
        buffer = momentum * buffer + g_sharp
        expected = expected - lr * buffer
        opt.step(closure)  # type: ignore[arg-type]
        assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-12)
    assert closure.grad_evals == 6
    assert closure.used == [0] * 6  # both evaluations on the step's own minibatch
    assert closure.bn_flags == [True, False] * 3


def test_returns_the_loss_before_the_step() -> None:
    a, bs, w0 = quadratic()
    w = torch.nn.Parameter(w0.clone())
    opt = SAM([w], base=sgd_base(0.1, 0.0), rho=0.05)  # type: ignore[arg-type]
    loss = opt.step(QuadraticClosure(w, a, list(bs)))  # type: ignore[arg-type]
    assert float(loss) == pytest.approx(float(0.5 * w0 @ a @ w0 - bs[0] @ w0), abs=1e-12)


def test_batchnorm_statistics_are_updated_once_per_step() -> None:
    torch.manual_seed(0)
    model = mlp(4, [6], 2)
    x, y = torch.randn(16, 4), torch.tensor([0, 1] * 8)
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        reference(x)  # one forward at the unperturbed weights
    opt = SAM(model.parameters(), base=sgd_base(0.5, 0.0), rho=0.5)  # type: ignore[arg-type]
    closure = BatchClosure(model, iter([(x, y)]), lambda: iter([(x, y)]))
    closure.next_batch()
    model.train()
    opt.step(closure)  # type: ignore[arg-type]
    assert closure.grad_evals == 2
    ours, theirs = dict(model.named_buffers()), dict(reference.named_buffers())
    assert int(ours["2.num_batches_tracked"]) == 1
    for name in ("2.running_mean", "2.running_var"):
        assert torch.equal(ours[name], theirs[name]), name
    # and a second update, at the perturbed weights, would have changed them
    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        perturbed(x)
    assert not torch.equal(
        dict(perturbed.named_buffers())["2.running_mean"], ours["2.running_mean"]
    )


def test_shares_groups_and_state_with_the_base_across_a_state_dict_round_trip() -> None:
    a, bs, w0 = quadratic()
    w = torch.nn.Parameter(w0.clone())
    opt = SAM([w], base=sgd_base(0.1, 0.9), rho=0.05)  # type: ignore[arg-type]
    opt.step(QuadraticClosure(w, a, list(bs)))  # type: ignore[arg-type]
    opt.param_groups[0]["lr"] = 0.01  # what fit's schedule does
    assert opt.base.param_groups[0]["lr"] == 0.01
    assert "momentum_buffer" in opt.state[w]
    twin_param = torch.nn.Parameter(w.detach().clone())
    twin = SAM([twin_param], base=sgd_base(0.1, 0.9), rho=0.05)  # type: ignore[arg-type]
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would share the buffers
    assert twin.base.param_groups[0]["lr"] == 0.01
    assert torch.equal(
        twin.base.state[twin_param]["momentum_buffer"], opt.state[w]["momentum_buffer"]
    )
    opt.step(QuadraticClosure(w, a, list(bs)))  # type: ignore[arg-type]
    twin.step(QuadraticClosure(twin_param, a, list(bs)))  # type: ignore[arg-type]
    assert torch.equal(w, twin_param)


def test_any_registered_base() -> None:
    config = resolve_optimizer({"name": "sam", "base": "adam", "rho": 0.1})
    assert config["lr"] == 1e-3 and config["betas"] == (0.9, 0.999) and config["rho"] == 0.1
    opt = make_optimizer(config, torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, SAM) and isinstance(opt.base, torch.optim.Adam)
    assert resolve_optimizer("sam")["momentum"] == 0.9  # default base: sgd


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rho": -0.1}, "rho must be a finite number >= 0, got -0.1"),
        ({"rho": float("nan")}, "rho must be a finite number"),
        ({"adaptive": "yes"}, "adaptive must be true or false, got 'yes'"),
        ({"base": "sam"}, "cannot wrap 'sam'"),
        ({"base": "lion"}, "unknown optimizer 'lion'"),
        ({"base": "adam", "momentum": 0.9}, "no hyperparameter momentum"),
    ],
)
def test_bad_hyperparameters(config: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        make_optimizer(
            resolve_optimizer({"name": "sam", **config}), torch.nn.Linear(2, 2).parameters()
        )


def test_step_without_a_closure_is_an_error() -> None:
    opt = SAM(torch.nn.Linear(2, 2).parameters(), base=sgd_base(0.1, 0.0))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="SAM needs a closure"):
        opt.step()
