"""Local energy: exact zero at sigma 0, invariance on the symmetry orbit, agreement with a
slow perturb-recompute-evaluate loop, determinism, and the curve summaries."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from toroid.data import Split, TensorData, load
from toroid.errors import InvalidArgumentError
from toroid.evaluate import EvalPlan, evaluate
from toroid.flatness import LocalEnergy, local_energy
from toroid.manifold.perturb import draw_noise, perturbed_state
from toroid.models import build
from toroid.symmetry import canonicalize, random_symmetry, spec_for
from toroid.symmetry.transform import with_state
from toroid.train import fit

SIGMAS = (0.0, 0.2, 0.5, 1.0)


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, Split]:
    split = load(
        "synthetic", input_shape=(10,), num_classes=3, train_samples=240, test_samples=120, seed=0
    )
    model = build({"name": "mlp", "in_features": 10, "widths": [24, 16], "num_classes": 3}, seed=0)
    result = fit(model, split, optimizer={"name": "sgd", "lr": 0.1}, epochs=30, progress=False)
    double = Split(
        TensorData(split.train.x.double(), split.train.y),
        TensorData(split.test.x.double(), split.test.y),
        split.meta,
    )
    return result.model.double(), double


def measure(model: torch.nn.Module, data: object, **kwargs: object) -> LocalEnergy:
    options = {
        "sigmas": SIGMAS,
        "samples": 4,
        "split": "both",
        "progress": False,
        "bn_samples": 100,
        "bn_batch_size": 32,
        "batch_size": 64,
    }
    options.update(kwargs)
    return local_energy(model, data, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("noise", ["multiplicative", "spherical"])
def test_zero_at_sigma_zero_and_growing(trained: tuple[torch.nn.Module, Split], noise: str) -> None:
    model, split = trained
    energy = measure(model, split, noise=noise)
    for name in ("train", "test"):
        assert energy.mean[name][0] == 0.0 and energy.raw[name][0] == (0.0,) * 4
        assert energy.mean[name][-1] > energy.mean[name][1] >= 0.0 or energy.mean[name][-1] > 0
    assert energy.base["train"] == 0.0  # a minimizer


@pytest.mark.parametrize("noise", ["multiplicative", "spherical"])
def test_identical_on_the_scale_and_sign_orbit(
    trained: tuple[torch.nn.Module, Split], noise: str
) -> None:
    model, split = trained
    energy = measure(model, split, noise=noise)
    for seed in (1, 2):
        moved, _ = random_symmetry(model, seed=seed, permutations=False)
        assert not torch.equal(moved.state_dict()["1.weight"], model.state_dict()["1.weight"])
        assert measure(moved, split, noise=noise).raw == energy.raw


def test_statistically_equal_under_permutations(trained: tuple[torch.nn.Module, Split]) -> None:
    model, split = trained
    permuted, _ = random_symmetry(model, seed=5)
    a = measure(model, split, samples=24, sigmas=(0.0, 0.6), split="train")
    b = measure(permuted, split, samples=24, sigmas=(0.0, 0.6), split="train")
    assert a.raw != b.raw  # other noise per unit, so not identical ...
    difference = abs(a.mean["train"][1] - b.mean["train"][1])
    spread = (a.stderr["train"][1] ** 2 + b.stderr["train"][1] ** 2) ** 0.5
    assert difference <= 4 * spread  # ... but the same in distribution


@pytest.mark.parametrize("noise", ["multiplicative", "spherical"])
def test_equals_the_slow_loop(trained: tuple[torch.nn.Module, Split], noise: str) -> None:
    """Baseline: perturb one network at a time, recompute BatchNorm, evaluate."""
    model, split = trained
    energy = measure(model, split, noise=noise, seed=7)
    spec = spec_for(model)
    center = canonicalize(model, spec=spec, output="keep")
    state = center.state_dict()
    names = [n for n, _ in center.named_parameters()]
    generator = torch.Generator().manual_seed(7)
    directions = [draw_noise(state, names, generator) for _ in range(4)]
    evaluate_options = {
        "bn": "recompute",
        "bn_data": split.train,
        "bn_samples": 100,
        "bn_batch_size": 32,
        "seed": 7,
        "batch_size": 64,
    }
    base = evaluate(center, split.test, **evaluate_options).error  # type: ignore[arg-type]
    assert energy.base["test"] == base
    for i, sigma in enumerate(SIGMAS[1:], start=1):
        for s, z in enumerate(directions):
            moved = with_state(center, perturbed_state(state, sigma, z, kind=noise, spec=spec))
            error = evaluate(moved, split.test, **evaluate_options).error  # type: ignore[arg-type]
            assert energy.raw["test"][i][s] == pytest.approx(error - base, abs=1e-12)


def test_seeded(trained: tuple[torch.nn.Module, Split]) -> None:
    model, split = trained
    assert measure(model, split, seed=3).raw == measure(model, split, seed=3).raw
    assert measure(model, split, seed=3).raw != measure(model, split, seed=4).raw


def test_summaries_on_a_hand_made_curve() -> None:
    energy = LocalEnergy(
        levels=(0.0, 0.1, 0.2, 0.4),
        noise="multiplicative",
        samples=2,
        base={"train": 0.0},
        mean={"train": (0.0, 0.02, 0.06, 0.3)},
        stderr={"train": (0.0, 0.01, 0.01, 0.02)},
        raw={"train": ((0.0, 0.0),) * 4},
    )
    assert energy.at(0.15) == pytest.approx(0.04)
    assert energy.at(0.4) == pytest.approx(0.3)
    assert energy.level_at(0.04) == pytest.approx(0.15)
    assert energy.level_at(0.0) == 0.0
    assert energy.level_at(0.5) is None
    with pytest.raises(InvalidArgumentError, match="outside the measured range"):
        energy.at(0.5)
    with pytest.raises(InvalidArgumentError, match="'test' was not measured"):
        energy.at(0.1, split="test")


def test_bad_arguments(trained: tuple[torch.nn.Module, Split]) -> None:
    model, split = trained
    with pytest.raises(InvalidArgumentError, match="increasing"):
        measure(model, split, sigmas=(0.5, 0.1))
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        measure(model, split, sigmas=(-0.1, 0.1))
    with pytest.raises(InvalidArgumentError, match="samples"):
        measure(model, split, samples=0)
    with pytest.raises(InvalidArgumentError, match="noise"):
        measure(model, split, noise="gaussian")
    with pytest.raises(InvalidArgumentError, match="needs a Split"):
        measure(model, (split.train.x, split.train.y), split="test")


def test_spherical_noise_needs_the_canonical_network(
    trained: tuple[torch.nn.Module, Split],
) -> None:
    model, split = trained
    with pytest.raises(InvalidArgumentError, match="canonical=True"):
        measure(model, split, noise="spherical", canonical=False)
    with pytest.raises(InvalidArgumentError, match="strictly increasing"):
        measure(model, split, sigmas=(0.0, 0.1, 0.1))


def test_a_plan_equals_the_loose_arguments_and_is_not_mixed_with_them(
    trained: tuple[torch.nn.Module, Split],
) -> None:
    model, split = trained
    loose = measure(model, split, seed=3)
    plan = EvalPlan(bn_samples=100, bn_batch_size=32, batch_size=64, seed=3, max_sets=32)
    options = {"sigmas": SIGMAS, "samples": 4, "split": "both", "seed": 3, "progress": False}
    assert local_energy(model, split, plan=plan, **options) == loose  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="not both; got plan= and max_sets=4"):
        local_energy(model, split, plan=plan, max_sets=4, **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"plan\.bn must be 'recompute'"):
        local_energy(model, split, plan=EvalPlan(bn="keep"), **options)  # type: ignore[arg-type]
    # The seed draws the noise; with a plan, the BatchNorm subset follows plan.seed.
    other = local_energy(model, split, plan=replace(plan, seed=0), **options)  # type: ignore[arg-type]
    assert other.levels == loose.levels and other.noise == "multiplicative"
