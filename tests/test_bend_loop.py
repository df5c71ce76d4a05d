"""`fit_bend` on the shared training loop: the default SGD against a slow, obviously-correct
reference of the hand-rolled loop it replaced, any registered optimizer (SAM lowers the
path loss), kill-and-resume to the same bend, and how `optimizer` and `lr` combine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from toroid.data import Split, TensorData, iterate_batches, load
from toroid.errors import InvalidArgumentError, ResumeMismatchError, TrainingDivergedError
from toroid.manifold.geodesic import slerp_state
from toroid.models import build
from toroid.paths import fit_bend, geodesic, polychain, profile, uniform_ts
from toroid.paths.path import bezier_weights, endpoints, polychain_weights
from toroid.symmetry.transform import with_state
from toroid.train import derive_seed, fit

# Narrow enough that the chain through the geodesic midpoint has a barrier to lower.
CONFIG = {"name": "mlp", "in_features": 8, "widths": [6, 6], "num_classes": 5}
BN = {"bn_samples": 100, "bn_batch_size": 50, "batch_size": 100}


@pytest.fixture(scope="module")
def split() -> Split:
    data = load(
        "synthetic", input_shape=(8,), num_classes=5, train_samples=200, test_samples=60, seed=1
    )
    test = data.test
    assert test is not None
    return Split(
        TensorData(data.train.x.double(), data.train.y),
        TensorData(test.x.double(), test.y),
        data.meta,
    )


@pytest.fixture(scope="module")
def ends(split: Split) -> tuple[nn.Module, nn.Module]:
    a, b = (
        fit(
            build(CONFIG, seed=seed).double(),
            split,
            optimizer={"name": "sgd", "lr": 0.1},
            epochs=10,
            stop_at_zero_train_error=False,
            progress=False,
        ).model
        for seed in (0, 1)
    )
    return a, b


def _reference_bend(
    a: nn.Module,
    b: nn.Module,
    train: TensorData,
    *,
    kind: str,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The loop fit_bend ran before the shared loop, written out: SGD with momentum by
    hand, cosine rate per step, t ~ U(0, 1) per minibatch from the "bend-t" stream,
    minibatches from the "bend-batches" stream, BatchNorm in train mode."""
    ends = endpoints(a, b, seed=seed)
    assert ends.spec is not None
    initial = slerp_state(ends.a, ends.b, 0.5, ends.spec)
    names = [n for n, _ in a.named_parameters()]
    bend = {n: initial[n].clone() for n in names}
    buffers = {k: v.clone() for k, v in initial.items() if k not in bend}
    model = with_state(a, initial).train()
    weights = polychain_weights if kind == "polychain" else bezier_weights
    velocity: dict[str, torch.Tensor] = {}
    batches = torch.Generator().manual_seed(derive_seed(seed, "bend-batches"))
    ts = torch.Generator().manual_seed(derive_seed(seed, "bend-t"))
    total = epochs * len(
        list(iterate_batches(train, batch_size=batch_size, shuffle=False, merge_single_last=True))
    )
    step, losses = 0, []
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for x, y in iterate_batches(
            train, batch_size=batch_size, generator=batches, merge_single_last=True
        ):
            t = float(torch.rand((), generator=ts, dtype=torch.float64))
            wa, wm, wb = weights(t)
            leaves = {n: v.clone().requires_grad_(True) for n, v in bend.items()}
            point = {n: wa * ends.a[n] + wm * leaves[n] + wb * ends.b[n] for n in names}
            loss = F.cross_entropy(functional_call(model, {**buffers, **point}, (x,)), y)
            grads = torch.autograd.grad(loss, [leaves[n] for n in names])
            rate = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            for n, g in zip(names, grads, strict=True):
                g = g + weight_decay * bend[n]
                velocity[n] = g if n not in velocity else momentum * velocity[n] + g
                bend[n] = bend[n] - rate * velocity[n]
            loss_sum += float(loss.detach()) * y.shape[0]
            seen += y.shape[0]
            step += 1
        losses.append(loss_sum / seen)
    return bend, losses


@pytest.mark.parametrize("kind", ["polychain", "bezier"])
@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"lr": 0.1, "momentum": 0.5, "weight_decay": 1e-3, "batch_size": 48},
    ],
    ids=["defaults", "explicit"],
)
def test_default_sgd_equals_the_reference_loop(
    ends: tuple[nn.Module, nn.Module], split: Split, kind: str, hyper: dict[str, float]
) -> None:
    a, b = ends
    fitted = fit_bend(a, b, split, kind=kind, epochs=3, seed=2, progress=False, **hyper)  # type: ignore[arg-type]
    reference = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 128, **hyper}
    bend, losses = _reference_bend(
        a,
        b,
        split.train,
        kind=kind,
        epochs=3,
        seed=2,
        lr=reference["lr"],
        momentum=reference["momentum"],
        weight_decay=reference["weight_decay"],
        batch_size=int(reference["batch_size"]),
    )
    got = fitted.bend.state_dict()
    for name, value in bend.items():
        assert (got[name] - value).abs().max() < 1e-10, name
    assert fitted.losses == pytest.approx(losses, abs=1e-10)
    steps = 3 * math.ceil(200 / int(reference["batch_size"]))
    assert fitted.grad_evals == steps and fitted.epochs == 3
    assert fitted.settings["optimizer"] == {
        "name": "sgd",
        "lr": reference["lr"],
        "momentum": reference["momentum"],
        "nesterov": False,
        "weight_decay": reference["weight_decay"],
    }


def test_sam_trains_a_bend_that_lowers_the_path_loss(
    ends: tuple[nn.Module, nn.Module], split: Split
) -> None:
    a, b = ends
    start = polychain(a, geodesic(a, b).at(0.5), b)
    fitted = fit_bend(a, b, split, optimizer="sam", epochs=8, progress=False)
    ts = uniform_ts(9)
    before = profile(start, split, ts=ts, progress=False, **BN)
    after = profile(fitted.path, split, ts=ts, progress=False, **BN)
    inside = slice(1, -1)  # the ends are frozen
    assert max(after.train_loss[inside]) < 0.9 * max(before.train_loss[inside])
    assert sum(after.train_loss[inside]) < sum(before.train_loss[inside])
    # Two gradient evaluations per step, both at the step's point t.
    assert fitted.grad_evals == 2 * 8 * math.ceil(200 / 128)
    assert fitted.settings["optimizer"]["name"] == "sam"


@pytest.mark.parametrize(
    "optimizer", [{"name": "esgd", "L": 2}, {"name": "rsgd", "y": 2}, "adam"], ids=str
)
def test_other_optimizers_train_bends(
    ends: tuple[nn.Module, nn.Module], split: Split, optimizer: str | dict[str, object]
) -> None:
    a, b = ends
    fitted = fit_bend(a, b, split, kind="bezier", optimizer=optimizer, epochs=2, progress=False)
    assert len(fitted.losses) == 2 and all(math.isfinite(v) for v in fitted.losses)
    assert fitted.grad_evals >= 2 * math.ceil(200 / 128)


class _KilledError(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_a_killed_bend_resumes_to_the_uninterrupted_bend(
    ends: tuple[nn.Module, nn.Module], split: Split, tmp_path: Path, optimizer: str
) -> None:
    a, b = ends
    settings = {"kind": "bezier", "optimizer": optimizer, "epochs": 3, "seed": 1}
    whole = fit_bend(a, b, split, batch_size=64, progress=False, **settings)  # type: ignore[arg-type]

    def kill(record: object) -> None:
        raise _KilledError

    state_dir = tmp_path / "bend"
    with pytest.raises(_KilledError):
        fit_bend(
            a,
            b,
            split,
            batch_size=64,
            checkpoint_dir=state_dir,
            on_epoch_end=kill,
            progress=False,
            **settings,  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidArgumentError, match="resume=True"):
        fit_bend(
            a,
            b,
            split,
            batch_size=64,
            checkpoint_dir=state_dir,
            progress=False,
            **settings,  # type: ignore[arg-type]
        )
    with pytest.raises(ResumeMismatchError):
        fit_bend(
            a,
            b,
            split,
            batch_size=32,
            checkpoint_dir=state_dir,
            resume=True,
            progress=False,
            **settings,  # type: ignore[arg-type]
        )
    resumed = fit_bend(
        a,
        b,
        split,
        batch_size=64,
        checkpoint_dir=state_dir,
        resume=True,
        progress=False,
        **settings,  # type: ignore[arg-type]
    )
    one, two = whole.bend.state_dict(), resumed.bend.state_dict()
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert resumed.losses == whole.losses and resumed.grad_evals == whole.grad_evals
    # A finished bend resumes to itself without training.
    again = fit_bend(
        a,
        b,
        split,
        batch_size=64,
        checkpoint_dir=state_dir,
        resume=True,
        progress=False,
        **settings,  # type: ignore[arg-type]
    )
    assert all(torch.equal(one[k], again.bend.state_dict()[k]) for k in one)


def test_other_ends_do_not_resume_a_bend(
    ends: tuple[nn.Module, nn.Module], split: Split, tmp_path: Path
) -> None:
    a, b = ends
    fit_bend(a, b, split, epochs=1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ResumeMismatchError):
        fit_bend(b, a, split, epochs=1, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_optimizer_config_and_learning_rate_arguments(
    ends: tuple[nn.Module, nn.Module], split: Split
) -> None:
    a, b = ends

    def config(**kwargs: object) -> dict[str, object]:
        fitted = fit_bend(a, b, split, epochs=1, progress=False, **kwargs)  # type: ignore[arg-type]
        return dict(fitted.settings["optimizer"])

    assert config(optimizer={"name": "sgd", "lr": 0.1})["lr"] == 0.1
    # A keyword, when given, overrides the config's value.
    assert config(optimizer={"name": "sgd", "lr": 0.1}, lr=0.02)["lr"] == 0.02
    # Another optimizer keeps its own defaults, not sgd's.
    assert config(optimizer="adam")["lr"] == 1e-3
    sam = config(optimizer="sam", lr=0.02, momentum=0.5)
    assert (sam["base"], sam["lr"], sam["momentum"]) == ("sgd", 0.02, 0.5)
    with pytest.raises(InvalidArgumentError, match="momentum"):
        fit_bend(a, b, split, optimizer="adam", momentum=0.9, epochs=1, progress=False)
    with pytest.raises(InvalidArgumentError, match="lr"):
        fit_bend(a, b, split, lr=-1.0, epochs=1, progress=False)
    with pytest.raises(InvalidArgumentError, match="unknown optimizer"):
        fit_bend(a, b, split, optimizer="nope", epochs=1, progress=False)


def test_a_diverging_bend_raises(ends: tuple[nn.Module, nn.Module], split: Split) -> None:
    a, b = ends
    with pytest.raises(TrainingDivergedError, match="bend training diverged"):
        fit_bend(a, b, split, lr=1e300, momentum=0.0, epochs=2, progress=False)
