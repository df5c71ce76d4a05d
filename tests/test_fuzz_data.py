"""Fuzzing hostile inputs: generated IDX and CIFAR files read through `toroid.data.load`
with a user root, and NaN/inf weights and data through every measurement. Each must end in
one `ToroidError` whose one-line message names the file or the value; no other exception
type. Deterministic (derandomized hypothesis, no example database) and fast (tiny arrays)."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import idx_bytes, write_cifar_file, write_mnist_dir
from tests.test_evaluate_finite import BINARY_MEASURES, MEASURES, _net
from toroid.data import Split, TensorData, load
from toroid.data.idx import read_idx
from toroid.errors import DataError, NonFiniteError, ToroidError

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _assert_one_line(exc: BaseException, *names: str) -> None:
    assert isinstance(exc, ToroidError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message, message
    assert any(name in message for name in names), (names, message)


def _load_or_error(name: str, root: Path, *names: str) -> None:
    try:
        split = load(name, root=root, normalize_inputs=False)
    except Exception as exc:
        _assert_one_line(exc, *names)
        return
    # A file that happens to be valid must load into consistent tensors.
    assert split.train.x.shape[1:] == split.test.x.shape[1:]


def _idx_header(code: int, dims: list[int]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


# --- IDX ---------------------------------------------------------------------------------

hostile_idx = st.one_of(
    # arbitrary bytes (bad magic, short headers)
    st.binary(max_size=64),
    # a well-formed header with hostile dimensions (overflowing, huge, zero) and a payload
    # of some length
    st.builds(
        lambda code, dims, payload: _idx_header(code, dims) + payload,
        st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]),
        st.lists(
            st.one_of(
                st.sampled_from([0, 1, 2, 3, 28, 2**31, 2**32 - 1]),
                st.integers(0, 2**32 - 1),
            ),
            max_size=5,
        ),
        st.binary(max_size=128),
    ),
)


@FUZZ
@given(data=hostile_idx, stem=st.sampled_from(MNIST_STEMS), gz=st.booleans())
def test_hostile_idx_file_through_load(data: bytes, stem: str, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mnist"
        write_mnist_dir(root, n_train=10, n_test=10)
        path = root / stem
        if gz:
            path.unlink()
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
        _load_or_error("mnist", root, str(root))


@FUZZ
@given(data=st.binary(max_size=96))
def test_corrupt_gzip_idx_file(data: bytes) -> None:
    # Bytes that claim to be gzip (magic 1f8b) but whose deflate stream is anything.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x-idx.gz"
        path.write_bytes(b"\x1f\x8b\x08\x00" + data)
        try:
            read_idx(path)
        except Exception as exc:
            _assert_one_line(exc, str(path))


@pytest.mark.parametrize(
    ("dims", "code"),
    [([2**31, 2**31, 4], 0x08), ([2**32 - 1] * 4, 0x0E), ([0, 2**31], 0x0C), ([7], 0x08)],
)
def test_overflowing_or_short_idx_dims(tmp_path: Path, dims: list[int], code: int) -> None:
    path = tmp_path / "dims-idx"
    path.write_bytes(_idx_header(code, dims) + b"\x00" * 3)
    with pytest.raises(DataError) as info:
        read_idx(path)
    _assert_one_line(info.value, str(path))


@FUZZ
@given(
    side=st.integers(1, 40),
    n=st.integers(0, 12),
    test_side=st.integers(1, 40),
    labels=st.lists(st.integers(0, 255), min_size=0, max_size=12),
)
def test_well_formed_idx_of_wrong_contents(
    side: int, n: int, test_side: int, labels: list[int]
) -> None:
    # Valid IDX files whose contents disagree: image sizes, counts, label ranges, empty.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_mnist_dir(root, n_train=10, n_test=10)
        (root / MNIST_STEMS[0]).write_bytes(idx_bytes(np.zeros((n, side, side), np.uint8)))
        (root / MNIST_STEMS[1]).write_bytes(idx_bytes(np.array(labels, np.uint8)))
        (root / MNIST_STEMS[2]).write_bytes(
            idx_bytes(np.zeros((10, test_side, test_side), np.uint8))
        )
        _load_or_error("mnist", root, str(root))


# --- CIFAR -------------------------------------------------------------------------------

_RECORD10 = 1 + 3072


@FUZZ
@given(
    which=st.integers(0, 5),
    size=st.one_of(
        st.sampled_from([0, 1, _RECORD10 - 1, _RECORD10 + 1, 2 * _RECORD10 - 7, 3 * 3074]),
        st.integers(0, 3 * _RECORD10),
    ),
    label=st.integers(0, 255),
)
def test_hostile_cifar10_file_through_load(which: int, size: int, label: int) -> None:
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, name in enumerate(files):
            write_cifar_file(root / name, 2, label_bytes=1, num_classes=10, seed=i)
        rng = np.random.default_rng(size)
        blob = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        for start in range(0, len(blob), _RECORD10):
            blob[start] = label  # the label byte of every (possibly partial) record
        (root / files[which]).write_bytes(bytes(blob))
        _load_or_error("cifar10", root, str(root / files[which]))


@FUZZ
@given(size=st.integers(0, 3 * 3074), fine=st.integers(0, 255))
def test_hostile_cifar100_file_through_load(size: int, fine: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar_file(root / "train.bin", 2, label_bytes=2, num_classes=100, seed=0)
        write_cifar_file(root / "test.bin", 2, label_bytes=2, num_classes=100, seed=1)
        blob = bytearray(np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes())
        for start in range(1, len(blob), 3074):
            blob[start] = fine
        (root / "test.bin").write_bytes(bytes(blob))
        _load_or_error("cifar100", root, str(root / "test.bin"))


# --- NaN / inf weights and data through every measurement --------------------------------

non_finite = st.sampled_from([float("nan"), float("inf"), -float("inf")])


@pytest.fixture(scope="module")
def split() -> Split:
    return load(
        "synthetic", input_shape=(6,), num_classes=3, train_samples=40, test_samples=20, seed=0
    )


@FUZZ
@given(
    name=st.sampled_from(sorted(MEASURES)),
    value=non_finite,
    tensor=st.integers(0, 100),
    entry=st.integers(0, 10_000),
)
def test_non_finite_weight_anywhere(
    split: Split, name: str, value: float, tensor: int, entry: int
) -> None:
    model = _net(0)
    floating = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    key, target = floating[tensor % len(floating)]
    with torch.no_grad():
        target.view(-1)[entry % target.numel()] = value
    with pytest.raises(NonFiniteError) as info:
        MEASURES[name](model, split)
    _assert_one_line(info.value, repr(key))


@FUZZ
@given(
    name=st.sampled_from(sorted(set(MEASURES) - {"distance", "distances", "slerp"})),
    value=non_finite,
    entry=st.integers(0, 10_000),
)
def test_non_finite_input_anywhere(split: Split, name: str, value: float, entry: int) -> None:
    x = split.train.x.clone()
    x.view(-1)[entry % x.numel()] = value
    bad = Split(TensorData(x, split.train.y), split.test, split.meta)
    with pytest.raises(NonFiniteError) as info:
        MEASURES[name](_net(0), bad)
    _assert_one_line(info.value, "training data", "evaluation data", "BatchNorm data", "data")


@FUZZ
@given(name=st.sampled_from(sorted(BINARY_MEASURES)), value=non_finite, entry=st.integers(0, 99))
def test_non_finite_binary_weights(split: Split, name: str, value: float, entry: int) -> None:
    model = _net(0, binary=True)
    with torch.no_grad():
        model[1].weight.view(-1)[entry % model[1].weight.numel()] = value
    with pytest.raises(NonFiniteError) as info:
        BINARY_MEASURES[name](model, split)
    _assert_one_line(info.value, "'1.weight'")


@pytest.mark.parametrize("shape", [(0, 28, 28), (10, 0, 28), (10, 28, 0)])
def test_empty_images_refused(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    write_mnist_dir(tmp_path, n_train=10, n_test=10)
    (tmp_path / MNIST_STEMS[0]).write_bytes(idx_bytes(np.zeros(shape, np.uint8)))
    with pytest.raises(DataError, match="expected at least one image") as info:
        load("mnist", root=tmp_path)
    _assert_one_line(info.value, str(tmp_path / MNIST_STEMS[0]))
