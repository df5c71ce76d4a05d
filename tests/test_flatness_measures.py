"""The flatness measures compared with the local energy: additive-noise local energy,
public Hessian-vector products, SAM sharpness, magnitude-aware PAC-Bayes flatness, and the
product of layer norms; against analytic values and slow one-network-at-a-time loops."""

from __future__ import annotations

import copy
import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from toroid.data import Split, TensorData, load
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, evaluate
from toroid.flatness import (
    hessian_trace,
    hessian_vector_product,
    local_energy,
    log_norm_product,
    pac_bayes_flatness,
    sam_sharpness,
)
from toroid.manifold.perturb import draw_noise
from toroid.models import build
from toroid.symmetry import random_symmetry
from toroid.symmetry.transform import with_state
from toroid.train import fit


def _double(split: Split) -> Split:
    return Split(
        TensorData(split.train.x.double(), split.train.y),
        TensorData(split.test.x.double(), split.test.y),
        split.meta,
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Split]:
    """A small BatchNorm ReLU MLP trained to (near) zero training error, in float64."""
    split = load(
        "synthetic", input_shape=(8,), num_classes=3, train_samples=200, test_samples=100, seed=0
    )
    config = {"name": "mlp", "in_features": 8, "widths": [16, 12], "num_classes": 3}
    model = build({**config, "batchnorm": True}, seed=0)
    result = fit(model, split, optimizer={"name": "sgd", "lr": 0.1}, epochs=20, progress=False)
    return result.model.double(), _double(split)


@pytest.fixture(scope="module")
def plain() -> tuple[nn.Module, Split]:
    """A small ReLU MLP without BatchNorm, trained, in float64."""
    split = load(
        "synthetic", input_shape=(6,), num_classes=3, train_samples=150, test_samples=60, seed=1
    )
    config = {"name": "mlp", "in_features": 6, "widths": [10], "num_classes": 3}
    model = build({**config, "batchnorm": False}, seed=1)
    result = fit(model, split, optimizer={"name": "sgd", "lr": 0.1}, epochs=20, progress=False)
    return result.model.double(), _double(split)


# --- local energy with additive noise ----------------------------------------------------


def _additive(model: nn.Module, data: object, **kwargs: object):  # type: ignore[no-untyped-def]
    options = {
        "sigmas": (0.0, 0.05, 0.2),
        "samples": 4,
        "noise": "additive",
        "canonical": False,
        "progress": False,
        "bn_samples": 100,
        "bn_batch_size": 50,
        "batch_size": 64,
    }
    options.update(kwargs)
    return local_energy(model, data, **options)  # type: ignore[arg-type]


def test_additive_energy_zero_at_sigma_zero_and_seeded(trained: tuple[nn.Module, Split]) -> None:
    model, split = trained
    energy = _additive(model, split, split="both")
    assert energy.noise == "additive"
    for name in ("train", "test"):
        assert energy.mean[name][0] == 0.0 and energy.raw[name][0] == (0.0,) * 4
    assert energy.mean["train"][-1] > 0.0
    again = _additive(model, split, split="both")
    assert again.raw == energy.raw
    assert _additive(model, split, split="both", seed=1).raw != energy.raw


def test_additive_energy_equals_one_network_at_a_time(trained: tuple[nn.Module, Split]) -> None:
    """Slow baseline: draw the same noise, build each network theta + sigma z, recompute its
    BatchNorm statistics and evaluate it with plain `evaluate`."""
    model, split = trained
    sigmas, samples, seed = (0.0, 0.05, 0.2), 3, 7
    energy = _additive(model, split, sigmas=sigmas, samples=samples, seed=seed)
    state = dict(model.state_dict())
    names = [name for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    draws = [draw_noise(state, names, generator) for _ in range(samples)]

    def error(params: dict[str, torch.Tensor]) -> float:
        net = with_state(model, {**state, **params})
        metrics = evaluate(
            net,
            split.train,
            bn="recompute",
            bn_data=split.train,
            bn_samples=100,
            bn_batch_size=50,
            seed=seed,
        )
        return metrics.error

    base = error({})
    assert energy.base["train"] == base
    for i, sigma in enumerate(sigmas[1:], start=1):
        for s, z in enumerate(draws):
            moved = {n: state[n] + sigma * z[n] for n in names}
            assert energy.raw["train"][i][s] == pytest.approx(error(moved) - base, abs=1e-12)


def test_additive_energy_matches_the_gaussian_error_of_a_linear_classifier() -> None:
    """Two-class linear model: under theta + sigma z the logit difference of example x is
    m(x) + sigma sqrt(2 (|x|^2 + 1)) g, g ~ N(0, 1), so its mean error is Phi(-m / s)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -0.5, 0.3], [-1.0, 0.5, -0.3]]))
        model.bias.zero_()
    y = model(x).argmax(dim=1).detach()  # a minimizer: zero training error
    sigma, samples = 0.4, 400
    energy = _additive(model, (x, y), sigmas=(0.0, sigma), samples=samples, max_sets=128)
    with torch.no_grad():
        logits = model(x)
        margin = (logits.max(dim=1).values - logits.min(dim=1).values).abs()
    spread = sigma * torch.sqrt(2 * (x.pow(2).sum(dim=1) + 1))
    exact = float(torch.special.ndtr(-margin / spread).mean())
    assert energy.base["train"] == 0.0
    measured, stderr = energy.mean["train"][1], energy.stderr["train"][1]
    assert abs(measured - exact) < 4 * stderr, (measured, exact, stderr)


def test_additive_noise_name_is_checked(plain: tuple[nn.Module, Split]) -> None:
    model, split = plain
    with pytest.raises(InvalidArgumentError, match="additive"):
        _additive(model, split, noise="gaussian")


# --- Hessian-vector products -------------------------------------------------------------


def _tanh_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for _, p in model.named_parameters()])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, sizes)
        params = {n: v.view(s) for n, v, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, flat)
    assert isinstance(hessian, torch.Tensor)
    return hessian


def test_hessian_vector_product_equals_the_exact_hessian() -> None:
    model = _tanh_net()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=gen)
    hessian = _exact_hessian(model, x, y)
    named = dict(model.named_parameters())
    v = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in named.items()}
    hv = hessian_vector_product(model, (x, y), v, batch_size=16)
    flat_v = torch.cat([v[n].flatten() for n in named])
    flat_hv = torch.cat([hv[n].flatten() for n in named])
    assert torch.allclose(flat_hv, hessian @ flat_v, rtol=1e-10, atol=1e-12)
    # Given probes: the standard basis gives v^T H v = H_ii, so their mean is tr(H) / dim.
    basis = []
    for k in range(len(flat_v)):
        e = torch.zeros(len(flat_v), dtype=torch.float64)
        e[k] = 1.0
        pieces = torch.split(e, [p.numel() for p in named.values()])
        basis.append({n: t.view(p.shape) for (n, p), t in zip(named.items(), pieces, strict=True)})
    trace = hessian_trace(model, (x, y), probes=basis, canonical=False)
    assert trace.value * len(basis) == pytest.approx(float(torch.trace(hessian)), rel=1e-10)
    assert trace.method.startswith("quadratic-form-mean")
    with pytest.raises(InvalidArgumentError, match="parameter names"):
        hessian_vector_product(model, (x, y), {"0.weight": v["0.weight"]})


# --- SAM sharpness -----------------------------------------------------------------------


class _TwoWeights(nn.Module):
    """Logits (w . x, 0): a 2-parameter, 2-class model whose loss is convex in w."""

    def __init__(self, w: tuple[float, float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x @ self.w
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def _two_weight_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(80, 2, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.5])
    y = (x[:, 0] + 0.3 * x[:, 1] < 0).long()
    return x, y


def test_sam_sharpness_finds_the_worst_point_of_a_convex_loss() -> None:
    """A convex loss is largest on the sphere; a fine sweep of the circle is the baseline."""
    model, (x, y) = _TwoWeights((2.0, 0.5)), _two_weight_data()
    rho = 0.5
    angles = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
        worst = max(
            float(F.cross_entropy(_TwoWeights((2.0 + rho * c, 0.5 + rho * s))(x), y))
            for c, s in zip(torch.cos(angles).tolist(), torch.sin(angles).tolist(), strict=True)
        )
    result = sam_sharpness(model, (x, y), rho=rho, steps=20)
    assert result.base_loss == pytest.approx(base, rel=1e-12)
    assert result.value <= worst - base + 1e-9
    assert result.value == pytest.approx(worst - base, rel=1e-4)
    assert result.steps == 20 and len(result.losses) == 21


def test_sam_sharpness_is_rho_times_the_gradient_norm_to_first_order(
    trained: tuple[nn.Module, Split],
) -> None:
    model, split = trained
    work = copy.deepcopy(model).eval()
    params = list(work.parameters())
    loss = F.cross_entropy(work(split.train.x), split.train.y)
    grads = torch.autograd.grad(loss, params)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    scaled = math.sqrt(
        sum(float((g * p.detach().abs()).pow(2).sum()) for g, p in zip(grads, params, strict=True))
    )
    rho = 1e-5
    assert sam_sharpness(model, split, rho=rho, steps=1).value == pytest.approx(
        rho * norm, rel=1e-3
    )
    adaptive = sam_sharpness(model, split, rho=rho, steps=1, adaptive=True)
    assert adaptive.value == pytest.approx(rho * scaled, rel=1e-3) and adaptive.adaptive


def test_sam_sharpness_zero_at_rho_zero_monotone_and_deterministic(
    trained: tuple[nn.Module, Split],
) -> None:
    model, split = trained
    zero = sam_sharpness(model, split, rho=0.0)
    assert zero.value == 0.0 and zero.steps == 0
    values = [sam_sharpness(model, split, rho=r, steps=3).value for r in (0.01, 0.05, 0.2, 0.5)]
    assert all(a < b for a, b in pairwise(values)), values
    first = sam_sharpness(model, split, rho=0.1, steps=3, samples=120, seed=5)
    assert first == sam_sharpness(model, split, rho=0.1, steps=3, samples=120, seed=5)
    assert first.samples == 120
    assert first != sam_sharpness(model, split, rho=0.1, steps=3, samples=120, seed=6)
    with pytest.raises(InvalidArgumentError, match="rho"):
        sam_sharpness(model, split, rho=-1.0)


# --- magnitude-aware PAC-Bayes flatness --------------------------------------------------


def _slow_mean_error(
    model: nn.Module, train: TensorData, sigma: float, *, samples: int, seed: int, eps: float
) -> float:
    """The perturbed networks built and evaluated one at a time (no BatchNorm here)."""
    state = dict(model.state_dict())
    names = [name for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for _ in range(samples):
        z = draw_noise(state, names, generator)
        moved = {n: state[n] + torch.sqrt(sigma**2 * state[n] ** 2 + eps**2) * z[n] for n in names}
        errors.append(evaluate(with_state(model, {**state, **moved}), train).error)
    return sum(errors) / samples


def test_pac_bayes_bracket_and_determinism(plain: tuple[nn.Module, Split]) -> None:
    model, split = plain
    result = pac_bayes_flatness(model, split, samples=8, steps=10, seed=3)
    assert result.bracketed and 0 < result.lower < result.upper
    assert result.sigma == result.lower and result.measure == pytest.approx(result.sigma**-2)
    # The bracket is what the loop says: lower passes, upper fails.
    base = evaluate(model, split.train).error
    assert result.base_error == base
    at_lower = _slow_mean_error(model, split.train, result.lower, samples=8, seed=3, eps=1e-3)
    at_upper = _slow_mean_error(model, split.train, result.upper, samples=8, seed=3, eps=1e-3)
    assert at_lower == pytest.approx(result.error, abs=1e-12)
    assert at_lower - base <= 0.1 < at_upper - base
    # Ten bisections of a doubling bracket [s, 2s] leave a width of s / 2^10.
    assert result.upper - result.lower <= result.upper / 2**10 + 1e-15
    assert result.stderr > 0 and math.isfinite(result.stderr)
    assert pac_bayes_flatness(model, split, samples=8, steps=10, seed=3) == result


def _with_cancelling_units(model: nn.Module, scale: float) -> nn.Module:
    """The same function with two more hidden units that cancel: both compute
    relu(scale * a . x) and write +scale and -scale into the logits. Relative noise on
    their large weights moves the logits, so the copy is sharper for larger `scale`."""
    first, last = model[1], model[-1]
    d, h, c = first.in_features, first.out_features, last.out_features
    wider = nn.Sequential(nn.Linear(d, h + 2), nn.ReLU(), nn.Linear(h + 2, c)).double()
    a = torch.ones(d, dtype=torch.float64) / math.sqrt(d)
    with torch.no_grad():
        wider[0].weight.copy_(torch.cat([first.weight, scale * a[None], scale * a[None]]))
        wider[0].bias.copy_(torch.cat([first.bias, torch.zeros(2, dtype=torch.float64)]))
        out = torch.full((c, 2), scale, dtype=torch.float64)
        out[:, 1] = -scale
        wider[2].weight.copy_(torch.cat([last.weight, out], dim=1))
        wider[2].bias.copy_(last.bias)
    return wider


def test_pac_bayes_flatness_is_smaller_for_a_sharper_copy(plain: tuple[nn.Module, Split]) -> None:
    model, split = plain
    x = split.train.x
    flat, sharp = _with_cancelling_units(model, 0.0), _with_cancelling_units(model, 30.0)
    assert torch.allclose(flat(x), model(x), atol=1e-12)
    assert torch.allclose(sharp(x), model(x), atol=1e-9)  # the same function
    a = pac_bayes_flatness(flat, split, samples=8, steps=8)
    b = pac_bayes_flatness(sharp, split, samples=8, steps=8)
    assert b.sigma < a.sigma / 3, (a.sigma, b.sigma)
    assert b.measure > a.measure


def test_pac_bayes_arguments_are_checked(plain: tuple[nn.Module, Split]) -> None:
    model, split = plain
    with pytest.raises(InvalidArgumentError, match="deviation"):
        pac_bayes_flatness(model, split, deviation=0.0)
    with pytest.raises(InvalidArgumentError, match="bn"):
        pac_bayes_flatness(model, split, plan=EvalPlan(bn="keep"))


# --- product of layer norms, and what a function-preserving rescaling does -----------------


def test_log_norm_product_by_hand() -> None:
    model = build(
        {"name": "mlp", "in_features": 4, "widths": [5], "num_classes": 3, "batchnorm": True},
        seed=0,
    )
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(weights) == 2
    by_hand = sum(math.log(math.sqrt(float((w.detach().double() ** 2).sum()))) for w in weights)
    assert log_norm_product(model) == pytest.approx(by_hand, rel=1e-12)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        conv[0].weight.fill_(0.5)  # 18 entries of 0.5: norm 0.5 sqrt(18)
        conv[2].weight.fill_(2.0)  # 16 entries of 2: norm 8
    assert log_norm_product(conv) == pytest.approx(math.log(0.5 * math.sqrt(18)) + math.log(8))
    with pytest.raises(InvalidArgumentError, match="no Linear or Conv"):
        log_norm_product(nn.ReLU())


def test_rescaling_changes_norms_and_sam_but_not_the_error(plain: tuple[nn.Module, Split]) -> None:
    model, split = plain
    moved, _ = random_symmetry(model, seed=1, scale_range=(0.1, 10))
    x = split.train.x
    assert torch.equal(moved(x).argmax(dim=1), model(x).argmax(dim=1))
    assert evaluate(moved, split.train).error == evaluate(model, split.train).error
    assert abs(log_norm_product(moved) - log_norm_product(model)) > 0.5
    a = sam_sharpness(model, split, rho=0.05, steps=3)
    b = sam_sharpness(moved, split, rho=0.05, steps=3)
    assert abs(math.log(b.value / a.value)) > 0.2, (a.value, b.value)


def test_magnitude_aware_measures_ignore_hidden_rescalings(plain: tuple[nn.Module, Split]) -> None:
    """Noise or balls proportional to |w| commute with positive rescalings: with the output
    layer's global factor undone (it changes the loss), adaptive SAM sharpness is unchanged,
    and so is the PAC-Bayes sigma' with eps = 0 (the same draws land on rescaled copies of
    the same perturbed networks)."""
    model, split = plain
    moved, _ = random_symmetry(model, seed=1, scale_range=(0.1, 10), permutations=False)
    x = split.train.x
    with torch.no_grad():
        factor = float((moved(x) / model(x)).mean())
        moved[-1].weight.div_(factor)
        moved[-1].bias.div_(factor)
        assert torch.allclose(moved(x), model(x), atol=1e-10)
    assert abs(log_norm_product(moved) - log_norm_product(model)) > 0.5
    plain_a = sam_sharpness(model, split, rho=0.05, steps=3)
    plain_b = sam_sharpness(moved, split, rho=0.05, steps=3)
    assert abs(math.log(plain_b.value / plain_a.value)) > 0.2
    a = sam_sharpness(model, split, rho=0.05, steps=3, adaptive=True)
    b = sam_sharpness(moved, split, rho=0.05, steps=3, adaptive=True)
    assert b.value == pytest.approx(a.value, rel=1e-8)
    flat_a = pac_bayes_flatness(model, split, samples=8, steps=8, eps=0.0)
    flat_b = pac_bayes_flatness(moved, split, samples=8, steps=8, eps=0.0)
    assert flat_b.sigma == pytest.approx(flat_a.sigma, rel=1e-12)
