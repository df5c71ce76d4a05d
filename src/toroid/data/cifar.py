"""Reader for the official binary CIFAR-10/100 files (no pickle): fixed-size records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toroid.errors import DataError

_PIXELS = 3 * 32 * 32
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = ("test_batch.bin",)
CIFAR100_TRAIN = ("train.bin",)
CIFAR100_TEST = ("test.bin",)


def read_cifar_records(
    path: Path, *, label_bytes: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) of one binary file.

    CIFAR-10 records are <label><3072 pixels>; CIFAR-100 records are
    <coarse label><fine label><3072 pixels>, and the fine label is used.
    """
    if not path.is_file():
        raise DataError(f"missing CIFAR binary file {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path} has {raw.size} bytes, not a positive multiple of the {record}-byte record "
            f"({label_bytes} label byte(s) + {_PIXELS} pixels); truncated or not the binary version"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].copy()
    if int(labels.max()) >= num_classes:
        raise DataError(
            f"{path} has label {int(labels.max())}; expected labels in 0..{num_classes - 1}"
        )
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def read_cifar_dir(
    directory: Path, files: tuple[str, ...], *, label_bytes: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    parts = [
        read_cifar_records(directory / f, label_bytes=label_bytes, num_classes=num_classes)
        for f in files
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
