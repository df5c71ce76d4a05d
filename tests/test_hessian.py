"""Hessian measures against the closed-form Hessian of multinomial logistic regression."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from toroid.errors import InvalidArgumentError, UnsupportedModelError
from toroid.flatness import HessianEstimate, hessian_top_eigenvalue, hessian_trace
from toroid.models import mlp
from toroid.symmetry import apply_symmetry, canonicalize, is_canonical, random_symmetry

D, C, N = 5, 3, 200


def _logistic() -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(D, C).double()
    with torch.no_grad():
        model.weight.mul_(3.0)  # confident enough that H is far from p(1-p) = 1/4 everywhere
    return model


def _data(n: int = N, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=gen)
    return x, y


def _closed_form(model: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """H = (1/N) sum_n (diag(p_n) - p_n p_n^T) kron (x~_n x~_n^T), x~ = [x, 1], reordered to
    the parameter order of the model: weight (C, D) row-major, then bias (C)."""
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    full = torch.zeros(C * (D + 1), C * (D + 1), dtype=torch.float64)
    for pn, xn in zip(p, xt, strict=True):
        full += torch.kron(torch.diag(pn) - torch.outer(pn, pn), torch.outer(xn, xn))
    full /= len(x)
    order = [c * (D + 1) + j for c in range(C) for j in range(D)]
    order += [c * (D + 1) + D for c in range(C)]
    return full[order][:, order]


def _autograd_hessian(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian by torch.autograd.functional.hessian, as an independent check of the
    closed form (and of its parameter ordering)."""

    def loss(flat: torch.Tensor) -> torch.Tensor:
        weight, bias = flat[: C * D].view(C, D), flat[C * D :]
        return F.cross_entropy(x @ weight.T + bias, y)

    flat = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    hessian = torch.autograd.functional.hessian(loss, flat)
    assert isinstance(hessian, torch.Tensor)
    return hessian


def test_closed_form_matches_autograd_hessian() -> None:
    model, (x, y) = _logistic(), _data()
    torch.testing.assert_close(_closed_form(model, x), _autograd_hessian(model, x, y))


def test_trace_within_four_standard_errors_of_closed_form() -> None:
    model, data = _logistic(), _data()
    exact = float(torch.trace(_closed_form(model, data[0])))
    est = hessian_trace(model, data, probes=32, seed=0, canonical=False, batch_size=64)
    assert isinstance(est, HessianEstimate)
    assert len(est.samples) == 32
    assert est.value == pytest.approx(sum(est.samples) / 32, rel=1e-12)
    assert 0 < est.stderr < 0.5 * exact  # a genuine error bar, not zero or huge
    assert abs(est.value - exact) < 4 * est.stderr
    assert "hutchinson" in est.method


def test_trace_with_many_probes_within_two_percent_and_stderr_matches_theory() -> None:
    model, data = _logistic(), _data()
    hessian = _closed_form(model, data[0])
    exact = float(torch.trace(hessian))
    probes = 2000
    est = hessian_trace(model, data, probes=probes, seed=3, canonical=False)
    assert est.value == pytest.approx(exact, rel=0.02)
    # Rademacher probes: Var(v^T H v) = 2 sum_{i != j} H_ij^2.
    off = hessian - torch.diag(torch.diag(hessian))
    expected_stderr = math.sqrt(2 * float((off**2).sum()) / probes)
    assert est.stderr == pytest.approx(expected_stderr, rel=0.15)


def test_trace_samples_are_quadratic_forms_of_the_seeded_rademacher_probes() -> None:
    model, data = _logistic(), _data()
    hessian = _closed_form(model, data[0])
    est = hessian_trace(model, data, probes=8, seed=5, canonical=False)
    # The documented probes: +-1 entries from a CPU generator seeded with `seed`, drawn
    # parameter by parameter (weight, then bias), probe after probe.
    gen = torch.Generator().manual_seed(5)
    shapes = [(C, D), (C,)]
    for sample in est.samples:
        parts = [torch.randint(0, 2, s, generator=gen) * 2 - 1 for s in shapes]
        v = torch.cat([p.flatten() for p in parts]).double()
        assert sample == pytest.approx(float(v @ hessian @ v), rel=1e-10, abs=1e-12)


def test_top_eigenvalue_matches_closed_form() -> None:
    model, data = _logistic(), _data()
    eigenvalues = torch.linalg.eigvalsh(_closed_form(model, data[0]))
    top = float(eigenvalues[-1])
    assert top > 1.5 * abs(float(eigenvalues[0]))  # the largest magnitude is the top
    est = hessian_top_eigenvalue(
        model, data, iters=1000, seed=0, canonical=False, tol=1e-13, batch_size=64
    )
    assert abs(est.value - top) <= est.stderr + 1e-12
    assert est.value == pytest.approx(top, rel=1e-6)
    assert est.stderr < 1e-3 * top
    assert est.samples[-1] == est.value
    assert len(est.samples) < 1000  # stopped early on tol
    assert "power" in est.method


def test_top_eigenvalue_residual_bounds_distance_to_the_spectrum_when_stopped_early() -> None:
    model, data = _logistic(), _data()
    eigenvalues = torch.linalg.eigvalsh(_closed_form(model, data[0]))
    est = hessian_top_eigenvalue(model, data, iters=2, seed=1, canonical=False)
    assert len(est.samples) == 2
    nearest = float((eigenvalues - est.value).abs().min())
    assert nearest <= est.stderr + 1e-12
    assert est.stderr > 0


def test_batch_size_does_not_change_the_estimates() -> None:
    model, data = _logistic(), _data()
    whole = hessian_trace(model, data, probes=6, canonical=False, batch_size=1000)
    split = hessian_trace(model, data, probes=6, canonical=False, batch_size=7)
    torch.testing.assert_close(torch.tensor(split.samples), torch.tensor(whole.samples))
    eig_whole = hessian_top_eigenvalue(model, data, iters=5, canonical=False, batch_size=1000)
    eig_split = hessian_top_eigenvalue(model, data, iters=5, canonical=False, batch_size=13)
    torch.testing.assert_close(torch.tensor(eig_split.samples), torch.tensor(eig_whole.samples))


def test_determinism_under_seed() -> None:
    model, data = _logistic(), _data()
    a = hessian_trace(model, data, probes=10, seed=4, canonical=False)
    b = hessian_trace(model, data, probes=10, seed=4, canonical=False)
    c = hessian_trace(model, data, probes=10, seed=5, canonical=False)
    assert a == b
    assert a.samples != c.samples
    e = hessian_top_eigenvalue(model, data, iters=3, seed=4, canonical=False)
    f = hessian_top_eigenvalue(model, data, iters=3, seed=4, canonical=False)
    g = hessian_top_eigenvalue(model, data, iters=3, seed=5, canonical=False)
    assert e == f
    assert e.samples != g.samples


def test_input_model_is_not_modified() -> None:
    model, data = _bn_mlp(), _data(60, 4)
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hessian_trace(model, data, probes=3)
    hessian_top_eigenvalue(model, data, iters=3)
    hessian_trace(model, data, probes=3, canonical=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def _bn_mlp() -> nn.Module:
    torch.manual_seed(2)
    model = mlp(4, [6, 5], C, batchnorm=True).double()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
    # Off the canonical point: scale the units, so canonical=True has work to do.
    moved, _ = random_symmetry(model, seed=3, permutations=False)
    return moved


def test_canonical_true_equals_canonicalize_then_canonical_false() -> None:
    model, data = _bn_mlp(), _data(60, 4)
    assert not is_canonical(model)
    point = canonicalize(model, output="keep")
    assert is_canonical(point)
    assert hessian_trace(model, data, probes=5, seed=1) == hessian_trace(
        point, data, probes=5, seed=1, canonical=False
    )
    assert hessian_top_eigenvalue(model, data, iters=4, seed=1) == hessian_top_eigenvalue(
        point, data, iters=4, seed=1, canonical=False
    )
    # ... and it matters: the Hessian is not invariant under the rescaling.
    raw = hessian_trace(model, data, probes=5, seed=1, canonical=False)
    assert raw.value != pytest.approx(hessian_trace(model, data, probes=5, seed=1).value)


def test_canonical_estimates_are_the_same_on_a_symmetry_orbit() -> None:
    model, data = _bn_mlp(), _data(60, 4)
    # Hidden scales only: the output scale changes the loss, and output="keep" keeps it.
    _, transform = random_symmetry(model, seed=11, permutations=False)
    other = apply_symmetry(model, replace(transform, output_scale=1.0))
    a = hessian_trace(model, data, probes=5, seed=2)
    b = hessian_trace(other, data, probes=5, seed=2)
    torch.testing.assert_close(torch.tensor(a.samples), torch.tensor(b.samples))
    a_raw = hessian_trace(model, data, probes=5, seed=2, canonical=False)
    b_raw = hessian_trace(other, data, probes=5, seed=2, canonical=False)
    assert a_raw.value != pytest.approx(b_raw.value, rel=1e-3)


def test_bn_model_samples_match_the_full_autograd_hessian_bn_affine_included() -> None:
    model, (x, y) = _bn_mlp(), _data(60, 4)
    point = canonicalize(model, output="keep").eval()
    names = [name for name, _ in point.named_parameters()]
    params = [p.detach() for p in point.parameters()]
    assert any(name.endswith(".bias") and "5" in name for name in names)  # a BN beta

    def loss(*flat: torch.Tensor) -> torch.Tensor:
        out = functional_call(point, dict(zip(names, flat, strict=True)), (x,))
        return F.cross_entropy(out, y)

    blocks = torch.autograd.functional.hessian(loss, tuple(params))
    sizes = [p.numel() for p in params]
    hessian = torch.cat(
        [
            torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
            for i in range(len(params))
        ]
    )
    est = hessian_trace(model, (x, y), probes=6, seed=7, batch_size=16)
    is_bn = torch.cat(
        [
            torch.full(
                (n,), isinstance(point.get_submodule(name.rsplit(".", 1)[0]), nn.BatchNorm1d)
            )
            for name, n in zip(names, sizes, strict=True)
        ]
    )
    assert is_bn.any()
    gen = torch.Generator().manual_seed(7)
    for sample in est.samples:
        v = torch.cat(
            [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).flatten() for p in params]
        )
        v = v.double()
        assert sample == pytest.approx(float(v @ hessian @ v), rel=1e-9)
        # The BN affine parameters matter: without them the quadratic form differs.
        w = torch.where(is_bn, 0.0, v)
        assert abs(sample - float(w @ hessian @ w)) > 1e-4


def test_plain_module_cannot_be_canonicalized() -> None:
    model, data = _logistic(), _data()
    with pytest.raises(UnsupportedModelError):
        hessian_trace(model, data, probes=2)
    with pytest.raises(UnsupportedModelError):
        hessian_top_eigenvalue(model, data, iters=2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"probes": 0}, "probes"),
        ({"batch_size": 0}, "batch_size"),
        ({"probes": -3}, "probes"),
    ],
)
def test_bad_trace_arguments_raise(kwargs: dict[str, int], name: str) -> None:
    model, data = _logistic(), _data()
    with pytest.raises(InvalidArgumentError, match=name):
        hessian_trace(model, data, canonical=False, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"iters": 0}, "iters"), ({"batch_size": 0}, "batch_size"), ({"tol": -1.0}, "tol")],
)
def test_bad_eigenvalue_arguments_raise(kwargs: dict[str, float], name: str) -> None:
    model, data = _logistic(), _data()
    with pytest.raises(InvalidArgumentError, match=name):
        hessian_top_eigenvalue(model, data, canonical=False, **kwargs)  # type: ignore[arg-type]


def test_bad_data_raises() -> None:
    model = _logistic()
    with pytest.raises(InvalidArgumentError, match="data"):
        hessian_trace(model, [1, 2], canonical=False)  # type: ignore[arg-type]
    empty = (torch.zeros(0, D, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="empty"):
        hessian_trace(model, empty, canonical=False)


def test_float64_model_takes_float32_inputs() -> None:
    model = _logistic()
    x, y = _data()
    a = hessian_trace(model, (x.float(), y), probes=4, canonical=False)
    b = hessian_trace(model, (x.float().double(), y), probes=4, canonical=False)
    assert a.samples == b.samples
