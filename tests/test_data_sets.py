"""Subsets, normalization, batches, augmentation, synthetic data and the offline real sets."""

from __future__ import annotations

import pytest
import torch

from toroid.data import (
    TensorData,
    as_tensor_data,
    balanced_indices,
    dataset_status,
    iterate_batches,
    load,
    random_crop_flip,
)
from toroid.data.subsets import channel_statistics
from toroid.errors import DataError, InvalidArgumentError


def test_balanced_indices_exact_counts_and_determinism() -> None:
    labels = torch.arange(1000) % 7
    a = balanced_indices(labels, 100, num_classes=7, generator=torch.Generator().manual_seed(3))
    b = balanced_indices(labels, 100, num_classes=7, generator=torch.Generator().manual_seed(3))
    c = balanced_indices(labels, 100, num_classes=7, generator=torch.Generator().manual_seed(4))
    counts = labels[a].bincount(minlength=7)
    assert a.numel() == 100 and a.unique().numel() == 100
    assert counts.max() - counts.min() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_balanced_indices_not_enough_in_a_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 5)
    with pytest.raises(DataError, match="class 1 has 5 examples"):
        balanced_indices(labels, 20, num_classes=2, generator=torch.Generator())


def test_load_subsets_balanced_and_seeded() -> None:
    a = load("synthetic", train_size=40, test_size=20, seed=1, num_classes=4)
    b = load("synthetic", train_size=40, test_size=20, seed=1, num_classes=4)
    assert a.train.y.bincount().tolist() == [10] * 4 and a.test.y.bincount().tolist() == [5] * 4
    assert torch.equal(a.train.x, b.train.x)


def test_normalization_uses_training_statistics() -> None:
    split = load("synthetic", input_shape=(3, 5, 5), seed=0)
    mean, std = channel_statistics(split.train.x)
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-5, rtol=0)
    raw = load("synthetic", input_shape=(3, 5, 5), seed=0, normalize_inputs=False)
    m = torch.tensor(split.meta["normalization"]["mean"]).view(1, 3, 1, 1)
    s = torch.tensor(split.meta["normalization"]["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(split.test.x, (raw.test.x - m) / s)


def test_channel_statistics_match_float64_baseline() -> None:
    x = torch.rand(500, 3, 9, 9, generator=torch.Generator().manual_seed(0)) * 7 + 100
    mean, std = channel_statistics(x)
    per_channel = x.double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(mean.double(), per_channel.mean(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(std.double(), per_channel.std(1), rtol=1e-5, atol=0)


def test_iterate_batches_is_a_seeded_permutation() -> None:
    data = TensorData(torch.arange(103).float()[:, None], torch.arange(103))
    seen = [
        y
        for _, y in iterate_batches(data, batch_size=10, generator=torch.Generator().manual_seed(0))
    ]
    again = [
        y
        for _, y in iterate_batches(data, batch_size=10, generator=torch.Generator().manual_seed(0))
    ]
    assert [len(y) for y in seen] == [10] * 10 + [3]
    assert sorted(torch.cat(seen).tolist()) == list(range(103))
    assert all(torch.equal(a, b) for a, b in zip(seen, again, strict=True))
    assert torch.cat(seen).tolist() != list(range(103))
    dropped = list(iterate_batches(data, batch_size=10, shuffle=False, drop_last=True))
    assert len(dropped) == 10 and torch.equal(dropped[0][1], torch.arange(10))
    with pytest.raises(InvalidArgumentError, match="Generator"):
        next(iterate_batches(data, batch_size=10))


def test_random_crop_flip_matches_per_example_loop() -> None:
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fast = random_crop_flip(x, generator=torch.Generator().manual_seed(5), padding=2)
    # Baseline: the same random draws, applied one example at a time.
    gen = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 5, (16,), generator=gen)
    dx = torch.randint(0, 5, (16,), generator=gen)
    mirror = torch.rand(16, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        expected = crop.flip(-1) if mirror[i] else crop
        assert torch.equal(fast[i], expected)
    assert not torch.equal(fast, x)


def test_augmented_training_is_accepted_for_images_only() -> None:
    with pytest.raises(InvalidArgumentError, match="images"):
        random_crop_flip(torch.zeros(4, 10), generator=torch.Generator())


def test_tuple_and_tensordata_are_interchangeable() -> None:
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    assert torch.equal(as_tensor_data((x, y)).y, y)
    with pytest.raises(InvalidArgumentError, match="x has 4 examples but y has 3"):
        TensorData(x, y[:3])
    with pytest.raises(InvalidArgumentError, match="TensorData or an"):
        as_tensor_data([x, y])  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(5,), (2, 7), (1, 6, 6)])
@pytest.mark.parametrize("kind", ["mixture", "teacher"])
def test_synthetic_any_shape(shape: tuple[int, ...], kind: str) -> None:
    split = load(
        "synthetic",
        kind=kind,
        input_shape=shape,
        num_classes=3,
        train_samples=60,
        test_samples=30,
        seed=2,
    )
    assert split.train.x.shape == (60, *shape) and split.test.x.shape == (30, *shape)
    assert split.train.y.max() < 3 and split.input_shape == shape


def _require(name: str) -> None:
    if not dataset_status(name).available:
        pytest.skip(f"{name} not available on this machine ({dataset_status(name).where})")


def test_fashion_mnist_full_sizes() -> None:
    _require("fashion-mnist")
    split = load("fashion-mnist")
    assert (len(split.train), len(split.test)) == (60000, 10000)
    assert split.train.x.shape[1:] == (1, 28, 28)
    assert split.train.y.bincount().tolist() == [6000] * 10


@pytest.mark.parametrize(
    ("name", "sizes", "shape"),
    [
        ("mnist-5k", (4000, 1000), (1, 28, 28)),
        ("mnist1d", (4000, 1000), (1, 40)),
        ("digits", (1442, 355), (1, 8, 8)),
    ],
)
def test_offline_package_sets(name: str, sizes: tuple[int, int], shape: tuple[int, ...]) -> None:
    _require(name)
    split = load(name)
    assert (len(split.train), len(split.test)) == sizes
    assert split.input_shape == shape and split.num_classes == 10
    sub = load(name, train_size=100, test_size=50, seed=3)
    assert sub.train.y.bincount().tolist() == [10] * 10


def test_mnist_5k_split_is_fixed_and_balanced() -> None:
    _require("mnist-5k")
    a, b = load("mnist-5k", seed=0), load("mnist-5k", seed=7)
    assert torch.equal(a.test.y, b.test.y) and a.test.y.bincount().tolist() == [100] * 10


def test_mnist1d_leaves_global_random_state_alone() -> None:
    _require("mnist1d")
    import numpy as np

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    load("mnist1d")
    assert (np.random.get_state()[1] == before).all()
