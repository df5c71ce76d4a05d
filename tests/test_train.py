"""The trainer: zero training error, determinism, resume equivalence, divergence, protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from toroid.data import Split, load
from toroid.errors import InvalidArgumentError, ResumeMismatchError, TrainingDivergedError
from toroid.models import build, mlp
from toroid.optim import make_optimizer, optimizer_names, resolve_optimizer
from toroid.storage import read_bundle
from toroid.train import EpochRecord, fit, lr_factor
from toroid.train.closure import BatchClosure


@pytest.fixture(scope="module")
def small() -> Split:
    return load(
        "synthetic", input_shape=(12,), num_classes=3, train_samples=240, test_samples=120, seed=0
    )


def small_mlp(split: Split, seed: int = 0) -> torch.nn.Module:
    return build({"name": "mlp", "in_features": 12, "widths": [32], "num_classes": 3}, seed=seed)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reaches_zero_training_error_and_stops(small: Split) -> None:
    result = fit(
        small_mlp(small),
        small,
        optimizer={"name": "sgd", "lr": 0.1},
        epochs=60,
        batch_size=32,
        progress=False,
    )
    assert result.reached_zero_train_error and result.train.error == 0.0
    assert result.epochs < 60 and result.history[-1].eval_train_error == 0.0
    assert result.test is not None and result.test.n == 120
    assert result.grad_evals == result.epochs * 8  # 240 / 32 -> 8 steps per epoch


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_registered_optimizer_trains(small: Split, optimizer: str) -> None:
    result = fit(
        small_mlp(small),
        small,
        optimizer=optimizer,
        epochs=40,
        batch_size=32,
        schedule="cosine",
        progress=False,
    )
    assert result.reached_zero_train_error, (optimizer, result.train)


def test_input_model_is_untouched(small: Split) -> None:
    model = small_mlp(small)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, small, epochs=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.model is not model and not same_weights(result.model, model)


def test_same_seed_bit_identical_other_seed_differs(small: Split) -> None:
    runs = [
        fit(
            small_mlp(small),
            small,
            epochs=3,
            seed=s,
            progress=False,
            stop_at_zero_train_error=False,
        )
        for s in (5, 5, 6)
    ]
    assert same_weights(runs[0].model, runs[1].model)
    assert not same_weights(runs[0].model, runs[2].model)


class SimulatedInterruptError(Exception):
    pass


@pytest.mark.parametrize(("schedule", "augment"), [("cosine", False), ("step", True)])
def test_resume_equals_uninterrupted(tmp_path: Path, schedule: str, augment: bool) -> None:
    split = load(
        "synthetic", input_shape=(1, 8, 8), num_classes=3, train_samples=96, test_samples=30, seed=1
    )
    model = mlp(64, [16], 3)
    kwargs = dict(
        optimizer="adam",
        epochs=6,
        batch_size=16,
        schedule=schedule,
        seed=3,
        augment=augment,
        stop_at_zero_train_error=False,
        progress=False,
    )
    full = fit(model, split, **kwargs)  # type: ignore[arg-type]

    def stop_after_three(record: EpochRecord) -> None:
        if record.epoch == 3:
            raise SimulatedInterruptError

    with pytest.raises(SimulatedInterruptError):
        fit(model, split, checkpoint_dir=tmp_path, on_epoch_end=stop_after_three, **kwargs)  # type: ignore[arg-type]
    resumed = fit(model, split, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert same_weights(full.model, resumed.model)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in full.history]
    assert resumed.grad_evals == full.grad_evals
    # finished state: resuming again trains nothing and returns the same model
    again = fit(model, split, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert same_weights(full.model, again.model) and again.epochs == 6


def test_resume_guards(tmp_path: Path, small: Split) -> None:
    fit(small_mlp(small), small, epochs=1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(InvalidArgumentError, match="resume=True"):
        fit(small_mlp(small), small, epochs=1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ResumeMismatchError, match="other settings"):
        fit(
            small_mlp(small),
            small,
            epochs=1,
            batch_size=7,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )


class NanAfter(torch.nn.Module):
    """Passes its input through, then returns NaN from the `calls`-th training forward on."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls -= 1
        return x * float("nan") if self.calls < 0 else x


def test_divergence_raises_and_keeps_last_good_state(tmp_path: Path, small: Split) -> None:
    model = torch.nn.Sequential(small_mlp(small), NanAfter(10))  # 8 steps per epoch
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 11") as info:
        fit(
            model,
            small,
            epochs=3,
            batch_size=32,
            checkpoint_dir=tmp_path,
            stop_at_zero_train_error=False,
            progress=False,
        )
    assert str(tmp_path) in str(info.value)
    tensors, meta = read_bundle(tmp_path, "train-state")
    assert meta["members"][0]["epoch"] == 1
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model/"))


def test_huge_learning_rate_diverges(small: Split) -> None:
    model = build(
        {"name": "mlp", "in_features": 12, "widths": [32], "num_classes": 3, "batchnorm": False},
        seed=0,
    )
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        fit(model, small, optimizer={"name": "sgd", "lr": 1e12}, epochs=5, progress=False)


def test_schedules() -> None:
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert [lr_factor("step", s, 100) for s in (49, 50, 74, 75)] == pytest.approx(
        [1.0, 0.1, 0.1, 0.01]
    )
    with pytest.raises(InvalidArgumentError, match="schedule"):
        lr_factor("linear", 0, 10)  # type: ignore[arg-type]


def test_optimizer_registry() -> None:
    assert {"sgd", "adam", "adamw"} <= set(optimizer_names())
    config = resolve_optimizer("sgd", lr=0.3, momentum=None)
    assert config["lr"] == 0.3 and config["momentum"] == 0.9
    assert resolve_optimizer({"name": "sgd", "nesterov": True})["nesterov"] is True
    with pytest.raises(InvalidArgumentError, match="no hyperparameter betas"):
        resolve_optimizer("sgd", betas=(0.9, 0.99))
    with pytest.raises(InvalidArgumentError, match="unknown optimizer 'lion'"):
        resolve_optimizer("lion")
    with pytest.raises(InvalidArgumentError, match="lr must be a positive"):
        resolve_optimizer("adam", lr=-1.0)
    opt = make_optimizer(resolve_optimizer("adam"), torch.nn.Linear(2, 2).parameters())
    assert isinstance(opt, torch.optim.Adam)


def test_closure_protocol_counts_and_bn_freeze() -> None:
    model = mlp(4, [6], 2)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    closure = BatchClosure(model, iter([(x, y)]), lambda: iter([(x, y)]))
    closure.next_batch()
    bn = model[2]
    before = bn.running_mean.clone()
    closure(update_bn_stats=False)
    assert torch.equal(bn.running_mean, before)
    grad_once = model[1].weight.grad.clone()
    closure()
    assert not torch.equal(bn.running_mean, before)
    assert torch.equal(model[1].weight.grad, grad_once)  # gradients are zeroed, not summed
    assert closure.grad_evals == 2 and closure.seen == 8  # statistics once per minibatch
    closure.next_batch()  # past the end: a new pass begins
    assert closure.grad_evals == 2


def test_bad_arguments(small: Split) -> None:
    model = small_mlp(small)
    with pytest.raises(InvalidArgumentError, match="epochs"):
        fit(model, small, epochs=0)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        fit(model, small, epochs=1, batch_size=0)
    with pytest.raises(InvalidArgumentError, match="augment=True needs image"):
        fit(model, small, epochs=1, augment=True)


def test_accepts_plain_tuple_of_training_data(small: Split) -> None:
    result = fit(small_mlp(small), (small.train.x, small.train.y), epochs=1, progress=False)
    assert result.test is None and result.train.n == 240


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_last_minibatch_of_one_is_merged_with_batchnorm(small: Split, optimizer: str) -> None:
    # 129 = 128 + 1: the last minibatch would hold one example, which BatchNorm refuses.
    train = small.train.subset(torch.arange(129))
    result = fit(
        small_mlp(small), train, optimizer=optimizer, epochs=2, batch_size=128, progress=False
    )
    assert result.grad_evals == 2  # one merged minibatch of 129 per epoch
    assert result.train.n == 129 and torch.isfinite(torch.tensor(result.history[-1].train_loss))


def test_iterate_batches_merges_only_a_single_last_example() -> None:
    from toroid.data.batches import batch_count, iterate_batches

    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    for n, size, sizes in ((9, 4, [4, 5]), (10, 4, [4, 4, 2]), (8, 4, [4, 4]), (1, 4, [1])):
        got = [
            len(b)
            for _, b in iterate_batches(
                (x[:n], y[:n]), batch_size=size, merge_single_last=True, shuffle=False
            )
        ]
        assert got == sizes and batch_count(n, size, merge_single_last=True) == len(sizes)
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat(
        [
            b
            for _, b in iterate_batches(
                (x[:9], y[:9]), batch_size=4, generator=gen, merge_single_last=True
            )
        ]
    )
    assert sorted(seen.tolist()) == list(range(9))


def test_one_training_example_with_batchnorm_is_refused(small: Split) -> None:
    with pytest.raises(InvalidArgumentError, match="1 example"):
        fit(small_mlp(small), small.train.subset(torch.arange(1)), epochs=1, progress=False)


def test_fit_casts_inputs_to_the_model_dtype(small: Split) -> None:
    model = small_mlp(small).double()
    result = fit(model, small, epochs=2, batch_size=32, progress=False)
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    assert result.test is not None and result.train.n == 240


def test_divergence_names_no_directory_that_does_not_exist(tmp_path: Path, small: Split) -> None:
    model = torch.nn.Sequential(small_mlp(small), NanAfter(3))  # diverges in the first epoch
    state_dir = tmp_path / "never-created"
    with pytest.raises(TrainingDivergedError, match="epoch 1, step 4") as info:
        fit(model, small, epochs=2, batch_size=32, checkpoint_dir=state_dir, progress=False)
    assert "last good state" not in str(info.value) and str(state_dir) not in str(info.value)
    assert not state_dir.exists()


def _interrupted(directory: Path, split: Split, *, epochs: int, after: int = 1) -> dict[str, Any]:
    """Train until the end of epoch `after`, then stop, leaving the resumable state in
    `directory`; returns the arguments of `fit` that resume it."""
    kwargs: dict[str, Any] = dict(
        epochs=epochs, batch_size=64, stop_at_zero_train_error=False, progress=False
    )

    def stop(record: EpochRecord) -> None:
        if record.epoch == after:
            raise SimulatedInterruptError

    with pytest.raises(SimulatedInterruptError):
        fit(small_mlp(split), split, checkpoint_dir=directory, on_epoch_end=stop, **kwargs)
    return kwargs


_WRONG_VALUES: list[tuple[str, object]] = [
    ("epoch", "abc"),
    ("epoch", -1),
    ("epoch", 1.5),
    ("epoch", None),
    ("step", "1"),
    ("step", [1]),
    ("grad_evals", True),
    ("grad_evals", {"a": 1}),
    ("elapsed", "soon"),
    ("elapsed", None),
    ("finished", "no"),
    ("finished", 0),
    ("history", "none"),
    ("history", [1]),
    ("history", []),
    ("history", [{"epoch": 1}]),
    ("optimizer", "abc"),
    ("optimizer", 5),
    ("optimizer", None),
    ("optimizer", {"__items__": 5}),
    ("optimizer", {"__tensor__": "missing"}),
    ("optimizer", {"__items__": [["state", []], ["param_groups", "x"]]}),
    ("stopped_by", "boredom"),
    ("diverged", 5),
    ("diverged", "it did"),
]


@pytest.mark.parametrize(("field", "value"), _WRONG_VALUES)
def test_resume_from_hand_edited_state_is_one_line(
    tmp_path: Path, small: Split, field: str, value: object
) -> None:
    import json

    from toroid.errors import CheckpointError

    kwargs = _interrupted(tmp_path, small, epochs=3)
    path = tmp_path / "train-state.json"
    meta = json.loads(path.read_text())
    member = meta["members"][0]
    assert field in member
    member[field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        fit(small_mlp(small), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"'members[0].{field}" in message or f"members[0].{field}" in message


@pytest.mark.parametrize(
    ("field", "value"), [("tensor_file", 5), ("tensor_file", None), ("tensor_sha256", [1])]
)
def test_resume_with_edited_tensor_reference(
    tmp_path: Path, small: Split, field: str, value: object
) -> None:
    import json

    from toroid.errors import CheckpointError

    kwargs = _interrupted(tmp_path, small, epochs=2)
    path = tmp_path / "train-state.json"
    meta = json.loads(path.read_text())
    meta[field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        fit(small_mlp(small), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_resume_with_edited_optimizer_hyperparameter(tmp_path: Path, small: Split) -> None:
    import json

    from toroid.errors import CheckpointError

    kwargs = _interrupted(tmp_path, small, epochs=3)
    path = tmp_path / "train-state.json"
    saved = path.read_text()
    for bad_lr in ('"abc"', "null", "[1]"):
        text = json.dumps(json.loads(saved), indent=1)
        meta = json.loads(text)
        groups = dict(meta["members"][0]["optimizer"]["__items__"])["param_groups"]
        group_items = groups[0]["__items__"]
        for item in group_items:
            if item[0] == "lr":
                item[1] = json.loads(bad_lr)
        path.write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=r"members\[0\]\.optimizer") as info:
            fit(small_mlp(small), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
        assert "\n" not in str(info.value) and "lr" in str(info.value)


def test_resume_from_hand_edited_history_entry_names_the_field(
    tmp_path: Path, small: Split
) -> None:
    import json

    from toroid.errors import CheckpointError

    kwargs = _interrupted(tmp_path, small, epochs=3, after=2)
    path = tmp_path / "train-state.json"
    saved = json.loads(path.read_text())
    for key in saved["members"][0]["history"][1]:
        meta = json.loads(json.dumps(saved))
        meta["members"][0]["history"][1][key] = "wrong"
        path.write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=f"history\\[1\\].{key}") as info:
            fit(small_mlp(small), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
        assert "\n" not in str(info.value)
    # A fingerprint or settings edit reads as other settings, in one line.
    meta = json.loads(json.dumps(saved))
    meta["fingerprint"] = ["x"]
    meta["settings"] = {"note": "line\nbreak"}
    path.write_text(json.dumps(meta))
    with pytest.raises(ResumeMismatchError) as mismatch:
        fit(small_mlp(small), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert "\n" not in str(mismatch.value)


@pytest.mark.parametrize("value", [5, {"__tensor__": "rng/cpu"}, "x"])
def test_resume_with_an_edited_optimizer_state_tensor_is_one_line(
    tmp_path: Path, small: Split, value: object
) -> None:
    import json

    from toroid.errors import CheckpointError

    kwargs = _interrupted(tmp_path, small, epochs=3)
    path = tmp_path / "train-state.json"
    meta = json.loads(path.read_text())
    state = dict(meta["members"][0]["optimizer"]["__items__"])["state"]
    first = state["__items__"][0][1]["__items__"][0]  # [key, value] of parameter 0's state
    first[1] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"members\[0\]\.optimizer") as info:
        fit(small_mlp(small), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_batch_size_one_with_batchnorm_is_refused(small: Split) -> None:
    with pytest.raises(InvalidArgumentError, match="batch_size 1"):
        fit(small_mlp(small), small, epochs=1, batch_size=1, progress=False)


def test_without_batchnorm_a_last_minibatch_of_one_is_kept(small: Split) -> None:
    from toroid.models import mlp

    train = small.train.subset(torch.arange(129))
    model = mlp(12, [8], 3, batchnorm=False, seed=0)
    result = fit(model, train, epochs=2, batch_size=128, stop_at_zero_train_error=False,
                 progress=False)  # fmt: skip
    assert result.grad_evals == 4  # 128 + 1 per epoch, as before the merge existed


def test_a_state_from_an_older_toroid_is_refused_in_one_line(tmp_path: Path, small: Split) -> None:
    import json

    kwargs = _interrupted(tmp_path, small, epochs=3)
    path = tmp_path / "train-state.json"
    meta = json.loads(path.read_text())
    del meta["format"]
    path.write_text(json.dumps(meta))
    with pytest.raises(ResumeMismatchError, match="older toroid") as info:
        fit(small_mlp(small), small, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert "\n" not in str(info.value)
