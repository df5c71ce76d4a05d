"""Magnitude-aware PAC-Bayes flatness (Jiang, Neyshabur, Mobahi, Krishnan, Bengio 2020,
"Fantastic Generalization Measures and Where to Find Them", the measure
pacbayes.mag.flatness): the largest relative noise scale sigma' that the training error
tolerates, found by bisection on a Monte Carlo estimate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from toroid.data.tensordata import DataLike, Split, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, evaluate_sets, stack_states
from toroid.manifold.perturb import draw_noise
from toroid.models.finite import check_finite_data, check_finite_model


@dataclass(frozen=True)
class PacBayesFlatness:
    """sigma', the largest noise scale found whose perturbations keep the mean training
    error within `deviation` of the unperturbed one, and `measure` = 1 / sigma'^2 (Jiang et
    al.'s pacbayes.mag.flatness: larger is sharper; inf when sigma' = 0).

    `lower` and `upper` bracket the threshold at the end: `lower` (= sigma) passed, `upper`
    failed (inf when even `max_sigma` passed: `bracketed` is then False and sigma is a
    lower bound). `error` is the mean perturbed training error at sigma, `stderr` its
    standard error over the `samples` noise draws, `base_error` the unperturbed error;
    `evaluations` counts the sigmas tried (bracket search and bisection)."""

    sigma: float
    measure: float
    deviation: float
    eps: float
    samples: int
    base_error: float
    error: float
    stderr: float
    lower: float
    upper: float
    bracketed: bool
    evaluations: int


def pac_bayes_flatness(
    model: nn.Module,
    data: Split | DataLike,
    *,
    deviation: float = 0.1,
    samples: int = 16,
    eps: float = 1e-3,
    start: float = 0.1,
    max_sigma: float = 100.0,
    steps: int = 12,
    seed: int = 0,
    plan: EvalPlan | None = None,
) -> PacBayesFlatness:
    """Magnitude-aware PAC-Bayes flatness of `model` on its training data (`data`: training
    data, or a Split whose `train` is used).

    Each parameter w (weights, biases, BatchNorm affine parameters; never running
    statistics) is perturbed as w + u, u ~ N(0, sigma'^2 w^2 + eps^2) independently: the
    magnitude-aware posterior of Jiang et al. 2020 (appendix, magnitude-aware perturbation
    bounds, after Keskar et al. 2017), variance sigma'^2 |w|^2 + eps^2 with eps = 1e-3
    there. Written as u = sqrt(sigma'^2 w^2 + eps^2) z with `samples` standard normal
    draws z seeded by `seed`, the same draws for every sigma' (common random numbers: the
    estimate is a deterministic, smooth function of sigma'), so the bisection is exact for
    that estimate. E_u[err(w + u)] is the mean over the draws, each network with its
    BatchNorm statistics recomputed (DESIGN.md's policy) and evaluated by `evaluate_sets`
    with `plan` (default: `EvalPlan(max_sets=32, seed=seed)`; `bn` must be "recompute");
    the unperturbed error is computed the same way.

    sigma' is the largest value with mean error - base error <= `deviation`: from `start`,
    doubled until a value fails (at most `max_sigma`), then `steps` bisections of the
    bracket. If the eps term alone already fails, sigma' = 0 (measure inf). The model is not
    modified."""
    for label, value in (("deviation", deviation), ("start", start), ("max_sigma", max_sigma)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise InvalidArgumentError(f"{label} must be a finite number > 0, got {value!r}")
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise InvalidArgumentError(f"eps must be a finite number >= 0, got {eps!r}")
    if start > max_sigma:
        raise InvalidArgumentError(f"start must be <= max_sigma ({max_sigma}), got {start}")
    for label, count in (("samples", samples), ("steps", steps)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgumentError(f"{label} must be a positive integer, got {count!r}")
    plan = plan or EvalPlan(max_sets=32, seed=seed)
    if plan.bn != "recompute":
        raise InvalidArgumentError(
            "PAC-Bayes flatness recomputes BatchNorm statistics of every perturbed network; "
            f"plan.bn must be 'recompute', got {plan.bn!r}"
        )
    train = as_tensor_data(data.train if isinstance(data, Split) else data)
    check_finite_model(model)
    check_finite_data(train, what="the training data")

    state = dict(model.state_dict())
    if plan.device is not None:
        state = {k: v.to(plan.device) for k, v in state.items()}
    names = [name for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    draws = [draw_noise(state, names, generator) for _ in range(samples)]
    parts = {"train": train}

    def errors_at(sigma: float | None) -> torch.Tensor:
        """Per-draw training errors at sigma' = sigma; None: the unperturbed network."""
        if sigma is None:
            sets = stack_states([{n: state[n] for n in names}])
        else:
            sets = stack_states(
                [
                    {
                        n: state[n] + torch.sqrt(sigma**2 * state[n] ** 2 + eps**2) * z[n]
                        for n in names
                    }
                    for z in draws
                ]
            )
        measured = evaluate_sets(model, sets, parts, bn_data=train, plan=plan)
        return measured["train"].error.double().cpu()

    base = float(errors_at(None)[0])
    evaluations = 0

    def passes(sigma: float) -> tuple[bool, torch.Tensor]:
        nonlocal evaluations
        evaluations += 1
        errors = errors_at(sigma)
        return float(errors.mean()) - base <= deviation, errors

    def summary(errors: torch.Tensor) -> tuple[float, float]:
        spread = float(errors.std()) / math.sqrt(samples) if samples > 1 else math.nan
        return float(errors.mean()), spread

    ok, errors = passes(0.0)
    if not ok:
        mean, spread = summary(errors)
        return PacBayesFlatness(
            0.0, math.inf, deviation, eps, samples, base, mean, spread, 0.0, 0.0, True, evaluations
        )
    lower, lower_errors, upper = 0.0, errors, start
    while True:
        ok, errors = passes(upper)
        if not ok:
            break
        lower, lower_errors = upper, errors
        if upper >= max_sigma:
            mean, spread = summary(lower_errors)
            return PacBayesFlatness(
                lower,
                1.0 / lower**2,
                deviation,
                eps,
                samples,
                base,
                mean,
                spread,
                lower,
                math.inf,
                False,
                evaluations,
            )
        upper = min(2 * upper, max_sigma)
    for _ in range(steps):
        middle = (lower + upper) / 2
        ok, errors = passes(middle)
        if ok:
            lower, lower_errors = middle, errors
        else:
            upper = middle
    mean, spread = summary(lower_errors)
    measure = math.inf if lower == 0 else 1.0 / lower**2
    return PacBayesFlatness(
        lower, measure, deviation, eps, samples, base, mean, spread, lower, upper, True, evaluations
    )
