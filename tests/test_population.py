"""Population training: every member of `fit_population` ends where its own `fit` ends
(bit for bit with engine "loop", to rounding with "vmap"), whatever its population-mates
do (stop early, diverge, use another batch size); resume after an interruption or a
kill -9; determinism; one-line argument errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from toroid.data import Split, load
from toroid.data.tensordata import TensorData
from toroid.errors import InvalidArgumentError, TrainingDivergedError
from toroid.models import build
from toroid.train import EpochRecord, Member, TrainResult, fit, fit_population

# float64 agreement of the vmap engine with `fit`: its batched products add in another
# order, so the two differ by rounding only.
TOL64 = 1e-10


@pytest.fixture(scope="module")
def small() -> Split:
    return load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=240, test_samples=60, seed=0
    )


@pytest.fixture(scope="module")
def easy() -> Split:
    """Three well-separated clusters: zero training error within a few epochs."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(240) % 3
    centers = 4.0 * torch.eye(3, 12)
    x = centers[y] + 0.3 * torch.randn(240, 12, generator=gen)
    data = TensorData(x, y)
    return Split(train=data, test=data.subset(torch.arange(30)))


def bn_mlp(
    seed: int, *, dtype: torch.dtype = torch.float64, binary: bool = False, width: int = 16
) -> torch.nn.Module:
    config = {
        "name": "mlp",
        "in_features": 12,
        "widths": [width],
        "num_classes": 3,
        "batchnorm": True,
    }
    if binary:
        config["binary"] = True
    return build(config, seed=seed).to(dtype)


def alone(
    member: Member, split: Split, *, epochs: int, schedule: str = "constant", **kwargs: Any
) -> TrainResult:
    """The member trained by itself with `fit`."""
    assert isinstance(member.model, torch.nn.Module)
    return fit(
        member.model,
        split,
        optimizer=member.optimizer,
        seed=member.seed,
        epochs=member.epochs if member.epochs is not None else epochs,
        batch_size=member.batch_size,
        schedule=member.schedule or schedule,  # type: ignore[arg-type]
        weight_decay=member.weight_decay,
        progress=False,
        **kwargs,
    )


def trained(result: TrainResult | TrainingDivergedError) -> TrainResult:
    assert isinstance(result, TrainResult), result
    return result


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference over the floating state_dict entries (parameters and
    BatchNorm running statistics); integer entries (num_batches_tracked) must be equal."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    worst = 0.0
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape, key
        if sa[key].is_floating_point():
            worst = max(worst, (sa[key] - sb[key]).abs().max().item())
        else:
            assert torch.equal(sa[key], sb[key]), key
    return worst


def assert_matches_fit(got: TrainResult, ref: TrainResult, *, tol: float = TOL64) -> None:
    difference = max_difference(got.model, ref.model)
    assert difference <= tol, difference
    assert got.epochs == ref.epochs and got.grad_evals == ref.grad_evals
    assert got.stopped_by == ref.stopped_by
    assert [r.grad_evals for r in got.history] == [r.grad_evals for r in ref.history]
    assert [r.epoch for r in got.history] == [r.epoch for r in ref.history]
    assert [r.train_loss for r in got.history] == pytest.approx(
        [r.train_loss for r in ref.history], rel=1e-9, abs=1e-12
    )


def population(
    members: Sequence[Member], split: Split, **kwargs: Any
) -> tuple[TrainResult | TrainingDivergedError, ...]:
    kwargs.setdefault("progress", False)
    return fit_population(members, split, **kwargs)


# 1. every preset, float64, vmap == fit


def test_vmap_population_of_every_preset_equals_each_fit(small: Split) -> None:
    optimizers: list[str | Mapping[str, Any]] = [
        "sgd",
        "sgd-large-batch",
        "adam",
        "adamw",
        "sam",
        {"name": "sam", "adaptive": True, "rho": 0.5},
        "esgd",
        "rsgd",
    ]
    members = [
        # sgd-large-batch keeps its preset batch size (1024: one minibatch of 240, its
        # own vectorized pass); the others take minibatches of 32.
        Member(
            bn_mlp(seed),
            optimizer=opt,
            seed=10 + seed,
            batch_size=None if opt == "sgd-large-batch" else 32,
        )
        for seed, opt in enumerate(optimizers)
    ]
    kwargs: dict[str, Any] = dict(epochs=2, schedule="cosine", stop_at_zero_train_error=False)
    results = population(members, small, engine="vmap", **kwargs)
    assert len(results) == len(members)
    for member, result in zip(members, results, strict=True):
        got = trained(result)
        ref = alone(member, small, **kwargs)
        assert_matches_fit(got, ref)
        assert got.epochs == 2 and got.stopped_by == "epochs"
        assert got.seed == member.seed and got.optimizer == ref.optimizer
        assert got.model is not member.model
        assert all(p.dtype == torch.float64 for p in got.model.parameters())
        # training moved the weights: the comparison is not of untouched copies
        before = dict(member.model.named_parameters())
        assert any(
            not torch.allclose(p, before[n], atol=1e-3) for n, p in got.model.named_parameters()
        )
    large = trained(results[1])
    assert large.grad_evals == 2  # one minibatch of 240 per epoch


# 2. loop engine == fit, bit for bit


def test_loop_population_is_bit_identical_to_fit(small: Split) -> None:
    optimizers: list[str | Mapping[str, Any]] = ["sgd", "adam", "sam", "esgd", "rsgd"]
    members = [
        Member(bn_mlp(seed, dtype=torch.float32), optimizer=opt, seed=seed, batch_size=32)
        for seed, opt in enumerate(optimizers)
    ]
    kwargs: dict[str, Any] = dict(epochs=2, schedule="cosine", stop_at_zero_train_error=False)
    results = population(members, small, engine="loop", **kwargs)
    for member, result in zip(members, results, strict=True):
        got, ref = trained(result), alone(member, small, **kwargs)
        assert same_weights(got.model, ref.model)
        assert [r.train_loss for r in got.history] == [r.train_loss for r in ref.history]
        assert got.grad_evals == ref.grad_evals and got.epochs == ref.epochs == 2
        assert got.train == ref.train and got.test == ref.test


# 3. binary layers


def test_binary_population_equals_each_fit(small: Split) -> None:
    members = [
        Member(bn_mlp(seed, binary=True), optimizer=opt, seed=seed, batch_size=48)
        for seed, opt in enumerate(["sgd", "adam", "sam"])
    ]
    kwargs: dict[str, Any] = dict(epochs=2, stop_at_zero_train_error=False)
    results = population(members, small, engine="vmap", **kwargs)
    for member, result in zip(members, results, strict=True):
        assert_matches_fit(trained(result), alone(member, small, **kwargs))


# 4. members that stop early


def test_members_stopping_early_leave_the_others_unaffected(easy: Split) -> None:
    members = [
        # reaches zero training error within a few epochs and stops
        Member(bn_mlp(0), optimizer={"name": "sgd", "lr": 0.1}, seed=1, batch_size=32),
        # too slow to reach zero error: runs all its epochs
        Member(
            bn_mlp(1),
            optimizer={"name": "sgd", "lr": 1e-5, "momentum": 0.0},
            seed=2,
            batch_size=32,
        ),
        # one epoch only
        Member(bn_mlp(2), optimizer="adam", seed=3, batch_size=32, epochs=1),
        Member(bn_mlp(3), optimizer="sam", seed=4, batch_size=32),
    ]
    results = population(members, easy, epochs=6, engine="vmap")
    fast, slow, short, last = (trained(r) for r in results)
    assert fast.stopped_by == "zero-train-error" and fast.epochs < 6
    assert fast.reached_zero_train_error and fast.history[-1].eval_train_error == 0.0
    assert fast.grad_evals == fast.epochs * 8  # 240 / 32 -> 8 minibatches per epoch
    assert slow.stopped_by == "epochs" and slow.epochs == 6 and slow.train.error > 0
    assert short.stopped_by == "epochs" and short.epochs == 1 and short.grad_evals == 8
    assert last.epochs > short.epochs
    for member, result in zip(members, (fast, slow, short, last), strict=True):
        assert_matches_fit(result, alone(member, easy, epochs=6))


# 5. a diverging member


class NanFrom(torch.nn.Module):
    """Passes its input through until its countdown buffer, decremented by every
    training-mode forward, goes negative; then NaN. The countdown is a buffer, so each
    member of a vectorized population keeps its own (a Python counter would live in the
    shared template and count for all members at once)."""

    left: torch.Tensor

    def __init__(self, calls: float) -> None:
        super().__init__()
        self.register_buffer("left", torch.tensor(float(calls), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.left.sub_(1)
        # added, not selected: a NaN branch of torch.where would poison the gradient too
        nan = torch.where(self.left < 0, float("nan"), 0.0).to(x.dtype)
        return x + nan


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_a_diverging_member_is_an_error_entry_and_the_others_go_on(
    small: Split, engine: str
) -> None:
    def member(seed: int, calls: float) -> Member:
        model = torch.nn.Sequential(bn_mlp(seed), NanFrom(calls))
        return Member(model, optimizer="sgd", seed=seed, batch_size=32)

    # 8 steps per epoch: the tenth training forward is the second step of epoch 2
    members = [member(0, 1e9), member(1, 10), member(2, 1e9)]
    kwargs: dict[str, Any] = dict(epochs=3, stop_at_zero_train_error=False)
    results = population(members, small, engine=engine, **kwargs)
    error = results[1]
    assert isinstance(error, TrainingDivergedError)
    message = str(error)
    assert "\n" not in message and "epoch 2, step 11" in message
    with pytest.raises(TrainingDivergedError) as info:
        alone(members[1], small, **kwargs)
    assert str(info.value) == message
    for index in (0, 2):
        got, ref = trained(results[index]), alone(members[index], small, **kwargs)
        if engine == "loop":
            assert same_weights(got.model, ref.model)
        assert_matches_fit(got, ref)
        assert got.epochs == 3


def test_a_huge_learning_rate_diverges_one_member_only(small: Split) -> None:
    def member(seed: int, lr: float) -> Member:
        model = build(
            {"name": "mlp", "in_features": 12, "widths": [16], "num_classes": 3,
             "batchnorm": False},
            seed=seed,
        )  # fmt: skip
        return Member(model, optimizer={"name": "sgd", "lr": lr}, seed=seed, batch_size=32)

    members = [member(0, 0.05), member(1, 1e12), member(2, 0.05)]
    kwargs: dict[str, Any] = dict(epochs=2, stop_at_zero_train_error=False)
    results = population(members, small, engine="vmap", **kwargs)
    assert isinstance(results[1], TrainingDivergedError)
    assert "\n" not in str(results[1]) and "lower the learning rate" in str(results[1])
    assert "epoch 1" in str(results[1])
    for index in (0, 2):
        got = trained(results[index])
        assert got.epochs == 2
        # float32 vmap: equal to fit up to float32 rounding
        assert max_difference(got.model, alone(members[index], small, **kwargs).model) < 1e-4


# 6. members of different batch sizes


def test_members_of_different_batch_sizes_each_equal_their_fit(small: Split) -> None:
    members = [
        Member(bn_mlp(0), optimizer="sgd", seed=0, batch_size=32),
        Member(bn_mlp(1), optimizer="adam", seed=1, batch_size=64),
        Member(bn_mlp(2), optimizer="sgd", seed=2, batch_size=64),
        Member(bn_mlp(3), optimizer="sam", seed=3, batch_size=48),
        Member(bn_mlp(4), optimizer="adam", seed=4, batch_size=32),
    ]
    kwargs: dict[str, Any] = dict(epochs=2, schedule="step", stop_at_zero_train_error=False)
    results = population(members, small, engine="vmap", **kwargs)
    # 240/32 -> 8 (last of 16), 240/64 -> 4 (last of 48), 240/48 -> 5 minibatches; SAM
    # takes two gradients per step
    assert [trained(r).grad_evals for r in results] == [16, 8, 8, 20, 16]
    for member, result in zip(members, results, strict=True):
        assert_matches_fit(trained(result), alone(member, small, **kwargs))


# 7. resume


class SimulatedInterruptError(Exception):
    pass


def _resume_members() -> list[Member]:
    return [
        Member(bn_mlp(0, dtype=torch.float32), optimizer="adam", seed=0, batch_size=32),
        Member(bn_mlp(1, dtype=torch.float32), optimizer="sam", seed=1, batch_size=32),
        Member(bn_mlp(2, dtype=torch.float32), optimizer="rsgd", seed=2, batch_size=64),
        Member(bn_mlp(3, dtype=torch.float32), optimizer="sgd", seed=3, batch_size=32, epochs=2),
    ]


def test_resume_after_an_interruption_equals_the_uninterrupted_run(
    tmp_path: Path, small: Split
) -> None:
    kwargs: dict[str, Any] = dict(
        epochs=3, schedule="cosine", stop_at_zero_train_error=False, engine="vmap"
    )
    full = population(_resume_members(), small, **kwargs)
    seen: list[tuple[int, int]] = []

    def stop_after_first_epoch(member: int, record: EpochRecord) -> None:
        seen.append((member, record.epoch))
        if record.epoch == 1 and member == 2:
            raise SimulatedInterruptError

    with pytest.raises(SimulatedInterruptError):
        population(
            _resume_members(),
            small,
            checkpoint_dir=tmp_path,
            on_epoch_end=stop_after_first_epoch,
            **kwargs,
        )
    assert seen == [(0, 1), (1, 1), (2, 1)]
    assert (tmp_path / "train-state.json").exists()
    saved = json.loads((tmp_path / "train-state.json").read_text())["members"]
    assert [m["epoch"] for m in saved] == [1] * 4
    resumed_seen: list[tuple[int, int]] = []
    resumed = population(
        _resume_members(),
        small,
        checkpoint_dir=tmp_path,
        resume=True,
        on_epoch_end=lambda m, r: resumed_seen.append((m, r.epoch)),
        **kwargs,
    )
    assert sorted(resumed_seen) == sorted([(m, e) for m in range(3) for e in (2, 3)] + [(3, 2)])
    for a, b in zip(full, resumed, strict=True):
        ra, rb = trained(a), trained(b)
        assert same_weights(ra.model, rb.model)
        assert [r.train_loss for r in ra.history] == [r.train_loss for r in rb.history]
        assert ra.grad_evals == rb.grad_evals and ra.epochs == rb.epochs
    assert [trained(r).epochs for r in resumed] == [3, 3, 3, 2]
    # finished state: resuming again trains nothing and gives the same weights
    again = population(_resume_members(), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
    for a, b in zip(full, again, strict=True):
        assert same_weights(trained(a).model, trained(b).model)


def _kill_split() -> Split:
    return load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=240, test_samples=30, seed=4
    )


def _kill_members() -> list[Member]:
    return [
        Member(bn_mlp(0, dtype=torch.float32), optimizer="adam", seed=0, batch_size=32),
        Member(bn_mlp(1, dtype=torch.float32), optimizer="sgd", seed=1, batch_size=32),
    ]


_KILL_EPOCHS = 4
_KILL_KWARGS: dict[str, Any] = dict(
    epochs=_KILL_EPOCHS,
    schedule="cosine",
    stop_at_zero_train_error=False,
    engine="vmap",
    progress=False,
)
# The killed run: the same members and settings as this file's, in a process of its own
# with this process's thread count (so that its numbers are this process's).
_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    from tests.test_population import _KILL_KWARGS, _kill_members, _kill_split
    from toroid.train import fit_population
    fit_population(_kill_members(), _kill_split(), checkpoint_dir=sys.argv[1], **_KILL_KWARGS)
    """
)


def test_resume_after_kill_9_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    state = tmp_path / "train-state.json"
    process = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path), str(torch.get_num_threads())],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        # Killed as soon as the first epoch's state is saved: usually mid-run (each epoch
        # takes far longer than this poll); a run that finished first is checked too.
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=60)[0].decode()
    # SIGKILL (-9), or 0 when it finished first; anything else is a crash
    assert process.returncode in (-signal.SIGKILL, 0), output
    assert state.exists(), f"no state within 120 s: {output}"
    saved = [m["epoch"] for m in json.loads(state.read_text())["members"]]
    assert saved[0] == saved[1] and 1 <= saved[0] <= _KILL_EPOCHS
    split = _kill_split()
    resumed = fit_population(
        _kill_members(), split, checkpoint_dir=tmp_path, resume=True, **_KILL_KWARGS
    )
    full = fit_population(_kill_members(), split, **_KILL_KWARGS)
    for a, b in zip(resumed, full, strict=True):
        ra, rb = trained(a), trained(b)
        assert same_weights(ra.model, rb.model)
        assert ra.epochs == rb.epochs == _KILL_EPOCHS and ra.grad_evals == rb.grad_evals
        assert [r.train_loss for r in ra.history] == [r.train_loss for r in rb.history]
    finished = [m["epoch"] for m in json.loads(state.read_text())["members"]]
    assert finished == [_KILL_EPOCHS] * 2


# 8. determinism


def test_two_identical_population_runs_are_bit_identical(small: Split) -> None:
    def members() -> list[Member]:
        return [
            Member(bn_mlp(s, dtype=torch.float32), optimizer=o, seed=s, batch_size=48)
            for s, o in enumerate(["sgd", "adam", "esgd"])
        ]

    kwargs: dict[str, Any] = dict(epochs=2, engine="vmap", stop_at_zero_train_error=False)
    first, second = population(members(), small, **kwargs), population(members(), small, **kwargs)
    for a, b in zip(first, second, strict=True):
        assert same_weights(trained(a).model, trained(b).model)
        assert [r.train_loss for r in trained(a).history] == [
            r.train_loss for r in trained(b).history
        ]
    # and the seed matters
    reseeded = Member(bn_mlp(0, dtype=torch.float32), seed=9, batch_size=48)
    other = population([reseeded], small, **kwargs)
    assert not same_weights(trained(other[0]).model, trained(first[0]).model)


# 9. one-line argument errors


def _one_line(call: Any, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_argument_errors_are_one_line(tmp_path: Path, small: Split) -> None:
    model = bn_mlp(0, dtype=torch.float32)
    one = [Member(model, batch_size=32)]
    _one_line(lambda: population([], small, epochs=1), "at least one member")
    _one_line(
        lambda: population([one[0], model], small, epochs=1),  # type: ignore[list-item]
        r"member 1 is a .*expected a toroid.train.Member",
    )
    other = Member(bn_mlp(1, dtype=torch.float32, width=8), batch_size=32)
    _one_line(lambda: population([one[0], other], small, epochs=1), "another architecture")
    _one_line(
        lambda: population([one[0], other], small, epochs=1, engine="loop"),
        "another architecture",
    )
    _one_line(
        lambda: population([one[0], Member(bn_mlp(1, dtype=torch.float64))], small, epochs=1),
        "another architecture",
    )
    _one_line(
        lambda: population([one[0], Member(model, batch_size=1)], small, epochs=1),
        "batch_size 1",
    )
    _one_line(
        lambda: population(one, small, epochs=1, engine="bogus"),
        "engine must be one of vmap, loop, got 'bogus'",
    )
    _one_line(lambda: population(one, small, epochs=0), "epochs must be positive")
    _one_line(lambda: population([Member(model, epochs=0)], small, epochs=1), "epochs")
    population(one, small, epochs=1, checkpoint_dir=tmp_path)
    _one_line(lambda: population(one, small, epochs=1, checkpoint_dir=tmp_path), "resume=True")


# 10. a member's numbers do not depend on its population-mates


def plain_mlp(seed: int) -> torch.nn.Module:
    config = {"name": "mlp", "in_features": 12, "widths": [16], "num_classes": 3}
    return build({**config, "batchnorm": False}, seed=seed)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_a_member_does_not_depend_on_its_population_mates(small: Split, batchnorm: bool) -> None:
    def model(seed: int) -> torch.nn.Module:
        return bn_mlp(seed, dtype=torch.float32) if batchnorm else plain_mlp(seed)

    def a() -> Member:
        return Member(model(0), optimizer="adam", seed=5, batch_size=32)

    def b(epochs: int | None = None) -> Member:
        return Member(model(1), optimizer="sam", seed=6, batch_size=32, epochs=epochs)

    def c() -> Member:
        return Member(model(2), optimizer="sgd", seed=7, batch_size=32)

    kwargs: dict[str, Any] = dict(epochs=2, engine="vmap", stop_at_zero_train_error=False)
    by_itself = trained(population([a()], small, **kwargs)[0])
    # first of three; after epoch 1 the pass holds rows 0 and 2 (an indexed copy, not a view)
    with_mates = trained(population([a(), b(epochs=1), c()], small, **kwargs)[0])
    # second of two, a different seed at member 0 (which seeds the global generator)
    second = trained(population([b(), a()], small, **kwargs)[1])
    for result in (with_mates, second):
        assert [r.grad_evals for r in result.history] == [r.grad_evals for r in by_itself.history]
        if batchnorm:
            # Not bit for bit with BatchNorm: the gradient of its bias (a sum over the
            # minibatch of a vmapped tensor) rounds differently in a pass of one network
            # than in a pass of several (observed: ~4e-9 after one step, ~6e-8 after 3
            # epochs, float32; among passes of 2, 3, 8 networks it is bitwise equal).
            assert max_difference(result.model, by_itself.model) < 1e-5
            assert [r.train_loss for r in result.history] == pytest.approx(
                [r.train_loss for r in by_itself.history], rel=1e-5
            )
        else:
            assert same_weights(result.model, by_itself.model)
            assert [r.train_loss for r in result.history] == [
                r.train_loss for r in by_itself.history
            ]


# 11. a model that draws random numbers in its forward (dropout), loop engine


class Dropped(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.drop(x))


def test_dropout_draws_from_each_networks_own_generator(small: Split) -> None:
    def member(seed: int) -> Member:
        return Member(Dropped(plain_mlp(seed)), optimizer="sgd", seed=seed, batch_size=32)

    kwargs: dict[str, Any] = dict(epochs=2, engine="loop", stop_at_zero_train_error=False)
    together = population([member(0), member(1), member(2)], small, **kwargs)
    reordered = population([member(2), member(1)], small, **kwargs)
    for k, result in enumerate(together):
        assert same_weights(trained(result).model, alone(member(k), small, epochs=2).model)
    assert same_weights(trained(reordered[0]).model, trained(together[2]).model)
    with pytest.raises(InvalidArgumentError, match="vectorized population"):
        population([member(0), member(1)], small, epochs=1, engine="vmap")


def test_running_out_of_memory_is_not_called_a_model_vmap_cannot_batch(
    small: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toroid.train import gradients

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(gradients, "vmap", lambda *a, **k: out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        population([Member(plain_mlp(0), batch_size=32)], small, epochs=1, engine="vmap")
