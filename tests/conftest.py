"""Shared fixtures: small files in the formats toroid reads, written by the tests; a record
of when `evaluate_sets` took its input-layer fast path."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from toroid.evaluate.input_layer import InputLayerReuse


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: two zero bytes, the type code (0x08 = uint8), ndim, big-endian dims."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_mnist_dir(
    directory: Path, *, n_train: int = 60, n_test: int = 20, gz: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Four MNIST-style IDX files with balanced labels; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    for stem, array in (
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ):
        data = idx_bytes(array)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return xtr, ytr, xte, yte


def write_cifar_file(path: Path, n: int, *, label_bytes: int, num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % num_classes).astype(np.uint8)
    rows = []
    for label in labels:
        head = bytes([label // 5 % 20, label]) if label_bytes == 2 else bytes([label])
        rows.append(head + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes())
    path.write_bytes(b"".join(rows))


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    write_mnist_dir(tmp_path / "mnist")
    return tmp_path / "mnist"


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cifar10" / "cifar-10-batches-bin"
    directory.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_file(
            directory / f"data_batch_{i}.bin", 20, label_bytes=1, num_classes=10, seed=i
        )
    write_cifar_file(directory / "test_batch.bin", 20, label_bytes=1, num_classes=10, seed=9)
    return tmp_path / "cifar10"


@pytest.fixture
def input_layer_reuses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The minibatch sizes on which `InputLayerReuse` computed the input layer, in order:
    empty unless the fast path ran."""
    reused: list[int] = []
    original = InputLayerReuse.outputs

    def counted(self: InputLayerReuse, x: torch.Tensor) -> torch.Tensor:
        reused.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(InputLayerReuse, "outputs", counted)
    return reused


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """A local Ray instance of 2 CPUs shared by a module's tests (skipped without Ray)."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    try:
        yield
    finally:
        ray.shutdown()
