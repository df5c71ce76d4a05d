"""The presets through fit and the CLI: zero training error, gradient-evaluation counts,
determinism, resume, progress reporting, preset batch sizes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from tests.test_cli import TRAIN_ARGS, assert_one_line_error, invoke
from toroid.data import Split, load
from toroid.models import build
from toroid.optim import (
    GRAD_EVALS_PER_STEP,
    PRESETS,
    default_batch_size,
    optimizer_entry,
    registry,
    resolve_optimizer,
)
from toroid.train import EpochRecord, fit


@pytest.fixture(scope="module")
def small() -> Split:
    return load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=240, test_samples=60, seed=0
    )


def small_mlp(seed: int = 0) -> torch.nn.Module:
    return build({"name": "mlp", "in_features": 12, "widths": [32], "num_classes": 3}, seed=seed)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_presets_are_registered_with_sources() -> None:
    for name in PRESETS:
        entry = optimizer_entry(name)
        assert entry.source and entry.description, name
        assert name in GRAD_EVALS_PER_STEP
    assert default_batch_size("sgd-large-batch") == 1024
    assert default_batch_size({"name": "rsgd"}) == registry.DEFAULT_BATCH_SIZE == 128


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_reaches_zero_training_error(small: Split, preset: str) -> None:
    result = fit(
        small_mlp(), small, optimizer=preset, epochs=100, schedule="cosine", progress=False
    )
    assert result.reached_zero_train_error and result.train.error == 0.0, result.history[-1]
    assert result.epochs < 100
    assert result.optimizer["name"] == preset


def test_gradient_evaluations_per_preset(small: Split) -> None:
    # 240 samples in minibatches of 32: 8 per epoch. A step that needs more than the pass
    # has left finishes on a fresh pass and ends the epoch: esgd (L=5) takes 5 + 5, rsgd
    # (y=3) 3 + 3 + 3 minibatches per epoch.
    expected = {"sgd": 8, "sgd-large-batch": 8, "adam": 8, "sam": 16, "esgd": 10, "rsgd": 9}
    for preset, per_epoch in expected.items():
        result = fit(
            small_mlp(),
            small,
            optimizer=preset,
            epochs=2,
            batch_size=32,
            stop_at_zero_train_error=False,
            progress=False,
        )
        assert result.grad_evals == 2 * per_epoch, preset
        assert [r.grad_evals for r in result.history] == [per_epoch, 2 * per_epoch], preset
    # the preset's own batch size: 1024 > 240, one full-batch step per epoch
    large = fit(small_mlp(), small, optimizer="sgd-large-batch", epochs=3, progress=False,
                stop_at_zero_train_error=False)  # fmt: skip
    assert large.grad_evals == 3


@pytest.mark.parametrize("preset", ["sam", "esgd", "rsgd"])
def test_same_seed_same_weights(small: Split, preset: str) -> None:
    runs = [
        fit(
            small_mlp(),
            small,
            optimizer=preset,
            epochs=3,
            batch_size=32,
            seed=s,
            stop_at_zero_train_error=False,
            progress=False,
        )
        for s in (4, 4, 5)
    ]
    assert same_weights(runs[0].model, runs[1].model)
    assert not same_weights(runs[0].model, runs[2].model)


class SimulatedInterruptError(Exception):
    pass


@pytest.mark.parametrize("preset", ["sam", "esgd", "rsgd"])
def test_resume_equals_uninterrupted(tmp_path: Path, small: Split, preset: str) -> None:
    kwargs: dict[str, Any] = dict(
        optimizer=preset,
        epochs=4,
        batch_size=32,
        schedule="cosine",
        seed=2,
        stop_at_zero_train_error=False,
        progress=False,
    )
    full = fit(small_mlp(), small, **kwargs)

    def stop_after_two(record: EpochRecord) -> None:
        if record.epoch == 2:
            raise SimulatedInterruptError

    with pytest.raises(SimulatedInterruptError):
        fit(small_mlp(), small, checkpoint_dir=tmp_path, on_epoch_end=stop_after_two, **kwargs)
    resumed = fit(small_mlp(), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert same_weights(full.model, resumed.model)
    assert resumed.grad_evals == full.grad_evals


class ProgressSpy(torch.optim.SGD):
    """Consumes three minibatches per step and records the progress and rate it was given."""

    seen: ClassVar[list[tuple[float, float]]] = []

    def __init__(self, params: Any, **hparams: Any) -> None:
        super().__init__(params, **hparams)
        self.progress = 0.0

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction

    def step(self, closure: Callable[..., Any] | None = None) -> Any:  # type: ignore[override]
        assert closure is not None
        ProgressSpy.seen.append((self.progress, self.param_groups[0]["lr"]))
        loss = closure()
        for _ in range(2):
            closure.next_batch()  # type: ignore[attr-defined]
            closure()
        super().step()
        return loss


def test_fit_reports_progress_per_minibatch(small: Split, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry._REGISTRY,
        "spy",
        registry.OptimizerEntry("spy", ProgressSpy, {"lr": 0.1}),
    )
    ProgressSpy.seen = []
    result = fit(
        small_mlp(),
        small,
        optimizer="spy",
        epochs=4,
        batch_size=32,
        schedule="cosine",
        stop_at_zero_train_error=False,
        progress=False,
    )
    # three steps per epoch of 8 minibatches, the last running one into a fresh pass;
    # progress counts minibatches within whole epochs, of 8 * 4 planned
    fractions = [p for p, _ in ProgressSpy.seen]
    assert fractions == pytest.approx([(8 * e + 3 * i) / 32 for e in range(4) for i in range(3)])
    rates = [lr for _, lr in ProgressSpy.seen]
    assert rates == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * f)) for f in fractions])
    assert result.grad_evals == 36 and result.epochs == 4


def test_cli_trains_a_preset_with_hyperparameters(tmp_path: Path) -> None:
    args = [*TRAIN_ARGS, "--epochs", "2", "--no-stop-at-zero", "--out", tmp_path / "run"]
    args.remove("--batch-size")
    args.remove("64")
    args.remove("--lr")
    args.remove("0.1")
    result = invoke([*args, "--optimizer", "esgd", "--hparam", "L=2", "--hparam", "noise=0"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["optimizer"] == resolve_optimizer("esgd", L=2, noise=0)
    assert meta["training"]["batch_size"] == 128
    # 512 samples / 128 = 4 minibatches per epoch, L = 2: 4 gradients per epoch
    assert meta["training"]["grad_evals"] == 8

    large = invoke([*args[:-1], tmp_path / "large", "--optimizer", "sgd-large-batch"])
    assert large.exit_code == 0, large.output
    meta = json.loads((tmp_path / "large" / "model.json").read_text())
    assert meta["training"]["batch_size"] == 1024 and meta["training"]["grad_evals"] == 2


def test_cli_bad_hyperparameter_is_a_one_line_error(tmp_path: Path) -> None:
    base = [*TRAIN_ARGS, "--out", tmp_path / "run", "--optimizer", "sam"]
    assert_one_line_error(invoke([*base, "--hparam", "rho"]), "KEY=VALUE")
    assert_one_line_error(invoke([*base, "--hparam", "rho=-1"]), "rho must be")
