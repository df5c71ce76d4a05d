"""Readers of the file formats, on fixture files the tests write, and their error cases."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import idx_bytes, write_cifar_file, write_mnist_dir
from toroid.data import DATASETS, dataset_status, load
from toroid.data.cifar import read_cifar_records
from toroid.data.idx import read_idx
from toroid.errors import DataError, DatasetNotAvailableError, InvalidArgumentError


def test_idx_roundtrip_plain_and_gzip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), array)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x01\x02" + b[2:], "not an IDX file"),
        (lambda b: b[:-5], "truncated or corrupt"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b"", "not an IDX file"),
    ],
)
def test_idx_malformed(tmp_path: Path, mutate: object, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(mutate(idx_bytes(np.zeros((3, 2, 2), np.uint8))))  # type: ignore[operator]
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_load_mnist_from_root_matches_files(tmp_path: Path) -> None:
    xtr, ytr, _, yte = write_mnist_dir(tmp_path / "m", gz=True)
    split = load("mnist", root=tmp_path / "m", normalize_inputs=False)
    assert split.train.x.shape == (60, 1, 28, 28) and split.test.x.shape == (20, 1, 28, 28)
    torch.testing.assert_close(split.train.x[:, 0], torch.from_numpy(xtr).float() / 255)
    assert split.train.y.tolist() == ytr.tolist() and split.test.y.tolist() == yte.tolist()
    assert split.meta["source"] == str(tmp_path / "m")


def test_lookup_order_root_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist_dir(tmp_path / "env" / "mnist", seed=1)
    write_mnist_dir(tmp_path / "root", seed=2)
    monkeypatch.setenv("TOROID_DATA", str(tmp_path / "env"))
    assert load("mnist").meta["source"] == str(tmp_path / "env" / "mnist")
    assert load("mnist", root=tmp_path / "root").meta["source"] == str(tmp_path / "root")
    # root may also be a parent holding <name>/
    assert load("mnist", root=tmp_path / "env").meta["source"] == str(tmp_path / "env" / "mnist")


def test_missing_files_say_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOROID_DATA", raising=False)
    with pytest.raises(DatasetNotAvailableError, match="train-images-idx3-ubyte") as info:
        load("mnist", root=tmp_path)
    assert str(tmp_path) in str(info.value)
    assert not dataset_status("cifar10", root=tmp_path).available


def test_label_out_of_range_and_count_mismatch(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(60, 12, np.uint8)))
    with pytest.raises(DataError, match="label 12"):
        load("mnist", root=tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(59, np.uint8)))
    with pytest.raises(DataError, match="59 labels but"):
        load("mnist", root=tmp_path / "m")


def test_cifar10_binary(cifar10_dir: Path) -> None:
    split = load("cifar10", root=cifar10_dir, normalize_inputs=False)
    assert split.train.x.shape == (100, 3, 32, 32) and split.test.x.shape == (20, 3, 32, 32)
    assert split.train.y.bincount().tolist() == [10] * 10
    # the first record's pixels, channel-major as in the official layout
    raw = np.fromfile(cifar10_dir / "cifar-10-batches-bin" / "data_batch_1.bin", np.uint8)
    expected = torch.from_numpy(raw[1:3073].reshape(3, 32, 32).copy()).float() / 255
    torch.testing.assert_close(split.train.x[0], expected)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-100-binary"
    directory.mkdir()
    write_cifar_file(directory / "train.bin", 200, label_bytes=2, num_classes=100, seed=0)
    write_cifar_file(directory / "test.bin", 100, label_bytes=2, num_classes=100, seed=1)
    split = load("cifar100", root=tmp_path)
    assert split.num_classes == 100
    assert split.train.y.tolist() == [i % 100 for i in range(200)]


def test_cifar_malformed(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1.bin"
    write_cifar_file(path, 3, label_bytes=1, num_classes=10, seed=0)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="3073-byte record") as info:
        read_cifar_records(path, label_bytes=1, num_classes=10)
    assert str(path) in str(info.value)
    write_cifar_file(path, 3, label_bytes=1, num_classes=10, seed=0)
    blob = bytearray(path.read_bytes())
    blob[0] = 200
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="label 200"):
        read_cifar_records(path, label_bytes=1, num_classes=10)


def test_unknown_dataset_and_bad_options() -> None:
    with pytest.raises(InvalidArgumentError, match="valid: fashion-mnist"):
        load("imagenet")
    with pytest.raises(InvalidArgumentError, match="takes no options"):
        load("digits", colour=True)
    with pytest.raises(InvalidArgumentError, match="train_size"):
        load("synthetic", train_size=0)


def test_every_name_has_a_status() -> None:
    for name in DATASETS:
        assert dataset_status(name).name == name


def test_idx_overflowing_dimensions_refused_before_allocating(tmp_path: Path) -> None:
    # 2^31 x 2^31 x 4 bytes wraps to 0 in 64-bit arithmetic: the header alone "matches".
    path = tmp_path / "huge-idx"
    dims = (2**31, 2**31, 4)
    path.write_bytes(bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in dims))
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_train_and_test_images_of_different_sizes(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "m")
    small = np.zeros((60, 8, 8), np.uint8)
    (tmp_path / "m" / "train-images-idx3-ubyte").write_bytes(idx_bytes(small))
    with pytest.raises(DataError, match="8x8 but the test images are 28x28") as info:
        load("mnist", root=tmp_path / "m")
    assert str(tmp_path / "m") in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "digits", "synthetic"])
def test_nonexistent_root_refused(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nonexistent"
    with pytest.raises(DataError, match="does not exist") as info:
        load(name, root=missing)
    assert str(missing) in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        load(name, root=tmp_path / "file")


@pytest.mark.parametrize("root", [5, b"/tmp", ""])
def test_root_of_wrong_type_refused(root: object) -> None:
    with pytest.raises(InvalidArgumentError, match="data root"):
        load("synthetic", root=root)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", ["abc", 1.5, True])
def test_seed_of_wrong_type_refused(seed: object) -> None:
    with pytest.raises(InvalidArgumentError, match="seed must be an integer"):
        load("synthetic", seed=seed)  # type: ignore[arg-type]
